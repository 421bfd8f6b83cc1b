"""`updp prune`: progressive subnet training (UPDP step 3) of a trained baseline checkpoint.

Resolves what the training needs and hands it to `updp.training.progressive`: the baseline (its
checkpoint), the dataset at the baseline's input size with the baseline's split seed, and the
blocks, from exactly one of a plan (e.g. the search's, checked against the model), block indices,
or N blocks by the default rule of `updp.exporter.selection`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from updp.blocks.discover import find_blocks
from updp.blocks.plan import PrunePlan
from updp.core.errors import InputError
from updp.core.io import check_outputs
from updp.data import refuse_outputs_in_data
from updp.exporter.selection import select_blocks
from updp.training.progressive import ProgressiveConfig, PruneResult, train_progressive
from updp.training.trainer import TrainerConfig
from updp.workflows.config import PruneConfig, pick
from updp.workflows.resolve import data_for, load_baseline


def resolve_plan(plan: PrunePlan | str | object) -> PrunePlan:
    """A `PrunePlan`, from itself, a search result (its `.plan`) or a plan .json path."""
    if isinstance(plan, PrunePlan):
        return plan
    inner = getattr(plan, "plan", None)
    if isinstance(inner, PrunePlan):
        return inner
    return PrunePlan.load(str(plan))


def choose_blocks(module: nn.Module, spec: dict, cfg: PruneConfig) -> tuple[list[int], str, dict]:
    """(block indices, selection rule, family options) from the plan, the indices or the rule."""
    found = find_blocks(module)
    if cfg.plan is not None:
        plan = resolve_plan(cfg.plan)
        plan.check_against(module, model_name=spec["model"])
        return list(plan.blocks), plan.selection_rule, plan.family_options()
    if cfg.blocks is not None:
        for i in cfg.blocks:
            if not 0 <= i < len(found):
                raise InputError(f"--blocks {i}: {spec['model']} has {len(found)} recognized blocks "
                                 f"(0..{len(found) - 1}; see `updp blocks`)")
        return list(cfg.blocks), "manual", {}
    input_shape = (1, *spec["input_size"])
    chosen, rule = select_blocks(module, find_blocks(module, input_shape), cfg.prune, input_shape)
    return chosen, rule, {}


def progressive_config(cfg: PruneConfig, family_options: dict) -> ProgressiveConfig:
    """The method's settings from the workflow's (every field they share)."""
    options = dict(family_options)
    if cfg.swap_at_start:
        options["swap_at_start"] = True
    return ProgressiveConfig(**pick(cfg, ProgressiveConfig, block_options=options))


def prune(cfg: PruneConfig, *, echo: Callable[[str], None] | None = None) -> PruneResult:
    """Progressive training of the chosen blocks; the checkpoint at `cfg.out` carries its plan.

    Raises:
        InputError: a pruned or unreadable checkpoint, a class-count mismatch, a plan for another
            model or naming missing blocks, bad settings.
        UnsupportedError: a block that cannot be pruned (or, with drop, dropped).
    """
    check_outputs([cfg.out], [cfg.checkpoint, cfg.plan if isinstance(cfg.plan, str) else None])
    refuse_outputs_in_data([cfg.out], cfg.data)
    loaded = load_baseline(cfg.checkpoint, model=cfg.model, what="pruning")
    data = data_for(loaded.spec, cfg.data, split_seed=cfg.split_seed)
    blocks, rule, family_options = choose_blocks(loaded.module, loaded.spec, cfg)
    train = TrainerConfig(**pick(cfg, TrainerConfig))
    return train_progressive(loaded.module, data, blocks, selection_rule=rule, model_spec=loaded.spec, train=train,
                             method=progressive_config(cfg, family_options), echo=echo)


__all__ = ["choose_blocks", "progressive_config", "prune", "resolve_plan"]
