"""Layer-Folding: the α blend and its penalty (float64), the α's own optimizer group, clamping and
forcing, and a run that ends folded, merges and resumes bit-exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from updp.blocks import LambdaAct, PrunePlan, apply_pruning, find_blocks, pruned_blocks
from updp.blocks.convert import add_alphas, fold_alphas
from updp.blocks.modules import BlendedNorm, ChannelBatchNorm, EndAct
from updp.core.errors import InputError
from updp.data import get_datasets
from updp.models import create_for_data
from updp.training.layerfold import LayerFold, folding_penalty
from updp.training.lr_schedule import param_groups
from updp.training.progressive import ProgressiveConfig, train_progressive
from updp.training.trainer import Trainer

METHOD = {"schedule": "linear", "ramp_fraction": 0.5, "kd": False, "kd_alpha": 0.5, "kd_temperature": 1.0,
          "calib_batches": 2, "method": "layerfold", "layerfold_penalty": 0.25, "layerfold_alpha_lr": 0.05}


def test_penalty_is_sum_of_abs_one_minus_alpha_squared_float64():
    alphas = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (0.0, 0.5, 1.0, 1.5)]
    p = folding_penalty(alphas)
    assert p.dtype == torch.float64 and p.item() == 1.0 + 0.75 + 0.0 + 1.25
    p.backward()
    # d/dα |1 − α²| = −2α·sign(1 − α²): zero at 0 (the task loss moves α first), pushes up below 1
    assert [a.grad.item() for a in alphas] == [0.0, -1.0, 0.0, 3.0]
    with pytest.raises(InputError, match="at least one alpha"):
        folding_penalty([])


@pytest.mark.parametrize("act", [nn.GELU(), nn.ReLU(inplace=True)])
def test_learnable_alpha_blend_is_the_paper_formula_float64(act):
    x = torch.randn(4, 7, dtype=torch.float64)
    m = LambdaAct(act)
    alpha = m.add_alpha(x)
    assert alpha.item() == 0.0 and m.learning_alpha
    with torch.no_grad():
        alpha.fill_(0.3)
    y = m(x)
    ref = 0.3 * x + nn.functional.gelu(x) - 0.3 * nn.functional.gelu(x) if isinstance(act, nn.GELU) else \
        0.3 * x + torch.relu(x) - 0.3 * torch.relu(x)
    torch.testing.assert_close(y, ref, rtol=1e-14, atol=1e-15)
    y.sum().backward()
    assert alpha.grad is not None and alpha.grad.item() == pytest.approx(float((x - act(x.clone())).sum()))
    m.set_lam(1.0)  # folded: the python path, α no longer enters the forward
    assert not m.learning_alpha and m(x) is x


def test_every_lambda_module_kind_takes_its_alpha_and_clamps_it():
    x = torch.randn(3, 5, dtype=torch.float64)
    bn = ChannelBatchNorm(5, channel_dim=-1).double().eval()
    for m in (EndAct(nn.GELU()), BlendedNorm(nn.Identity(), bn)):
        a = m.add_alpha(x)
        with torch.no_grad():
            a.fill_(2.0)  # outside [0, 1]: the blend clamps it
        m.set_lam(0.0)
        full = copy.deepcopy(m)
        full.alpha = None
        full.set_lam(1.0)
        torch.testing.assert_close(m(x), full(x), rtol=0, atol=0)


def _tiny():
    model, spec = create_for_data("timm:convnext_atto", num_classes=10, input_chw=(3, 32, 32),
                                  model_kwargs={"dims": [16, 32, 48, 64], "depths": [1, 1, 2, 1]}, seed=0)
    return model, spec


def test_alphas_get_their_own_group_and_fold_to_the_linear_form():
    model, _ = _tiny()
    apply_pruning(model, [1, 3], lam=0.0)
    fold = LayerFold.attach(model, penalty=0.25, fold_step=4)
    # per block: LN→BN blend, the GELU, the inserted end BN blend, the end activation
    assert len(fold.alphas) == 8 and all(a.item() == 0.0 for a in fold.alphas)
    groups = param_groups(model, 0.05, lambda n: 0.5 if fold.owns(n) else None)
    own = [g for g in groups if g.get("lr") == 0.5]
    assert len(own) == 1 and own[0]["weight_decay"] == 0.0
    assert {id(p) for p in own[0]["params"]} == {id(a) for a in fold.alphas}
    assert not any(id(a) in {id(p) for p in g["params"]} for g in groups if g not in own for a in fold.alphas)
    with torch.no_grad():
        fold.alphas[0].fill_(-0.5)
        fold.alphas[1].fill_(1.7)
    fold.before_step(model, 3)
    assert fold.alphas[0].item() == 0.0 and fold.alphas[1].item() == 1.0
    assert fold.loss(model) is not None
    fold.before_step(model, 4)
    assert all(a.item() == 1.0 for a in fold.alphas) and all(b.lam == 1.0 for _, b in pruned_blocks(model))
    assert fold.loss(model) is None
    with pytest.raises(InputError, match="penalty must be >= 0"):
        LayerFold.attach(model, penalty=-1.0, fold_step=1)


def test_folded_blocks_equal_plain_lambda_one_blocks():
    model, _ = _tiny()
    apply_pruning(model, [1, 3], lam=0.0)
    add_alphas(model)
    ref = copy.deepcopy(model)
    fold_alphas(model)
    apply_pruning(ref, [1, 3], lam=1.0)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    ref.eval()
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


@pytest.fixture(scope="module")
def digits():
    return get_datasets("digits", 32)


def test_a_layerfold_run_starts_at_the_baseline_learns_alphas_and_ends_folded(digits, trainer_config, tmp_path):
    base, spec = _tiny()
    module = copy.deepcopy(base)
    res = train_progressive(module, digits, [1, 3], selection_rule="manual", model_spec=spec,
                            train=trainer_config(epochs=2, max_steps_per_epoch=6, out=str(tmp_path / "lf.pt")),
                            method=ProgressiveConfig(**METHOD))
    assert res.at_start == res.baseline  # α = 0: the baseline function
    lams = [h["lam"] for h in res.train.history]
    assert 0.0 < lams[0] < 1.0 and lams[-1] == 1.0  # α's moved during the penalty phase, then forced
    assert res.method_stats["alpha_mean_at_fold"] == pytest.approx(lams[0], abs=0.2)
    assert "alphas' mean was" in res.format_summary()
    assert res.plan.block_options == {"layerfold_alphas": True} and "layerfold" in res.plan.notes
    ck = torch.load(tmp_path / "lf.pt", weights_only=True)
    alpha_keys = [k for k in ck["model"] if k.endswith(".alpha")]
    assert len(alpha_keys) == 8 and all(ck["model"][k].item() == 1.0 for k in alpha_keys)

    # the plan rebuilds the same model from a fresh one (α's included) and it computes the same
    rebuilt, _ = _tiny()
    PrunePlan.from_dict(ck["plan"]).apply(rebuilt)
    rebuilt.load_state_dict(ck["model"])
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), module.eval()(x), rtol=0, atol=0)
    assert len(find_blocks(rebuilt)) == len(find_blocks(base))


def test_a_resumed_layerfold_run_is_bit_exact(digits, trainer_config, tmp_path, monkeypatch):
    """Killed after epoch 1 of 2 (the α's still learning), resumed: the fold happens at the resumed
    run's first step and the weights equal an uninterrupted run's."""
    base, spec = _tiny()
    runs = {}
    for name in ("straight", "killed"):
        runs[name] = tmp_path / f"{name}.pt"
    train_progressive(copy.deepcopy(base), digits, [1, 3], selection_rule="manual", model_spec=spec,
                      train=trainer_config(epochs=2, max_steps_per_epoch=4, out=str(runs["straight"])),
                      method=ProgressiveConfig(**METHOD))
    original = Trainer._train_epoch

    def stop_at_second(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        train_progressive(copy.deepcopy(base), digits, [1, 3], selection_rule="manual", model_spec=spec,
                          train=trainer_config(epochs=2, max_steps_per_epoch=4, out=str(runs["killed"])),
                          method=ProgressiveConfig(**METHOD))
    half = torch.load(runs["killed"], weights_only=True)
    assert half["epoch"] == 1 and any(v.item() < 1.0 for k, v in half["model"].items() if k.endswith(".alpha"))
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    train_progressive(copy.deepcopy(base), digits, [1, 3], selection_rule="manual", model_spec=spec,
                      train=trainer_config(epochs=2, max_steps_per_epoch=4, out=str(runs["killed"]), resume=True),
                      method=ProgressiveConfig(**METHOD))
    a = torch.load(runs["straight"], weights_only=True)["model"]
    b = torch.load(runs["killed"], weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
