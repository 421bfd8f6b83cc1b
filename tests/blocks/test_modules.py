"""λ-modules and ChannelBatchNorm: exact end points, exact blend, BN train/eval semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from updp.blocks import BlendedNorm, ChannelBatchNorm, EndAct, LambdaAct, calibrate_bn
from updp.blocks.modules import bn_from_layernorm
from updp.core.errors import InputError


def _x(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("cls, at0, at1", [
    (LambdaAct, lambda x: F.gelu(x), lambda x: x),
    (EndAct, lambda x: x, lambda x: F.gelu(x)),
])
def test_act_end_points_and_blend(cls, at0, at1):
    m = cls(nn.GELU())
    x = _x(4, 5)
    m.set_lam(0.0)
    assert torch.equal(m(x), at0(x))
    m.set_lam(1.0)
    assert torch.equal(m(x), at1(x))
    m.set_lam(0.25)
    assert torch.allclose(m(x), 0.75 * at0(x) + 0.25 * at1(x), rtol=0, atol=1e-15)


def test_lambda_act_with_inplace_activation_does_not_clobber_input():
    m = LambdaAct(nn.ReLU(inplace=True))
    m.set_lam(0.5)
    x = _x(3, 4)
    x0 = x.clone()
    y = m(x)
    assert torch.equal(x, x0)
    assert torch.allclose(y, 0.5 * x0.relu() + 0.5 * x0, rtol=0, atol=1e-15)


def test_lam_out_of_range():
    with pytest.raises(InputError):
        LambdaAct(nn.ReLU()).set_lam(1.5)


@pytest.mark.parametrize("shape, dim", [((2, 6, 5, 5), 1), ((2, 5, 5, 6), -1), ((2, 7, 6), -1)])
def test_channel_bn_matches_batchnorm(shape, dim):
    c = shape[dim]
    bn = ChannelBatchNorm(c, channel_dim=dim).double()
    ref = nn.BatchNorm1d(c).double()
    with torch.no_grad():
        for m in (bn, ref):
            m.weight.copy_(torch.linspace(0.5, 1.5, c))
            m.bias.copy_(torch.linspace(-0.3, 0.3, c))
    x = _x(*shape)
    flat = x.movedim(dim, -1).reshape(-1, c)  # (M, C)
    bn.train()
    ref.train()
    y = bn(x)
    y_ref = ref(flat).reshape(x.movedim(dim, -1).shape).movedim(-1, dim)
    assert torch.allclose(y, y_ref, rtol=0, atol=1e-12)
    assert torch.allclose(bn.running_mean, ref.running_mean, rtol=0, atol=1e-14)
    assert torch.allclose(bn.running_var, ref.running_var, rtol=0, atol=1e-14)
    bn.eval()
    ref.eval()
    y_ref = ref(flat).reshape(x.movedim(dim, -1).shape).movedim(-1, dim)
    assert torch.allclose(bn(x), y_ref, rtol=0, atol=1e-12)


def test_blended_norm_end_points_and_swap():
    ln = nn.LayerNorm(6).double()
    bn = bn_from_layernorm(ln, channel_dim=-1).eval()
    assert torch.equal(bn.weight, ln.weight) and bn.weight is not ln.weight
    x = _x(2, 3, 6)
    blend = BlendedNorm(ln, bn)
    assert list(blend.children()) == []  # the owner registers ln and bn
    assert torch.equal(blend(x), ln(x))
    blend.set_lam(1.0)
    assert torch.equal(blend(x), bn(x))
    blend.set_lam(0.5)
    assert torch.allclose(blend(x), 0.5 * ln(x) + 0.5 * bn(x), rtol=0, atol=1e-15)
    swapped = BlendedNorm(ln, bn, swap_at_start=True)
    assert torch.equal(swapped(x), bn(x))


def test_blended_norm_feeds_bn_statistics_at_lambda0_in_training():
    ln = nn.LayerNorm(6).double()
    bn = bn_from_layernorm(ln, channel_dim=-1)
    blend = BlendedNorm(ln, bn)
    x = _x(8, 6) * 3 + 1
    y = blend(x)  # train mode, λ = 0
    assert torch.equal(y, ln(x))
    assert bn.num_batches_tracked.item() == 1 and bn.running_mean.abs().sum() > 0


def test_calibrate_bn_identity_init_for_inserted_bn():
    bn = ChannelBatchNorm(3, channel_dim=1, identity_init=True).double()
    model = nn.Sequential(nn.Conv2d(3, 3, 1).double(), bn)
    batches = [_x(4, 3, 5, 5) + i for i in range(3)]
    n = calibrate_bn(model, batches)
    assert n == 3 and bn.training and bn.momentum == 0.1  # modes and momentum restored
    feats = torch.cat([model[0](b) for b in batches]).detach()
    mean = feats.mean(dim=(0, 2, 3))
    assert torch.allclose(bn.running_mean, mean, rtol=0, atol=1e-12)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(bn(feats), feats, rtol=0, atol=1e-12)  # the eval form is the identity
