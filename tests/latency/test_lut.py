"""Latency table: predict/speedup arithmetic, a real measurement on a tiny model, JSON round trip."""

from __future__ import annotations

import json

import pytest
import timm

from updp.core.errors import InputError
from updp.latency import LatencySetup
from updp.latency.lut import BlockLatency, LatencyLUT, build_lut


def _toy() -> LatencyLUT:
    blocks = [BlockLatency(0, "a", 100.0, 40.0), BlockLatency(2, "b", 200.0, 50.0), BlockLatency(5, "c", 50.0, 45.0)]
    # W_base = 1.0 ms at K = 350 µs, slope 2e-3 ms/µs -> remainder 0.3 ms
    return LatencyLUT(model="toy", input_shape=[1, 3, 8, 8], blocks=blocks, base_ms=1.0, all_pruned_ms=0.57,
                      ms_per_kernel_us=2e-3, remainder_ms=0.3)


def test_predict_and_speedup_are_additive():
    lut = _toy()
    assert lut.predict([]) == pytest.approx(1.0)
    assert lut.predict([0, 2, 5]) == pytest.approx(0.57)  # exact at the all-pruned end
    assert lut.predict([2]) == pytest.approx(1.0 - 0.3)
    assert lut.speedup([2]) == pytest.approx(1.0 / 0.7)
    assert lut.predict([0, 2]) == pytest.approx(1.0 - lut.saving_ms(0) - lut.saving_ms(2))
    assert lut.blocks_needed(1.3) == (1, 3)  # block 2 alone: 1.43x; blocks 0 and 5 only 1.15x
    with pytest.raises(InputError, match="no candidate block"):
        lut.predict([1])
    with pytest.raises(InputError, match="out of reach"):
        lut.blocks_needed(3.0)


def test_json_round_trip(tmp_path):
    lut = _toy()
    path = tmp_path / "lut.json"
    lut.save(path)
    again = LatencyLUT.load(path)
    assert again == lut and again.predict([0]) == lut.predict([0])
    d = json.loads(path.read_text())
    d["schema_version"] = 7
    path.write_text(json.dumps(d))
    with pytest.raises(InputError, match="schema_version 7"):
        LatencyLUT.load(path)
    with pytest.raises(InputError, match="cannot read"):
        LatencyLUT.load(tmp_path / "missing.json")


def test_build_and_check_on_a_tiny_model():
    model = timm.create_model("convnext_atto", depths=(1, 1, 2, 1), num_classes=10).eval()
    setup = LatencySetup(threads=2, warmup=3, repeats=20)
    lut = build_lut(model, (1, 3, 32, 32), setup=setup, profile_runs=3, profile_rounds=3,
                    model_label="timm:convnext_atto")
    assert lut.indices == [0, 1, 2, 3, 4]
    assert all(b.base_us > b.pruned_us > 0 for b in lut.blocks)  # a merged ConvNeXt block is cheaper
    assert lut.predict([]) == pytest.approx(lut.base_ms)
    assert lut.predict(lut.indices) == pytest.approx(lut.all_pruned_ms)
    assert lut.speedup(lut.indices) > lut.speedup([0]) > 1.0
    assert lut.setup["threads"] == 2 and lut.setup["opt_level"] == "all"
    assert LatencyLUT.from_dict(json.loads(lut.to_json())) == lut
    chk = lut.check(model, [3, 4], repeats=20)
    assert chk.blocks == [3, 4] and chk.measured_speedup > 0 and chk.predicted_speedup > 1.0
    assert set(chk.to_dict()) >= {"predicted_speedup", "measured_speedup", "rel_error", "setup"}
    with pytest.raises(InputError, match="not prunable blocks"):
        build_lut(model, (1, 3, 32, 32), candidates=[9], setup=setup)
