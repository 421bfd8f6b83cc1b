"""`updp train`: a baseline from random weights, a fine-tuned or imported user checkpoint, and the
checks on a checkpoint that does not fit."""

from __future__ import annotations

import json

import pytest
import torch

from updp.cli import main
from updp.core.errors import InputError
from updp.models import CHECKPOINT_FORMAT, create_model, write_checkpoint
from updp.workflows.config import TrainConfig
from updp.workflows.train import train

SMALL = {"dims": [16, 32, 48, 64], "depths": [1, 1, 2, 1]}
TINY = {"data": "digits", "batch_size": 32, "max_steps_per_epoch": 2, "progress": False}


def test_epochs_zero_takes_a_plain_state_dict_as_the_baseline(tmp_path, capsys):
    """Importing your weights writes them in updp's format (with the model's spec), unchanged."""
    m, _ = create_model("convnext_atto", num_classes=10, **SMALL)
    torch.save({"state_dict": m.state_dict()}, tmp_path / "mine.pt")
    assert main(["train", "convnext_atto", "--model-kwarg", "dims=[16,32,48,64]", "--model-kwarg",
                 "depths=[1,1,2,1]", "--checkpoint", str(tmp_path / "mine.pt"), "--epochs", "0", "--data", "digits",
                 "--out", str(tmp_path / "base.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["history"] == [] and "as given" in report["source"]
    ck = torch.load(tmp_path / "base.pt", weights_only=True)
    assert ck["format"] == CHECKPOINT_FORMAT and ck["plan"] is None
    assert ck["model_spec"]["model"] == "timm:convnext_atto" and ck["model_spec"]["input_size"] == [3, 32, 32]
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in ck["model"].items())
    assert ck["metrics"]["val_acc"] == report["val_acc"]


def test_a_updp_checkpoint_of_another_input_size_or_a_pruned_one_is_refused(tmp_path):
    res = train(TrainConfig(model="convnext_atto", model_kwargs=SMALL, epochs=1, out=str(tmp_path / "b.pt"), **TINY))
    assert res.model_spec["input_size"] == [3, 32, 32] and len(res.history) == 1
    with pytest.raises(InputError, match="trained at \\[32, 32\\].*trains at \\[64, 64\\]"):
        train(TrainConfig(model="convnext_atto", model_kwargs=SMALL, input_size=64, epochs=1,
                          checkpoint=str(tmp_path / "b.pt"), out=str(tmp_path / "c.pt"), **TINY))
    with pytest.raises(InputError, match="holds a timm:convnext_atto, not timm:resnet18"):
        train(TrainConfig(model="resnet18", epochs=1, checkpoint=str(tmp_path / "b.pt"), out=str(tmp_path / "d.pt"),
                          **TINY))
    ck = torch.load(tmp_path / "b.pt", weights_only=True)
    write_checkpoint(tmp_path / "p.pt", ck["model"], model_spec=ck["model_spec"], plan={"blocks": [1]})
    with pytest.raises(InputError, match="already pruned"):
        train(TrainConfig(model="convnext_atto", model_kwargs=SMALL, epochs=1, checkpoint=str(tmp_path / "p.pt"),
                          out=str(tmp_path / "e.pt"), **TINY))


def test_epochs_zero_needs_a_checkpoint():
    with pytest.raises(InputError, match="--epochs 0 takes a --checkpoint"):
        TrainConfig(model="convnext_atto", data="digits", out="x.pt", epochs=0)


def test_export_takes_the_model_from_the_checkpoint(tmp_path, capsys):
    train(TrainConfig(model="convnext_atto", model_kwargs=SMALL, epochs=1, out=str(tmp_path / "b.pt"), **TINY))
    assert main(["export", "--checkpoint", str(tmp_path / "b.pt"), "--out", str(tmp_path / "b.onnx"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"] == "timm:convnext_atto" and res["input_shape"] == [1, 3, 32, 32]
    assert main(["export", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "give MODEL, or a --checkpoint" in capsys.readouterr().err


def test_the_classes_trained_on_travel_with_the_checkpoint_and_the_onnx_file(tmp_path, capsys):
    """A baseline records its data's class names; the export writes them into the ONNX file, where
    `updp eval` reads them back; the same data passes, a folder of other classes (as many) does not."""
    from PIL import Image

    from updp.exporter.torch_export import get_metadata
    from updp.ort import load_onnx

    def folder(name: str, classes: list[str]) -> str:
        for split in ("train", "val"):
            for i, cls in enumerate(classes):
                (tmp_path / name / split / cls).mkdir(parents=True)
                for k in range(6):
                    Image.new("RGB", (8, 8), (40 * i, 20 * k, 0)).save(tmp_path / name / split / cls / f"{k}.png")
        return f"imagefolder:{tmp_path / name}"

    pets, zoo = folder("pets", ["cat", "dog"]), folder("zoo", ["dog", "zebra"])
    res = train(TrainConfig(model="convnext_atto", model_kwargs=SMALL, epochs=1, out=str(tmp_path / "b.pt"),
                            **{**TINY, "data": pets, "batch_size": 4}))
    assert res.model_spec["class_names"] == ["cat", "dog"]
    assert torch.load(tmp_path / "b.pt", weights_only=True)["model_spec"]["class_names"] == ["cat", "dog"]
    assert main(["export", "--checkpoint", str(tmp_path / "b.pt"), "--out", str(tmp_path / "b.onnx")]) == 0
    assert json.loads(get_metadata(load_onnx(str(tmp_path / "b.onnx")))["updp.class_names"]) == ["cat", "dog"]
    for model in ("b.pt", "b.onnx"):
        assert main(["eval", str(tmp_path / model), "--data", pets]) == 0
        capsys.readouterr()
        assert main(["eval", str(tmp_path / model), "--data", zoo]) == 2
        err = capsys.readouterr().err
        assert "only the model's: cat; only the data's: zebra" in err, err
    digits = train(TrainConfig(model="convnext_atto", model_kwargs=SMALL, epochs=1, out=str(tmp_path / "d.pt"), **TINY))
    assert digits.model_spec["class_names"] == [str(d) for d in range(10)]
