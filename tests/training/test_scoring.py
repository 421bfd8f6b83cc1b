"""Scoring subnets on held-out data: BN recalibration, restored state, exact pooling over shards."""

from __future__ import annotations

import pytest
import torch
from timm.models.resnet import BasicBlock, ResNet

from updp.blocks import calibrate_bn
from updp.training.scoring import SubnetScorer, pool_running_stats
from updp.training.supernet import active_subnet, build_supernet, set_subnet

SIZE = 32


def test_scorer_recalibrates_and_restores_bn_state():
    torch.manual_seed(0)
    # a ResNet: its BNs are shared by both forms of a block
    model = ResNet(BasicBlock, layers=(1, 1, 1, 1), num_classes=3).eval()
    build_supernet(model, [0, 1])
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(8, 3, SIZE, SIZE, generator=g) for _ in range(2)]
    holdout = [(torch.randn(16, 3, SIZE, SIZE, generator=g), torch.arange(16) % 3)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scorer = SubnetScorer(model, calib, holdout)
    set_subnet(model, [1])
    a = scorer((0,))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # statistics restored, weights untouched
    assert active_subnet(model) == (1,)
    assert scorer((0,)) == a  # no contamination between candidates
    scorer((0, 1))
    assert scorer((0,)) == a
    assert 0.0 <= a <= 1.0 and scorer.n_scored == 4



def test_pool_running_stats_equals_calibrating_on_all_batches():
    """Sharded BN calibration pooled by batch counts = calibration on every batch (float64, exact)."""
    torch.manual_seed(0)
    batches = [torch.randn(4 + i, 3, 5, 5, dtype=torch.float64) * (1 + i) + i for i in range(5)]

    def stats(bs):
        m = torch.nn.Sequential(torch.nn.BatchNorm2d(3).double())
        calibrate_bn(m, bs, which="all")
        return torch.cat([m[0].running_mean, m[0].running_var])

    whole = stats(batches)
    for world in (2, 3):
        shards = [batches[r::world] for r in range(world)]
        pooled = pool_running_stats([len(s) for s in shards], torch.stack([stats(s) for s in shards]))
        torch.testing.assert_close(pooled, whole, rtol=1e-12, atol=1e-12)
    # an unweighted mean of the shards would be wrong for uneven shards (3 + 2 batches)
    uneven = torch.stack([stats(batches[0::2]), stats(batches[1::2])])
    assert not torch.allclose(uneven.mean(0), whole, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="do not fit"):
        pool_running_stats([1], uneven)
    with pytest.raises(ValueError, match="do not fit"):
        pool_running_stats([0, 0], uneven)
