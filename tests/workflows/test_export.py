"""Exports from user checkpoints: plain state dicts, pruned checkpoints carrying their plan, and
the one-line errors for checkpoints that do not fit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from updp.blocks import PrunePlan, apply_pruning, randomize_norm_stats
from updp.cli import main
from updp.core.errors import InputError
from updp.models import create_model
from updp.ort import make_session
from updp.workflows.config import ExportConfig
from updp.workflows.export import export

SIZE = (32, 32)


@pytest.fixture(scope="module")
def atto_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    model, _ = create_model("timm:convnext_atto", num_classes=10)
    randomize_norm_stats(model, seed=3)
    path = tmp_path_factory.mktemp("ckpt") / "base.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_plain_checkpoint_weights_reach_the_onnx_file(tmp_path, atto_checkpoint):
    path, model = atto_checkpoint
    out = tmp_path / "m.onnx"
    res = export(ExportConfig(model="timm:convnext_atto", checkpoint=str(path), num_classes=10,
                                     input_size=SIZE, out=str(out)))
    assert res.pruned_blocks == [] and "checkpoint" in res.weights
    x = np.random.default_rng(0).standard_normal((1, 3, *SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    got = make_session(str(out), opt_level="disable").run(None, {"input": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_pruned_checkpoint_carries_its_plan(tmp_path):
    torch.manual_seed(2)
    model, _ = create_model("timm:convnext_atto", num_classes=10)
    apply_pruning(model, [1, 4], lam=1.0)
    randomize_norm_stats(model, seed=5)
    plan = PrunePlan(model="timm:convnext_atto", input_size=(3, *SIZE), blocks=[1, 4], num_classes=10,
                     selection_rule="test")
    ckpt = tmp_path / "pruned.pt"
    torch.save({"model": model.state_dict(), "plan": plan.to_dict()}, ckpt)
    res = export(ExportConfig(model="timm:convnext_atto", checkpoint=str(ckpt), num_classes=10,
                                     input_size=SIZE, out=str(tmp_path / "p.onnx")))
    assert res.pruned_blocks == [1, 4] and res.selection_rule == "test"
    assert res.rel_diff <= 1e-4 and res.nodes_after < res.nodes_before
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "p.onnx")).metadata_props}
    assert meta["updp.pruned_blocks"] == "[1, 4]"


def test_checkpoint_of_another_architecture(tmp_path):
    other, _ = create_model("timm:resnet18", num_classes=10)
    ckpt = tmp_path / "r18.pt"
    torch.save(other.state_dict(), ckpt)
    out = tmp_path / "m.onnx"
    code = main(["export", "timm:convnext_atto", "--num-classes", "10", "--input-size", "32",
                 "--checkpoint", str(ckpt), "--out", str(out)])
    assert code == 2 and not out.exists()


def test_checkpoint_with_another_class_count(atto_checkpoint, tmp_path):
    path, _ = atto_checkpoint
    with pytest.raises(InputError, match="10 classes"):
        export(ExportConfig(model="timm:convnext_atto", checkpoint=str(path), num_classes=7,
                                   input_size=SIZE, out=str(tmp_path / "unused.onnx")))


def test_garbage_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a PyTorch checkpoint"):
        export(ExportConfig(model="timm:convnext_atto", checkpoint=str(bad), input_size=SIZE,
                            out=str(tmp_path / "unused.onnx")))
