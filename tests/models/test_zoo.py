"""Model creation by spec, input-size checks, spec records."""

from __future__ import annotations

import pytest
import torch

from updp.core.errors import InputError
from updp.models import (
    check_input_size,
    create_for_data,
    create_from_record,
    create_model,
    normalize_record,
    parse_spec,
    same_model,
)


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


def test_spec_record_rebuilds_the_same_model():
    m, rec = create_for_data("vit_tiny_patch16_224", num_classes=10, input_chw=(3, 32, 32),
                             model_kwargs={"patch_size": 8, "depth": 1}, seed=3)
    assert rec["model"] == "timm:vit_tiny_patch16_224" and rec["input_size"] == [3, 32, 32]
    assert rec["num_classes"] == 10 and "num_classes" not in rec["kwargs"]
    again = create_from_record(rec)
    assert set(again.state_dict()) == set(m.state_dict())
    assert again(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_create_for_data_seeds_the_initial_weights_without_touching_the_global_rng():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a, _ = create_for_data("resnet18", num_classes=3, input_chw=(3, 32, 32), seed=1)
    after = torch.rand(1)
    b, _ = create_for_data("resnet18", num_classes=3, input_chw=(3, 32, 32), seed=1)
    c, _ = create_for_data("resnet18", num_classes=3, input_chw=(3, 32, 32), seed=2)
    assert torch.equal(before, after)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


def test_normalize_record_accepts_both_forms_and_refuses_incomplete_ones():
    full = normalize_record({"source": "timm", "name": "resnet18", "input_size": [3, 8, 8],
                             "kwargs": {"num_classes": 3}, "num_classes": 3}, "x.pt")
    assert full["model"] == "timm:resnet18" and full["kwargs"] == {}
    assert same_model(normalize_record({"model": "resnet18", "input_size": [3, 8, 8]}, "x.pt")["model"], "resnet18")
    with pytest.raises(InputError, match="names no model"):
        normalize_record({"input_size": [3, 8, 8]}, "x.pt")
    with pytest.raises(InputError, match="no input_size"):
        normalize_record({"model": "resnet18"}, "x.pt")
