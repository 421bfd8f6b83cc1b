"""Progressive subnet training on a built model (no files resolved): λ = 0 is the baseline function,
the run ends at λ = 1, the plan records the method; the ablations differ where they should."""

from __future__ import annotations

import copy

import pytest
import torch

from updp.blocks import pruned_blocks
from updp.core.errors import InputError
from updp.data import get_datasets
from updp.models import create_for_data
from updp.training.progressive import ProgressiveConfig, train_progressive

METHOD = {"schedule": "linear", "ramp_fraction": 0.5, "kd": True, "kd_alpha": 0.5, "kd_temperature": 1.0,
          "calib_batches": 2, "method": "updp", "layerfold_penalty": 0.25, "layerfold_alpha_lr": 0.05}


@pytest.fixture(scope="module")
def digits():
    return get_datasets("digits", 32)


def _baseline(digits):
    return create_for_data("timm:convnext_atto", num_classes=digits.num_classes, input_chw=(3, 32, 32),
                           model_kwargs={"dims": [16, 32, 48, 64], "depths": [1, 1, 2, 1]}, seed=0)


def test_lambda_zero_is_the_baseline_and_the_run_ends_at_one(digits, trainer_config, tmp_path):
    module, spec = _baseline(digits)
    res = train_progressive(module, digits, [1, 3], selection_rule="manual", model_spec=spec,
                            train=trainer_config(epochs=2, max_steps_per_epoch=3, out=str(tmp_path / "p.pt")),
                            method=ProgressiveConfig(**METHOD))
    assert res.at_start == res.baseline  # converted at λ = 0, new BNs calibrated: the same function
    assert [h["lam"] for h in res.train.history][-1] == 1.0
    assert [b.lam for _, b in pruned_blocks(module)] == [1.0, 1.0]
    assert res.plan.blocks == [1, 3] and res.plan.lam == 1.0 and "updp progressive" in res.plan.notes
    ck = torch.load(tmp_path / "p.pt", weights_only=True)
    assert ck["plan"]["blocks"] == [1, 3] and ck["model_spec"] == spec and ck["config"]["kd_alpha"] == 0.5


def test_abrupt_and_drop_change_the_function_at_the_start(digits, trainer_config):
    base, spec = _baseline(digits)
    for kw, note in (({"method": "abrupt"}, "abrupt"), ({"method": "drop"}, "drop")):
        module = copy.deepcopy(base)
        res = train_progressive(module, digits, [1, 3], selection_rule="manual", model_spec=spec,
                                train=trainer_config(epochs=1, max_steps_per_epoch=1),
                                method=ProgressiveConfig(**{**METHOD, **kw, "kd": False}))
        assert note in res.plan.notes and "no kd" in res.plan.notes
        assert res.at_start["loss"] != res.baseline["loss"]
    assert res.plan.block_options == {"drop": True}


def test_methods_are_one_switch():
    with pytest.raises(InputError, match="unknown pruning method 'fold'"):
        ProgressiveConfig(**{**METHOD, "method": "fold"})
    for marker in ("drop", "layerfold_alphas"):
        with pytest.raises(InputError, match="use ProgressiveConfig.method"):
            ProgressiveConfig(**METHOD, block_options={marker: True})
