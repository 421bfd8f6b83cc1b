"""Per-node profiling: ORT traces parsed, a tiny exported torch model profiled by block."""

from __future__ import annotations

import tempfile

import pytest

from updp.core.errors import InputError
from updp.exporter.scopes import OTHER, aggregate_by_block, block_scopes
from updp.latency import LatencySetup, parse_trace, profile_nodes


def test_parse_trace_drops_warmup_and_averages():
    def run(ts, dur):
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}

    def node(name, ts, dur, op="Conv"):
        return {"cat": "Node", "name": name + "_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": op, "node_index": "3", "provider": "CPUExecutionProvider"}}

    events = [run(0, 100), node("/a/Conv", 10, 1000),            # warm-up: dropped
              run(200, 100), node("/a/Conv", 210, 10), node("/b/Relu", 250, 4, "Relu"),
              run(400, 100), node("/a/Conv", 410, 30), node("/b/Relu", 450, 6, "Relu"),
              {"cat": "Session", "name": "SequentialExecutor::Execute", "ts": 401, "dur": 90}]
    times, n = parse_trace(events, skip_runs=1)
    assert n == 2
    assert [(t.name, t.op_type, t.mean_us, t.order, t.node_index) for t in times] == [
        ("/a/Conv", "Conv", 20.0, 0, 3), ("/b/Relu", "Relu", 5.0, 1, 3)]
    with pytest.raises(InputError):
        parse_trace(events, skip_runs=3)


@pytest.mark.parametrize("level", ["disable", "all"])
def test_profile_tiny_model_by_block(tiny_scoped, level, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    setup = LatencySetup(threads=1, warmup=2, opt_level=level)
    tiny, blocks = tiny_scoped
    times = profile_nodes(tiny, setup, runs=5)
    assert list(tmp_path.iterdir()) == []  # trace file and its directory are gone
    assert times and all(t.mean_us >= 0 for t in times)
    assert [t.order for t in times] == list(range(len(times)))
    prof = aggregate_by_block(times, block_scopes(blocks))
    assert [b.label for b in prof.blocks] == [f"{i} {p}" for i, p in enumerate(blocks)] + [OTHER]
    assert sum(b.share for b in prof.blocks) == pytest.approx(1, abs=1e-9)
    assert prof.total_us == pytest.approx(sum(t.mean_us for t in times))
    for b in prof.blocks:
        assert b.total_us > 0 and b.n_nodes >= 1, b
    if level == "disable":  # exporter names untouched: exactly Conv, Relu, Conv, Add per block
        for b in prof.blocks[:-1]:
            ops = sorted(t.op_type for t in times if b.fragment in t.name)
            assert ops == ["Add", "Conv", "Conv", "Relu"], b
        assert {t.op_type for t in times if not any(b.fragment in t.name for b in prof.blocks[:-1])} >= {
            "Conv", "Gemm"}
    for b in prof.blocks[:-1]:  # both convs of each block, at any level, land in their block
        assert sum(1 for t in times if b.fragment in t.name and "Conv" in t.op_type) >= 1

