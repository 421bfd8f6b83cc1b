"""Progressive subnet training (UPDP step 3) and its ablations.

    result = train_progressive(baseline, data, [1, 3], selection_rule="manual", model_spec=spec,
                               train=trainer_config, method=ProgressiveConfig(...))

Order: the trained baseline (its checkpoint resolved by `updp.workflows.prune`) → keep a frozen
copy as the teacher → convert the chosen blocks to their pruned training form at λ = 0 (the
baseline function, exactly) → calibrate the new BatchNorms on training data → train while
`LambdaSchedule` moves λ from 0 to 1 → finish at λ = 1 exactly (the mergeable state) → write a
checkpoint carrying its `PrunePlan`, which `updp export` picks up.

The recipe fields of `ProgressiveConfig` have no defaults here: `updp prune` owns them
(`updp.workflows.config.PruneConfig`).

Methods (`method`), all sharing the block choice, the epochs, the data, distillation and the
export path, so that only the way a block becomes linear differs:

* `updp`: λ rises from 0 to 1 over the ramp (`LambdaSchedule`), then stays 1.
* `abrupt`: λ = 1 from the first step (DepthShrinker-style direct activation removal).
* `layerfold`: Layer-Folding's learned slopes, penalized towards 1 and forced to 1 at the end of
  the ramp (`updp.training.layerfold`); the plan records `block_options["layerfold_alphas"]`.
* `drop`: the chosen blocks are removed entirely, each replaced by its shortcut (`nn.Identity`).
  Only blocks with an identity shortcut can be dropped; the plan records `block_options["drop"]`
  so that export and eval rebuild the same shallower model.

`kd=False` (no distillation) combines with any of them.

Why distillation is on by default (`updp prune`) with α = 0.5: a pruned block starts as the baseline function
and the teacher *is* the baseline, so the soft targets pull the whole network back towards what
it computed before the block became linear, which labels alone (especially on small datasets) do
not; 0.5 weighs that equally with the labels, the usual Hinton-style balance, and keeps the
student free to improve on the teacher's mistakes.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from updp.accuracy import module_accuracy
from updp.blocks.convert import apply_pruning, calibrate_bn, drop_blocks, fold_alphas, pruned_blocks, set_lam
from updp.blocks.discover import find_blocks
from updp.blocks.plan import DROP_OPTION, LAYERFOLD_OPTION, METHOD_OPTIONS, PrunePlan
from updp.core.constants import PRUNE_METHODS
from updp.core.errors import InputError
from updp.training.device import fast_cpu_math, resolve_device
from updp.training.lambda_schedule import LambdaSchedule
from updp.training.layerfold import LayerFold
from updp.training.trainer import Trainer, TrainerConfig, TrainResult, format_history

logger = logging.getLogger(__name__)


@dataclass
class ProgressiveConfig:
    """How the chosen blocks are pruned and trained.

    Attributes:
        schedule: λ schedule kind: 'linear', 'cosine' or 'step'.
        ramp_fraction: fraction of the steps over which λ rises 0 → 1 (then 1).
        kd: distil from the frozen baseline.
        kd_alpha: weight of the distillation term.
        kd_temperature: its softmax temperature.
        calib_batches: batches for calibrating the new BatchNorms before training.
        method: 'updp', 'abrupt', 'layerfold' or 'drop' (see the module docstring).
        layerfold_penalty: Layer-Folding's λ_LF, the weight of `Σ |1 − α²|`.
        layerfold_alpha_lr: the peak learning rate of Layer-Folding's α's.
        block_options: family options for `apply_pruning` (`swap_at_start`, `prune_norm1`).
    """

    schedule: str
    ramp_fraction: float
    kd: bool
    kd_alpha: float
    kd_temperature: float
    calib_batches: int
    method: str
    layerfold_penalty: float
    layerfold_alpha_lr: float
    block_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in PRUNE_METHODS:
            raise InputError(f"unknown pruning method {self.method!r} (use {', '.join(PRUNE_METHODS)})")
        marked = sorted(set(self.block_options) & set(METHOD_OPTIONS))
        if marked:
            raise InputError(f"block_options {marked} mark a method: use ProgressiveConfig.method")
        if self.layerfold_alpha_lr <= 0:
            raise InputError(f"--layerfold-alpha-lr must be > 0, got {self.layerfold_alpha_lr}")

    @property
    def drop(self) -> bool:
        return self.method == "drop"

    @property
    def abrupt(self) -> bool:
        return self.method == "abrupt"

    def describe(self) -> str:
        return {"drop": "drop (blocks replaced by their identity shortcut)",
                "abrupt": "abrupt (lambda = 1 from the start)",
                "layerfold": f"layerfold (learned alphas, penalty {self.layerfold_penalty} |1 - alpha^2|, alpha lr "
                             f"{self.layerfold_alpha_lr}, forced to 1 at the end of the ramp)",
                "updp": "updp progressive"}[self.method]


@dataclass
class PruneResult:
    """What progressive training did.

    Attributes:
        plan: the plan written into the checkpoint.
        train: the training result (final val metrics, history, checkpoint path).
        baseline: val metrics of the baseline before pruning.
        at_start: val metrics right after conversion (and BN calibration), before training.
        method_stats: what the method itself did (Layer-Folding: the α's mean when they were
            forced to 1, None when a resumed run had folded them already).
    """

    plan: PrunePlan
    train: TrainResult
    baseline: dict
    at_start: dict
    method_stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict(), "baseline": self.baseline, "at_start": self.at_start,
                "final": {"acc": self.train.val_acc, "loss": self.train.val_loss},
                "checkpoint": self.train.checkpoint, "seconds": self.train.seconds, "history": self.train.history,
                "method_stats": self.method_stats}

    def format_summary(self) -> str:
        p = self.plan
        return "\n".join([
            f"wrote {self.train.checkpoint}",
            f"  {p.model}: pruned blocks ({p.selection_rule}): "
            + ", ".join(f"{i} {n}" for i, n in zip(p.blocks, p.block_names)),
            f"  {p.notes}",
            f"  val acc: baseline {self.baseline['acc']:.4f}, after conversion {self.at_start['acc']:.4f}",
            *([f"  layerfold: the alphas' mean was {self.method_stats['alpha_mean_at_fold']:.3f} when forced to 1"]
              if self.method_stats.get("alpha_mean_at_fold") is not None else []),
            *format_history(self.train.history),
            f"  final val acc {self.train.val_acc:.4f} (lambda = 1) in {self.train.seconds:.1f} s",
            f"  next: updp export --checkpoint {self.train.checkpoint} --out pruned.onnx"])


def _convert(student: nn.Module, blocks: list[int], data, train: TrainerConfig,
             method: ProgressiveConfig) -> tuple[LambdaSchedule | None, LayerFold | None]:
    """Drop, or convert at λ = 0 (abrupt: 1) and calibrate the new BNs.

    Returns the λ schedule (None: drop) and, for Layer-Folding, its α's (which then replace the
    schedule's λ until the end of its ramp).
    """
    if method.drop:
        drop_blocks(student, blocks)
        return None, None
    apply_pruning(student, blocks, lam=1.0 if method.abrupt else 0.0, **method.block_options)
    loader = torch.utils.data.DataLoader(data.train, batch_size=train.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(train.seed))
    n = calibrate_bn(student, loader, which="pruned", max_batches=method.calib_batches)
    logger.info("calibrated the new BatchNorms on %d batches", n)
    schedule = LambdaSchedule(kind=method.schedule, ramp_fraction=0.0 if method.abrupt else method.ramp_fraction,
                              steps=Trainer.count_steps(data, train))
    folding = None
    if method.method == "layerfold":
        folding = LayerFold.attach(student, penalty=method.layerfold_penalty, fold_step=schedule.ramp_steps)
    return schedule, folding


def _final_plan(blocks: list[int], names: list[str], *, selection_rule: str, model_spec: dict,
                method: ProgressiveConfig, schedule: LambdaSchedule | None, data, train: TrainerConfig,
                baseline_acc: float) -> PrunePlan:
    kd_note = f"kd alpha={method.kd_alpha} T={method.kd_temperature}" if method.kd else "no kd"
    notes = (f"method: {method.describe()}; schedule: {schedule.describe() if schedule else 'n/a'}; {kd_note}; "
             f"data: {data.spec}; epochs: {train.epochs}; baseline val acc {baseline_acc:.4f}")
    options = dict(method.block_options)
    if method.drop:
        options[DROP_OPTION] = True
    if method.method == "layerfold":
        options[LAYERFOLD_OPTION] = True
    return PrunePlan(model=model_spec["model"], input_size=tuple(model_spec["input_size"]), blocks=blocks,
                     block_names=names, lam=1.0, selection_rule=selection_rule,
                     model_kwargs=dict(model_spec.get("kwargs") or {}), num_classes=model_spec.get("num_classes"),
                     block_options=options, notes=notes)


@fast_cpu_math()
def train_progressive(student: nn.Module, data, blocks: list[int], *, selection_rule: str, model_spec: dict,
                      train: TrainerConfig, method: ProgressiveConfig,
                      echo: Callable[[str], None] | None = None) -> PruneResult:
    """Progressive subnet training of a trained baseline (see the module docstring).

    Args:
        student: the trained, unpruned baseline; converted and trained in place.
        data: the `DataBundle` (already checked against the model: input size, class count).
        blocks: the block indices to prune (checked by the caller's plan).
        selection_rule: how they were chosen (recorded in the plan).
        model_spec: the baseline's spec record (written into the checkpoint and the plan).
        train: the training loop settings; `train.out` receives the pruned checkpoint.
        method: λ schedule, distillation, ablation.
        echo: per-epoch progress lines (see `Trainer`).

    Raises:
        UnsupportedError: a block that cannot be pruned (or, with drop, dropped).
    """
    blocks = sorted(blocks)
    names = [find_blocks(student)[i].name for i in blocks]
    student.to(resolve_device(train.device))
    baseline = module_accuracy(student, data.val, batch_size=256)
    teacher = copy.deepcopy(student).eval() if method.kd else None
    schedule, folding = _convert(student, blocks, data, train, method)
    at_start = module_accuracy(student, data.val, batch_size=256)
    logger.info("val acc: baseline %.4f, after conversion %.4f", baseline["acc"], at_start["acc"])
    plan = _final_plan(blocks, names, selection_rule=selection_rule, model_spec=model_spec, method=method,
                       schedule=schedule, data=data, train=train, baseline_acc=baseline["acc"])

    def before_step(m: nn.Module, step: int, progress: float) -> None:
        if folding is not None:
            folding.before_step(m, step)
        elif schedule is not None:
            set_lam(m, schedule(step))

    cfg = dataclasses.replace(train, kd_alpha=method.kd_alpha if method.kd else 0.0,
                              kd_temperature=method.kd_temperature)
    trainer = Trainer(student, data, cfg, teacher=teacher, before_step=before_step, echo=echo,
                      checkpoint_extra=lambda: {"model_spec": model_spec, "plan": plan.to_dict(),
                                                "prune": {"baseline": baseline, "at_start": at_start}},
                      # Parameters leave the forward, so DDP must not wait for their gradients: a
                      # blend computes only the LayerNorm at λ = 0 and only the new BatchNorm at
                      # λ = 1 (every step of abrupt), and folded α's leave it too.
                      find_unused_parameters=not method.drop,
                      extra_loss=folding.loss if folding is not None else None,
                      lr_for=(lambda name: method.layerfold_alpha_lr if folding.owns(name) else None)
                      if folding is not None else None)
    result = trainer.fit()
    if not method.drop:
        lams = {n: b.lam for n, b in pruned_blocks(student)}
        if any(v != 1.0 for v in lams.values()):
            # Only possible for a 1-step run; the schedule ends at 1 otherwise.
            logger.warning("lambda ended at %s, not 1: setting 1.0 and re-saving (the last step ran below 1)", lams)
            fold_alphas(student)
            trainer.save(trainer.history[-1] if trainer.history else {})
        if any(b.lam != 1.0 for _, b in pruned_blocks(student)):
            raise RuntimeError("pruned blocks must end at lambda = 1")
    stats = {"alpha_mean_at_fold": folding.mean_at_fold} if folding is not None else {}
    return PruneResult(plan=plan, train=result, baseline=baseline, at_start=at_start, method_stats=stats)
