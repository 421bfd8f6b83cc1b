"""Model creation by spec, checkpoint loading errors, input-size checks."""

from __future__ import annotations

import pytest
import torch

from updp.core.errors import InputError
from updp.models import check_input_size, create_model, load_checkpoint, parse_spec


def test_parse_spec():
    assert parse_spec("resnet18") == ("timm", "resnet18")
    assert parse_spec("torchvision:resnet18") == ("torchvision", "resnet18")
    with pytest.raises(InputError, match="unknown model source"):
        parse_spec("hub:resnet18")


def test_create_timm_and_torchvision():
    m, spec = create_model("timm:mobilenetv2_050", num_classes=7)
    assert spec.spec == "timm:mobilenetv2_050" and spec.num_classes == 7 and spec.input_size == (3, 224, 224)
    assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 7) and not m.training
    m, spec = create_model("torchvision:mobilenet_v2", num_classes=3, width_mult=0.5)
    assert spec.source == "torchvision" and spec.kwargs == {"num_classes": 3, "width_mult": 0.5}
    assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    _, spec = create_model("torchvision:inception_v3", init_weights=False, aux_logits=False)
    assert spec.input_size == (3, 299, 299)


@pytest.mark.parametrize("spec, hint", [("timm:resnet181", "timm:resnet18"),
                                         ("convnext_atoo", "timm:convnext_atto"),
                                         ("torchvision:resnet_18", "torchvision:resnet18")])
def test_unknown_model_suggests(spec, hint):
    with pytest.raises(InputError, match="unknown") as e:
        create_model(spec)
    assert hint in str(e.value) and "\n" not in str(e.value)


def test_bad_kwarg_is_input_error():
    with pytest.raises(InputError, match="cannot build"):
        create_model("torchvision:resnet18", bogus=1)


def test_vit_input_size_passed_at_creation():
    m, spec = create_model("vit_tiny_patch16_224", input_size=32, patch_size=8, depth=1)
    assert spec.kwargs["img_size"] == 32 and spec.input_size == (3, 32, 32)
    assert check_input_size(m, spec, 32) == (1, 1000)
    with pytest.raises(InputError, match="cannot take input size 3x64x64.*give the input size at creation"):
        check_input_size(m, spec, 64)
    # a model without an image-size argument is built normally
    _, spec = create_model("resnet18", input_size=(3, 40, 40))
    assert "img_size" not in spec.kwargs


def test_check_input_size_too_small():
    m, spec = create_model("torchvision:alexnet")
    with pytest.raises(InputError, match="cannot take input size 3x8x8"):
        check_input_size(m, spec, 8)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    m, _ = create_model("mobilenetv2_035", num_classes=10)
    torch.save(m.state_dict(), d / "raw.pt")
    torch.save({"model": m.state_dict(), "epoch": 3}, d / "wrapped.pt")
    (d / "garbage.pt").write_bytes(b"not a checkpoint at all")
    torch.save([1, 2, 3], d / "list.pt")
    return d, m.state_dict()


@pytest.mark.parametrize("name", ["raw.pt", "wrapped.pt"])
def test_load_checkpoint_weights_only(saved, name):
    d, sd = saved
    m, _ = create_model("mobilenetv2_035", num_classes=10)
    load_checkpoint(m, d / name)
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
        load_checkpoint(m, d / "raw.pt")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, match", [("garbage.pt", "cannot read checkpoint"),
                                         ("missing.pt", "checkpoint not found"),
                                         ("list.pt", "not a state dict")])
def test_load_checkpoint_bad_file(saved, name, match):
    d, _ = saved
    m, _ = create_model("mobilenetv2_035", num_classes=10)
    with pytest.raises(InputError, match=match) as e:
        load_checkpoint(m, d / name)
    assert "\n" not in str(e.value)
