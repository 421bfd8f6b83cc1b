"""The small-map convolution forms: the same function and gradients (float64), only where they apply."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import updp.models.small_maps as small_maps
from updp.models import create_model
from updp.models.fast_compute import fast_compute
from updp.models.small_maps import has_rewritable_convolutions, small_map_convolutions


def _count_rewrites(monkeypatch) -> dict[str, int]:
    counts = {"depthwise": 0, "pointwise": 0}
    for name, key in (("depthwise_as_matrices", "depthwise"), ("pointwise_as_linear", "pointwise")):
        original = getattr(small_maps, name)

        def counted(*a, _original=original, _key=key, **k):
            counts[_key] += 1
            return _original(*a, **k)
        monkeypatch.setattr(small_maps, name, counted)
    return counts


def _forward_backward(model, x):
    model.zero_grad()
    y = model(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
    return y.detach().clone(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_convnext_at_32px_computes_the_same_outputs_and_gradients_float64(monkeypatch):
    torch.manual_seed(0)
    model, _ = create_model("timm:convnext_atto", num_classes=10, in_chans=1, dims=(8, 16, 24, 32))
    model = model.double().train()
    x = torch.randn(3, 1, 32, 32, dtype=torch.float64)
    ref_y, ref_grads = _forward_backward(model, x)
    counts = _count_rewrites(monkeypatch)
    with small_map_convolutions(model):
        y, grads = _forward_backward(model, x)
    # Its stages run on 8×8, 4×4, 2×2 and 1×1 maps: the last three stages' depthwise 7×7s take the
    # matrix form (2 + 2 + 6 + 2 blocks, less the 8×8 stage's 2).
    assert counts["depthwise"] == 10
    assert torch.equal(y, ref_y) or (y - ref_y).abs().max() < 1e-12
    assert grads.keys() == ref_grads.keys()
    assert max((grads[k] - ref_grads[k]).abs().max().item() for k in grads) < 1e-12


@pytest.mark.parametrize("hw, k, stride, padding", [((1, 1), 7, 1, 3), ((2, 2), 7, 1, 3), ((4, 4), 3, 2, 1),
                                                    ((2, 3), 5, 1, 2), ((8, 8), 7, 1, 3)])
def test_depthwise_calls_equal_the_convolution_float64(hw, k, stride, padding):
    torch.manual_seed(1)
    c = 5
    x = torch.randn(2, c, *hw, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c, 1, k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w, b, stride=stride, padding=padding, groups=c)
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, w, b))
    with small_map_convolutions(nn.Conv2d(c, c, k, groups=c)):
        got = F.conv2d(x, w, b, stride=stride, padding=padding, groups=c)  # keyword arguments too
        got_grads = torch.autograd.grad(got.square().sum(), (x, w, b))
    assert got.shape == ref.shape and (got - ref).abs().max() < 1e-12
    for g, r in zip(got_grads, ref_grads):
        assert (g - r).abs().max() < 1e-12
    # Taps that only ever read padding get no gradient, in both forms.
    if hw == (1, 1):
        assert torch.count_nonzero(ref_grads[1][:, :, 3, 3]) == c
        assert torch.count_nonzero(got_grads[1]) == torch.count_nonzero(ref_grads[1]) == c


def test_pointwise_calls_equal_the_convolution_and_keep_channels_last_float64(monkeypatch):
    torch.manual_seed(2)
    conv = nn.Conv2d(6, 4, 1).double()
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    ref = conv(x)
    counts = _count_rewrites(monkeypatch)
    with small_map_convolutions(conv):
        got = conv(x)
    assert counts == {"depthwise": 0, "pointwise": 1}
    assert (got - ref).abs().max() < 1e-12
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_other_convolutions_are_left_alone(monkeypatch):
    dense = nn.Conv2d(3, 4, 3, padding=1).double()
    dilated = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4).double()
    x = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    counts = _count_rewrites(monkeypatch)
    with small_map_convolutions(dense, dilated):
        dense(x)
        dilated(torch.randn(1, 4, 2, 2, dtype=torch.float64))
        F.conv2d(torch.randn(1, 4, 2, 2), torch.randn(4, 1, 3, 3), padding="same", groups=4)
    assert counts == {"depthwise": 0, "pointwise": 0}


def test_the_mode_is_entered_only_for_models_it_can_speed_up_and_nests():
    deit, _ = create_model("timm:deit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4)
    assert not has_rewritable_convolutions(deit)  # its patch embedding is a strided 4×4 conv
    with small_map_convolutions(deit, None):
        assert not torch._C._is_torch_function_mode_enabled()
    dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    with small_map_convolutions(dw):
        assert torch._C._is_torch_function_mode_enabled()
        with small_map_convolutions(dw):
            assert len(torch.overrides._get_current_function_mode_stack()) == 1
        assert torch._C._is_torch_function_mode_enabled()
    assert not torch._C._is_torch_function_mode_enabled()


def test_nothing_is_stored_on_the_model_so_copies_and_exports_see_a_plain_module():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 2, 7, padding=3, groups=2), nn.Conv2d(2, 3, 1))
    before = {n: dict(vars(m)) for n, m in net.named_modules()}
    with fast_compute(net):
        twin = copy.deepcopy(net)
    assert {n: dict(vars(m)).keys() for n, m in net.named_modules()} == {n: d.keys() for n, d in before.items()}
    assert not torch._C._is_torch_function_mode_enabled()
    graph = str(torch.jit.trace(twin, torch.randn(1, 2, 2, 2)).inlined_graph)
    assert graph.count("aten::_convolution") == 2 and "aten::linear" not in graph
