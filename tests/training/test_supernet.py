"""Supernet: shared parameters, form switching, deterministic subnet sampling, training mechanics."""

from __future__ import annotations

import pytest
import timm
import torch
from torch.utils.data import TensorDataset

from updp.blocks import find_blocks
from updp.core.errors import InputError, UnsupportedError
from updp.data import DataBundle
from updp.training.supernet import (
    BASE,
    PRUNED,
    SubnetSampler,
    SupernetBlock,
    SupernetConfig,
    active_subnet,
    build_supernet,
    calibrate_supernet,
    frozen_copy,
    k_range_for_target,
    set_subnet,
    shared_parameter_report,
    supernet_blocks,
    train_supernet,
)
from updp.workflows.search import load_supernet

SIZE = 32


def _atto(num_classes: int = 4):
    torch.manual_seed(0)
    return timm.create_model("convnext_atto", depths=(1, 1, 2, 1), num_classes=num_classes).eval()


def _bundle(n: int = 64, classes: int = 4) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, SIZE, SIZE, generator=g)
    y = torch.arange(n) % classes
    ds = TensorDataset(x, y)
    return DataBundle(train=ds, val=ds, holdout=ds, num_classes=classes, in_chans=3, description="synthetic")


def test_supernet_shares_parameters_and_only_adds_norms():
    model = _atto()
    cand = build_supernet(model)
    assert cand == list(range(5))
    blocks = supernet_blocks(model)
    assert [b.index for b in blocks] == cand
    for b in blocks:
        assert isinstance(b, SupernetBlock)
        assert b.pruned.conv_dw.weight is b.base.conv_dw.weight
        assert b.pruned.mlp.fc1.weight is b.base.mlp.fc1.weight
        assert b.pruned.mlp.fc2.weight is b.base.mlp.fc2.weight
        assert b.pruned.gamma is b.base.gamma
        assert b.pruned.lam == 1.0
    rep = shared_parameter_report(model)
    assert rep["base_only"] == 0  # the pruned form keeps the LayerNorm too (for λ < 1)
    # the new norms: LN -> BN (2C) and the end-of-block BN (2C) per block
    assert rep["pruned_only"] == sum(4 * b.base.conv_dw.out_channels for b in blocks)
    # a gradient through the pruned form reaches the shared weight
    set_subnet(model, cand)
    model.train()
    model(torch.randn(2, 3, SIZE, SIZE)).sum().backward()
    assert blocks[0].base.mlp.fc1.weight.grad is not None


def test_switching_forms_changes_outputs_and_set_subnet_checks():
    model = _atto()
    ref = _atto()
    build_supernet(model, [1, 3])
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))  # all base forms: the baseline exactly
        assert set_subnet(model, [3]) == (3,)
        assert active_subnet(model) == (3,)
        y3 = model(x)
        set_subnet(model, [1, 3])
        y13 = model(x)
    assert not torch.allclose(y3, ref(x).detach())
    assert not torch.allclose(y3, y13)
    assert [b.active for b in supernet_blocks(model)] == [PRUNED, PRUNED]
    set_subnet(model, [])
    assert [b.active for b in supernet_blocks(model)] == [BASE, BASE]
    with pytest.raises(InputError, match=r"block\(s\) \[2\] are not candidates"):
        set_subnet(model, [2])
    with pytest.raises(InputError, match="already a supernet"):
        build_supernet(model)


def test_build_supernet_errors():
    with pytest.raises(InputError, match="out of range"):
        build_supernet(_atto(), [99])
    with pytest.raises(InputError, match="repeat"):
        build_supernet(_atto(), [1, 1])
    rn = timm.create_model("resnet18", num_classes=4)
    projection = next(b.index for b in find_blocks(rn) if b.shortcut == "projection")
    build_supernet(rn, [projection])  # prunable: projection shortcuts are allowed
    with pytest.raises(UnsupportedError):
        build_supernet(timm.create_model("convnextv2_atto", num_classes=4), [0])


def test_sampler_exact_k_and_deterministic_per_step():
    s = SubnetSampler((0, 2, 4, 6, 8, 10), 3, 3, seed=5)
    draws = [s.sample(step) for step in range(200)]
    assert all(len(d) == 3 and len(set(d)) == 3 and set(d) <= {0, 2, 4, 6, 8, 10} for d in draws)
    assert draws == [SubnetSampler((10, 8, 6, 4, 2, 0), 3, 3, seed=5).sample(step) for step in range(200)]
    assert s.sample(17) == s.sample(17)
    assert draws != [SubnetSampler(s.candidates, 3, 3, seed=6).sample(step) for step in range(200)]
    # roughly uniform: every block is pruned about half the time
    counts = {b: sum(b in d for d in draws) for b in s.candidates}
    assert all(60 <= c <= 140 for c in counts.values())
    r = SubnetSampler(tuple(range(6)), 1, 3, seed=0)
    assert {len(r.sample(i)) for i in range(100)} == {1, 2, 3}
    with pytest.raises(InputError):
        SubnetSampler((0, 1), 1, 3)


def test_k_range_for_target():
    assert k_range_for_target([0, 1, 2, 3], target_blocks=2) == (2, 2)
    with pytest.raises(InputError, match="exactly one target"):
        k_range_for_target([0, 1], target_blocks=1, target_speedup=1.2)
    with pytest.raises(InputError, match="4 candidates"):
        k_range_for_target([0, 1, 2, 3], target_blocks=5)
    with pytest.raises(InputError, match="latency table"):
        k_range_for_target([0, 1], target_speedup=1.2)


def test_train_supernet_samples_every_step(tmp_path):
    model = _atto()
    teacher = frozen_copy(model)
    build_supernet(model)
    sampler = SubnetSampler(tuple(range(5)), 2, 2, seed=0)
    seen = []
    orig_sample = sampler.sample
    object.__setattr__(sampler, "sample", lambda step: seen.append(step) or orig_sample(step))
    cfg = SupernetConfig(epochs=1, batch_size=16, max_steps_per_epoch=3, calib_batches=2, progress=False,
                         device="cpu", out=str(tmp_path / "sn.pt"), lr=1e-4, weight_decay=0.05, warmup_epochs=0.5,
                         label_smoothing=0.1, kd_alpha=0.5, kd_temperature=1.0)
    spec = {"model": "timm:convnext_atto", "kwargs": {"depths": [1, 1, 2, 1]}, "num_classes": 4,
            "input_size": [3, SIZE, SIZE]}
    summary = train_supernet(model, _bundle(), sampler, cfg, teacher=teacher, checkpoint_extra={"model_spec": spec})
    assert seen == [0, 1, 2]
    assert summary.candidates == list(range(5)) and summary.checkpoint == str(tmp_path / "sn.pt")
    assert summary.val_acc is not None and summary.seconds_per_epoch > 0
    # the calibrated end-of-block BNs are not the default statistics any more
    assert not torch.equal(supernet_blocks(model)[0].pruned.end_bn.running_var, torch.ones(40))
    again, rec = load_supernet(str(tmp_path / "sn.pt"))
    assert rec["candidates"] == list(range(5))
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def test_calibrate_supernet_restores_active_subnet():
    model = _atto()
    build_supernet(model)
    set_subnet(model, [2])
    assert calibrate_supernet(model, [torch.randn(8, 3, SIZE, SIZE)]) == 1
    assert active_subnet(model) == (2,)
