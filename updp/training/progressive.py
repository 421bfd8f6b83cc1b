"""Progressive subnet training (UPDP step 3) and its ablations.

    result = prune_checkpoint("base.pt", "mnist5k", blocks=[1, 3],
                              train=TrainConfig(epochs=10, out="pruned.pt"), prune=PruneConfig())

Order: rebuild the baseline from its checkpoint → keep a frozen copy as the teacher → convert the
chosen blocks to their pruned training form at λ = 0 (the baseline function, exactly) → calibrate
the new BatchNorms on training data → train while `LambdaSchedule` moves λ from 0 to 1 →
finish at λ = 1 exactly (the mergeable state) → write a checkpoint carrying its `PrunePlan`, which
`updp export` picks up.

Ablations (so that benchmarks can compare them):

* `abrupt`: λ = 1 from the first step (DepthShrinker-style direct activation removal).
* `drop`: the chosen blocks are removed entirely, each replaced by its shortcut (`nn.Identity`).
  Only blocks with an identity shortcut can be dropped; the plan records `block_options["drop"]`
  so that export and eval rebuild the same shallower model.
* `kd=False`: no distillation.

Why distillation is on by default with α = 0.5: a pruned block starts as the baseline function
and the teacher *is* the baseline, so the soft targets pull the whole network back towards what
it computed before the block became linear, which labels alone (especially on small datasets) do
not; 0.5 weighs that equally with the labels, the usual Hinton-style balance, and keeps the
student free to improve on the teacher's mistakes.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from updp.errors import InputError, UnsupportedError
from updp.pruning.plan import PrunePlan
from updp.pruning.schedule import LambdaSchedule
from updp.pruning.train import (
    TrainConfig,
    Trainer,
    TrainResult,
    evaluate,
    fast_cpu_math,
    load_trained,
    resolve_device,
    same_model_name,
)

logger = logging.getLogger(__name__)

DROP_OPTION = "drop"


@dataclass
class PruneConfig:
    """How the chosen blocks are pruned and trained.

    Attributes:
        schedule: λ schedule kind: 'linear', 'cosine' or 'step'.
        ramp_fraction: fraction of the steps over which λ rises 0 → 1 (then 1).
        abrupt: λ = 1 from the first step (ablation).
        drop: remove the blocks instead of linearizing them (ablation).
        kd: distil from the frozen baseline.
        kd_alpha: weight of the distillation term.
        kd_temperature: its softmax temperature.
        calib_batches: batches for calibrating the new BatchNorms before training.
        block_options: family options for `apply_pruning` (`swap_at_start`, `prune_norm1`).
    """

    schedule: str = "linear"
    ramp_fraction: float = 0.5
    abrupt: bool = False
    drop: bool = False
    kd: bool = True
    kd_alpha: float = 0.5
    kd_temperature: float = 1.0
    calib_batches: int = 20
    block_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.abrupt and self.drop:
            raise InputError("--abrupt and --drop are different ablations: choose one")
        if DROP_OPTION in self.block_options:
            raise InputError("use PruneConfig.drop, not block_options['drop']")


@dataclass
class PruneResult:
    """What `prune_checkpoint` did.

    Attributes:
        plan: the plan written into the checkpoint.
        train: the training result (final val metrics, history, checkpoint path).
        baseline: val metrics of the baseline before pruning.
        at_start: val metrics right after conversion (and BN calibration), before training.
    """

    plan: PrunePlan
    train: TrainResult
    baseline: dict
    at_start: dict

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict(), "baseline": self.baseline, "at_start": self.at_start,
                "final": {"acc": self.train.val_acc, "loss": self.train.val_loss},
                "checkpoint": self.train.checkpoint, "seconds": self.train.seconds, "history": self.train.history}


# ------------------------------------------------------------------ drop ablation

def drop_blocks(model: nn.Module, indices: list[int]) -> list[str]:
    """Replace each block at `indices` (see `find_blocks`) by `nn.Identity`, in place.

    Only exact for the *structure*: a block `y = x + f(x)` becomes `y = x`. Blocks whose shortcut is
    not the identity (projection, or no residual) cannot be dropped: their output has another shape
    or meaning.

    Returns:
        The module paths of the dropped blocks.

    Raises:
        InputError: index out of range or repeated.
        UnsupportedError: a block without an identity shortcut.
    """
    from updp.pruning.convert import _set_submodule
    from updp.pruning.discover import _structural

    found = _structural(model)
    if len(set(indices)) != len(indices):
        raise InputError(f"block indices repeat: {indices}")
    for i in indices:
        if not 0 <= i < len(found):
            raise InputError(f"block index {i} out of range: the model has {len(found)} recognized blocks "
                             f"(0..{len(found) - 1})")
        info = found[i][0]
        if info.shortcut != "identity":
            raise UnsupportedError(f"block {i} ({info.name}) has a {info.shortcut} shortcut, not an identity: "
                                   "it cannot be dropped (--drop removes a block by keeping only its skip)")
    names = [found[i][0].name for i in indices]
    for name in names:
        _set_submodule(model, name, nn.Identity())
        logger.info("dropped block %s", name)
    return names


def is_drop_plan(plan: PrunePlan) -> bool:
    return bool(plan.block_options.get(DROP_OPTION, False))


def apply_plan(model: nn.Module, plan: PrunePlan) -> None:
    """Give `model` the structure a plan describes: pruned blocks at `plan.lam`, or dropped blocks."""
    from updp.pruning.convert import apply_pruning
    from updp.pruning.discover import _structural

    found = _structural(model)
    for i, name in zip(plan.blocks, plan.block_names):
        if 0 <= i < len(found) and found[i][0].name != name:
            raise InputError(f"prune plan names block {i} {name!r}, but block {i} of this model is "
                             f"{found[i][0].name!r} (a plan for another model?)")
    options = dict(plan.block_options)
    if options.pop(DROP_OPTION, False):
        drop_blocks(model, list(plan.blocks))
    else:
        apply_pruning(model, plan.blocks, lam=plan.lam, **options)


# ------------------------------------------------------------------ step 3

def _choose_blocks(module: nn.Module, input_shape: tuple[int, ...], spec: dict, *, blocks: list[int] | None,
                   plan: PrunePlan | None, prune_n: int | None) -> tuple[list[int], str, dict]:
    from updp.pruning.discover import find_blocks

    given = sum(x is not None for x in (blocks, plan, prune_n))
    if given != 1:
        raise InputError("choose the blocks with exactly one of --plan, --blocks, --prune N")
    found = find_blocks(module)
    if plan is not None:
        if not same_model_name(plan.model, spec["model"]):
            raise InputError(f"the plan is for {plan.model}, the checkpoint holds {spec['model']}")
        for i, name in zip(plan.blocks, plan.block_names or [None] * len(plan.blocks)):
            if not 0 <= i < len(found):
                raise InputError(f"the plan names block {i}, but {spec['model']} has {len(found)} recognized "
                                 f"blocks (0..{len(found) - 1})")
            if name is not None and found[i].name != name:
                raise InputError(f"the plan names block {i} {name!r}, but block {i} is {found[i].name!r}")
        options = dict(plan.block_options)
        options.pop(DROP_OPTION, None)
        return list(plan.blocks), plan.selection_rule, options
    if blocks is not None:
        for i in blocks:
            if not 0 <= i < len(found):
                raise InputError(f"--blocks {i}: {spec['model']} has {len(found)} recognized blocks "
                                 f"(0..{len(found) - 1}; see `updp blocks`)")
        return sorted(blocks), "manual", {}
    from updp.selection import select_blocks

    chosen, rule = select_blocks(module, find_blocks(module, input_shape), prune_n, input_shape)
    return chosen, rule, {}


def prune_checkpoint(checkpoint: str, data, *, train: TrainConfig, prune: PruneConfig | None = None,
                     blocks: list[int] | None = None, plan: PrunePlan | None = None,
                     prune_n: int | None = None, model: str | None = None) -> PruneResult:
    """Progressive subnet training of a baseline checkpoint (see the module docstring).

    Args:
        checkpoint: baseline checkpoint from `updp train` (or a plain state dict with `model`).
        data: a `DataBundle` or a `--data` spec (then built at the checkpoint's input size).
        train: training configuration; `train.out` receives the pruned checkpoint.
        prune: pruning configuration (default `PruneConfig()`).
        blocks / plan / prune_n: exactly one: block indices, a `PrunePlan` (e.g. from the search), or
            N blocks by the default rule of `updp.selection`.
        model: the model name, needed only for a plain state dict (checked against the spec otherwise).

    Raises:
        InputError: class-count mismatch, plan for another model or naming missing blocks, etc.
        UnsupportedError: a block that cannot be pruned (or, with drop, dropped).
    """
    from updp.pruning.convert import apply_pruning, calibrate_bn, pruned_blocks, set_lam
    from updp.pruning.discover import find_blocks

    prune = prune or PruneConfig()
    fast_cpu_math()
    loaded = load_trained(checkpoint, model=model)
    if loaded.plan is not None:
        raise InputError(f"{checkpoint} is already pruned (it carries a plan for blocks {loaded.plan.blocks}); "
                         "prune the baseline checkpoint instead")
    spec = loaded.spec
    chw = tuple(spec["input_size"])
    if isinstance(data, str):
        from updp.data import get_datasets

        data = get_datasets(data, chw[1:], split_seed=0)
    if tuple(data.input_size) != tuple(chw[1:]):
        raise InputError(f"the data is served at {data.input_size}, the checkpoint was trained at {chw[1:]}")
    n_cls = spec.get("num_classes")
    if n_cls is not None and n_cls != data.num_classes:
        raise InputError(f"the checkpoint has {n_cls} classes, the data ({data.spec}) has {data.num_classes}")
    student = loaded.module
    device = resolve_device(train.device)
    chosen, rule, plan_options = _choose_blocks(student, (1, *chw), spec, blocks=blocks, plan=plan, prune_n=prune_n)
    options = {**plan_options, **prune.block_options}
    names = [b.name for b in find_blocks(student)]
    chosen_names = [names[i] for i in chosen]

    student.to(device)
    baseline = evaluate(student, data.val, batch_size=256)
    teacher = copy.deepcopy(student).eval() if prune.kd else None
    if prune.drop:
        drop_blocks(student, chosen)
        schedule = None
        method = "drop (blocks replaced by their identity shortcut)"
    else:
        lam0 = 1.0 if prune.abrupt else 0.0
        apply_pruning(student, chosen, lam=lam0, **options)
        loader = torch.utils.data.DataLoader(data.train, batch_size=train.batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(train.seed))
        n = calibrate_bn(student, loader, which="pruned", max_batches=prune.calib_batches)
        logger.info("calibrated the new BatchNorms on %d batches", n)
        steps = Trainer.count_steps(data, train)
        schedule = LambdaSchedule(kind=prune.schedule, ramp_fraction=0.0 if prune.abrupt else prune.ramp_fraction,
                                  steps=steps)
        method = "abrupt (lambda = 1 from the start)" if prune.abrupt else "updp progressive"
    at_start = evaluate(student, data.val, batch_size=256)
    logger.info("val acc: baseline %.4f, after conversion %.4f", baseline["acc"], at_start["acc"])

    kd_note = f"kd alpha={prune.kd_alpha} T={prune.kd_temperature}" if prune.kd else "no kd"
    notes = (f"method: {method}; schedule: {schedule.describe() if schedule else 'n/a'}; {kd_note}; "
             f"data: {data.spec}; epochs: {train.epochs}; baseline val acc {baseline['acc']:.4f}")
    out_options = dict(options)
    if prune.drop:
        out_options[DROP_OPTION] = True
    out_plan = PrunePlan(model=spec["model"], input_size=chw, blocks=chosen, block_names=chosen_names, lam=1.0,
                         selection_rule=rule, model_kwargs=dict(spec.get("kwargs") or {}),
                         num_classes=spec.get("num_classes"), block_options=out_options, notes=notes)

    def before_step(m: nn.Module, step: int, progress: float) -> None:
        if schedule is not None:
            set_lam(m, schedule(step))

    cfg = dataclasses.replace(train, kd_alpha=prune.kd_alpha if prune.kd else 0.0,
                              kd_temperature=prune.kd_temperature)
    trainer = Trainer(student, data, cfg, teacher=teacher, before_step=before_step,
                      checkpoint_extra=lambda: {"model_spec": spec, "plan": out_plan.to_dict(),
                                                "prune": {"baseline": baseline, "at_start": at_start}})
    result = trainer.fit()
    if not prune.drop:
        lams = {n: b.lam for n, b in pruned_blocks(student)}
        if any(v != 1.0 for v in lams.values()):
            # Only possible for a 1-step run; the schedule ends at 1 otherwise.
            logger.warning("lambda ended at %s, not 1: setting 1.0 and re-saving (the last step ran below 1)", lams)
            set_lam(student, 1.0)
            trainer.save(trainer.history[-1] if trainer.history else {})
        assert all(b.lam == 1.0 for _, b in pruned_blocks(student)), "pruned blocks must end at lambda = 1"
    return PruneResult(plan=out_plan, train=result, baseline=baseline, at_start=at_start)
