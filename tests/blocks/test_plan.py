"""Prune plans: typed, versioned JSON, and the one check that a plan fits a model."""

from __future__ import annotations

import json

import pytest
import timm

from updp.blocks import PrunePlan, find_blocks
from updp.core.errors import InputError

SIZE = 32


def test_plan_with_search_records_round_trips_and_v1_loads(tmp_path):
    plan = PrunePlan(model="timm:convnext_atto", input_size=(3, SIZE, SIZE), blocks=[1, 3],
                     block_names=["stages.0.blocks.1", "stages.1.blocks.1"],
                     selection_rule="evolutionary: holdout acc, target 2 blocks",
                     search={"method": "evolutionary", "n_evals": 40},
                     scores={"winner": 0.9, "baseline": 0.92, "random_picks": [{"blocks": [0, 2], "acc": 0.8}]},
                     latency={"predicted_speedup": 1.2, "measured_speedup": 1.18},
                     supernet={"epochs": 3, "kd_alpha": 0.5})
    path = tmp_path / "plan.json"
    plan.save(str(path))
    assert PrunePlan.load(str(path)) == plan
    # a version-1 plan written before these fields existed still loads, and writes the same JSON
    old = {"model": "timm:convnext_atto", "input_size": [3, 64, 64], "blocks": [1, 3], "block_names": [],
           "lam": 1.0, "selection_rule": "manual", "model_kwargs": {}, "num_classes": None,
           "block_options": {}, "notes": "", "schema_version": 1}
    loaded = PrunePlan.from_dict(old)
    assert loaded.scores is None and loaded.search is None
    assert json.loads(loaded.to_json()) == old
    with pytest.raises(InputError, match="scores must be a JSON object"):
        PrunePlan.from_dict({**old, "scores": [1]})


def test_plan_naming_missing_blocks_is_one_line_input_error():
    model = timm.create_model("convnext_atto", depths=(1, 1, 2, 1))
    ok = PrunePlan(model="timm:convnext_atto", input_size=(3, SIZE, SIZE), blocks=[1],
                   block_names=[find_blocks(model)[1].name])
    assert [b.index for b in ok.check_against(model)] == [1]
    for bad, match in [
        (PrunePlan(model="timm:convnext_atto", input_size=(3, SIZE, SIZE), blocks=[7]), "block 7 does not exist"),
        (PrunePlan(model="timm:convnext_atto", input_size=(3, SIZE, SIZE), blocks=[1],
                   block_names=["stages.2.blocks.5"]), "plan names 'stages.2.blocks.5'"),
    ]:
        with pytest.raises(InputError, match=match) as e:
            bad.check_against(model)
        assert "\n" not in str(e.value)

