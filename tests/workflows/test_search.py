"""`updp search` as a workflow: baseline checkpoint to plan, on a tiny ConvNeXt."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from updp.blocks import PrunePlan
from updp.core.errors import InputError
from updp.workflows.config import SearchConfig
from updp.workflows.search import run_search

SIZE = 32


def test_run_search_end_to_end(tmp_path):
    torch.manual_seed(0)
    kwargs = {"depths": [1, 1, 2, 1]}
    model = timm.create_model("convnext_atto", num_classes=10, **kwargs).eval()
    spec = {"model": "timm:convnext_atto", "kwargs": kwargs, "num_classes": 10, "input_size": [3, SIZE, SIZE]}
    torch.save({"model": model.state_dict(), "model_spec": spec, "plan": None}, tmp_path / "base.pt")
    res = run_search(SearchConfig(checkpoint=str(tmp_path / "base.pt"), data="digits", target_blocks=2,
                                  out=str(tmp_path / "plan.json"), epochs=1, max_steps_per_epoch=2, batch_size=32,
                                  calib_batches=1, random_picks=2, bench_repeats=10, profile_rounds=2, progress=False,
                                  device="cpu"))
    assert res.method == "exhaustive" and res.n_evals == 10 and len(res.blocks) == 2
    assert len(res.random_picks) == 2 and res.measured_speedup > 0 and res.predicted_speedup > 1
    plan = PrunePlan.load(str(tmp_path / "plan.json"))
    assert plan.blocks == res.blocks and plan.block_names == res.block_names
    assert plan.selection_rule == "exhaustive: holdout acc, target 2 blocks"
    assert plan.scores["winner"] == res.holdout_acc and len(plan.scores["random_picks"]) == 2
    assert plan.latency["measured_speedup"] == res.measured_speedup and plan.latency["lut_setup"]["threads"] == 2
    assert plan.supernet["epochs"] == 1
    assert (tmp_path / "plan.lut.json").is_file() and (tmp_path / "plan.supernet.pt").is_file()
    assert "pruned blocks" in res.format_summary() and json.dumps(res.to_dict(), default=str)
    plan.check_against(model)
    # the trained supernet is reused without training, and a wrong target is one line
    again = run_search(SearchConfig(checkpoint=str(tmp_path / "base.pt"), data="digits", target_blocks=2,
                                    out=str(tmp_path / "plan2.json"), epochs=1, reuse_supernet=True,
                                    supernet=str(tmp_path / "plan.supernet.pt"), lut=str(tmp_path / "plan.lut.json"),
                                    calib_batches=1, random_picks=0, measure=False, batch_size=32, progress=False,
                                    device="cpu"))
    assert again.blocks == res.blocks and again.holdout_acc == res.holdout_acc
    with pytest.raises(InputError, match="not both"):
        SearchConfig(checkpoint="b.pt", data="digits", out="p.json", target_blocks=2, target_speedup=1.2)

