"""The channels-last context: converts models with convolutions, nests, restores, computes the same."""

import pytest
import torch
from torch import nn

from updp.models.memory_format import fast_memory_format, prefers_channels_last


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 7, padding=3, groups=8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _is_channels_last(m: nn.Module) -> bool:
    w = m[0].weight  # (8, 3, 3, 3): the two formats differ (unlike a depthwise (C, 1, k, k) weight)
    return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def test_models_with_convolutions_run_channels_last_inside_and_contiguous_after():
    net = _conv_net()
    weight = net[0].weight
    with fast_memory_format(net):
        assert _is_channels_last(net)
        assert net[0].weight is weight  # the optimizer's references stay valid
    assert net[0].weight.is_contiguous() and net[0].weight is weight


def test_nested_blocks_leave_the_model_to_the_outermost():
    net = _conv_net()
    with fast_memory_format(net):
        with fast_memory_format(net):
            pass
        assert _is_channels_last(net)  # an evaluation inside training does not undo it
    assert net[0].weight.is_contiguous()


def test_restored_on_error_and_models_without_convolutions_untouched():
    net, mlp = _conv_net(), nn.Sequential(nn.Linear(4, 4))
    assert prefers_channels_last(net) and not prefers_channels_last(mlp)
    with pytest.raises(RuntimeError), fast_memory_format(net, None, mlp):
        raise RuntimeError("boom")
    assert net[0].weight.is_contiguous()


def test_the_outputs_are_the_same_up_to_rounding():
    net = _conv_net().double()
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    ref = net(x)
    with fast_memory_format(net):
        out = net(x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
