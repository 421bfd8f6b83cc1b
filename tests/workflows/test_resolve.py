"""The one checkpoint -> model resolution of every workflow, and data at the model's input size."""

from __future__ import annotations

import pytest
import timm
import torch

from updp.blocks import PrunePlan
from updp.core.errors import InputError
from updp.models import write_checkpoint
from updp.workflows.resolve import data_for, load_baseline, load_model

SIZE = 32


def _atto():
    torch.manual_seed(0)
    return timm.create_model("convnext_atto", num_classes=4, depths=(1, 1, 2, 1)).eval()


def test_load_baseline_rebuilds_the_model_and_refuses_a_pruned_one(tmp_path):
    model = _atto()
    spec = {"model": "timm:convnext_atto", "kwargs": {"depths": [1, 1, 2, 1]}, "num_classes": 4,
            "input_size": [3, SIZE, SIZE]}
    torch.save({"model": model.state_dict(), "model_spec": spec, "plan": None}, tmp_path / "b.pt")
    loaded = load_baseline(str(tmp_path / "b.pt"))
    assert loaded.spec["input_size"] == [3, SIZE, SIZE] and loaded.spec["model"] == "timm:convnext_atto"
    x = torch.randn(1, 3, SIZE, SIZE)
    assert torch.equal(loaded.module(x), model(x))
    # a plain state dict records no training size or class count, even with the model's name
    torch.save({"model": model.state_dict()}, tmp_path / "nospec.pt")
    for name in (None, "convnext_atto"):
        with pytest.raises(InputError, match="is a plain state dict .*import it first: `updp train MODEL"):
            load_baseline(str(tmp_path / "nospec.pt"), model=name)
    torch.save({"model": model.state_dict(), "model_spec": spec, "plan": {"blocks": [1]}}, tmp_path / "p.pt")
    with pytest.raises(InputError, match="pruned checkpoint"):
        load_baseline(str(tmp_path / "p.pt"))


def test_load_model_applies_the_plan_and_checks_names(tmp_path):
    model = _atto()
    spec = {"model": "timm:convnext_atto", "kwargs": {"depths": [1, 1, 2, 1]}, "num_classes": 4,
            "input_size": [3, SIZE, SIZE]}
    plan = PrunePlan(model="timm:convnext_atto", input_size=(3, SIZE, SIZE), blocks=[1])
    pruned = _atto()
    plan.apply(pruned)
    write_checkpoint(tmp_path / "p.pt", pruned.state_dict(), model_spec=spec, plan=plan.to_dict())
    loaded = load_model(str(tmp_path / "p.pt"))
    assert loaded.plan.blocks == [1] and type(loaded.module.stages[1].blocks[0]).__name__.startswith("Pruned")
    x = torch.randn(1, 3, SIZE, SIZE)
    assert torch.equal(loaded.module(x), pruned.eval()(x))
    other = PrunePlan(model="timm:convnext_atto", input_size=(3, SIZE, SIZE), blocks=[1], block_names=["head"])
    write_checkpoint(tmp_path / "bad.pt", pruned.state_dict(), model_spec=spec, plan=other.to_dict())
    with pytest.raises(InputError, match="the plan names 'head'"):
        load_model(str(tmp_path / "bad.pt"))
    del model


def test_data_for_serves_the_model_input_size_and_checks_classes():
    spec = {"model": "timm:convnext_atto", "kwargs": {}, "num_classes": 10, "input_size": [3, 24, 24]}
    bundle = data_for(spec, "digits", split_seed=0)
    assert tuple(bundle.input_size) == (24, 24)
    with pytest.raises(InputError, match="the model has 4 classes, the data"):
        data_for({**spec, "num_classes": 4}, "digits", split_seed=0)
