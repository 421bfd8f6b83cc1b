"""The one checkpoint schema: the writer, and the reader of every layout users bring."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from updp.core.errors import InputError
from updp.models import CHECKPOINT_FORMAT, create_model, load_weights, read_checkpoint, write_checkpoint


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    m, _ = create_model("mobilenetv2_035", num_classes=10)
    torch.save(m.state_dict(), d / "raw.pt")
    torch.save({"model": m.state_dict(), "epoch": 3}, d / "wrapped.pt")
    torch.save({"state_dict": m.state_dict()}, d / "state_dict.pt")
    torch.save({"model_state_dict": m.state_dict(), "optimizer": {}}, d / "model_state_dict.pt")
    torch.save({f"module.{k}": v for k, v in m.state_dict().items()}, d / "ddp.pt")
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(d / "weights.safetensors"))
    (d / "bad.safetensors").write_bytes(b"\x00" * 16)
    (d / "garbage.pt").write_bytes(b"not a checkpoint at all")
    torch.save([1, 2, 3], d / "list.pt")
    return d, m.state_dict()


@pytest.mark.parametrize("name", ["raw.pt", "wrapped.pt", "state_dict.pt", "model_state_dict.pt", "ddp.pt",
                                  "weights.safetensors"])
def test_load_checkpoint_weights_only(saved, name):
    d, sd = saved
    m, _ = create_model("mobilenetv2_035", num_classes=10)
    load_weights(m, d / name)
    assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())


@pytest.mark.parametrize("spec, kwargs, match", [
    ("mobilenetv2_035", {}, "has 10 classes, the model has 1000.*num_classes=10"),
    ("mobilenetv2_050", {"num_classes": 10}, "shape mismatch"),
    ("resnet18", {"num_classes": 10}, "missing key"),
])
def test_load_checkpoint_wrong_architecture(saved, spec, kwargs, match):
    d, _ = saved
    m, _ = create_model(spec, **kwargs)
    with pytest.raises(InputError, match=match) as e:
        load_weights(m, d / "raw.pt")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, match", [("garbage.pt", "not a PyTorch checkpoint"),
                                         ("missing.pt", "checkpoint not found"),
                                         ("list.pt", "not a state dict"),
                                         ("bad.safetensors", "cannot read checkpoint")])
def test_load_checkpoint_bad_file(saved, name, match):
    d, _ = saved
    m, _ = create_model("mobilenetv2_035", num_classes=10)
    with pytest.raises(InputError, match=match) as e:
        load_weights(m, d / name)
    assert "\n" not in str(e.value)


def test_the_writer_records_format_spec_and_plan_and_the_reader_returns_them(tmp_path):
    m, _ = create_model("mobilenetv2_035", num_classes=10)
    spec = {"model": "timm:mobilenetv2_035", "kwargs": {}, "num_classes": 10, "input_size": [3, 32, 32]}
    write_checkpoint(tmp_path / "c.pt", m.state_dict(), model_spec=spec, plan=None, epoch=2)
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and raw["epoch"] == 2 and raw["plan"] is None
    ck = read_checkpoint(tmp_path / "c.pt")
    # the record comes back checked, in its canonical form (source and bare name added)
    assert ck.written_by_updp and ck.model_spec == {**spec, "source": "timm", "name": "mobilenetv2_035"}
    assert ck.plan is None and set(ck.state_dict) == set(m.state_dict())


def test_a_plain_state_dict_reads_without_spec_or_plan(saved):
    d, _ = saved
    ck = read_checkpoint(d / "raw.pt")
    assert ck.model_spec is None and ck.plan is None and not ck.written_by_updp


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        read_checkpoint(tmp_path)
