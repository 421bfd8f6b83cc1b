"""UPDP step 1: the supernet. Every candidate block holds its baseline and its pruned form.

Construction. For each candidate block, the registry's handler builds the pruned training form
(`apply_pruning`, λ = 1: the exactly mergeable, linear form). That form *shares* the block's
conv/linear weights, its layer scale and any norm it keeps; only the norms pruning adds (LN → BN,
the end-of-block BN) are new parameters. A `SupernetBlock` then takes the block's place in the
model and holds both forms; its `active` switch says which one runs. Module paths outside the
candidate blocks are unchanged; inside, the forms sit under `<block>.base` and `<block>.pruned`.

Sampling (the supernet training of UPDP; the default, `SubnetSampler`). Each training step runs one
subnet: K candidate blocks pruned, drawn uniformly without replacement, with K drawn uniformly from
`[k_min, k_max]`. K comes from the search target:

* `--target-blocks K`: `k_min = k_max = K` (exactly K, as in the paper's Pk models);
* `--target-speedup S`: from the latency table (`LatencyLUT.blocks_needed`): `k_min` is the fewest
  blocks whose best choice reaches S (the largest predicted savings), and `k_max` the smallest count
  at which *every* choice reaches S, capped at `k_min + spread` (default 2). The subnets the search
  will consider under that target have sizes in this range (fewer blocks cannot reach S; more are
  feasible but prune more than needed), so those are the subnets worth training.

The draw is a pure function of (seed, global step), seeded through numpy's `SeedSequence`: every
DDP rank draws the same subnet at the same step without communication, and a resumed run continues
the exact sequence.

Order of use: the trained baseline → `build_supernet` → `calibrate_supernet` (all candidates pruned
at once, the new BNs' statistics from a few training batches) → `train_supernet` (the shared
`updp.training.trainer.Trainer`, distillation from the frozen baseline) → the search
(`updp.training.search`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from updp.blocks.convert import apply_pruning, calibrate_bn, set_submodule
from updp.blocks.discover import find_blocks
from updp.core.constants import DEFAULT_TORCH_DEVICE
from updp.core.errors import InputError, UnsupportedError
from updp.data import make_loader
from updp.training.device import fast_cpu_math
from updp.training.trainer import Trainer, TrainerConfig

logger = logging.getLogger(__name__)

BASE = "base"
PRUNED = "pruned"


class SupernetBlock(nn.Module):
    """One candidate block in both forms; `active` selects the one that runs.

    Args:
        base: the original block.
        pruned: its pruned training form (a `PrunedBlock` sharing `base`'s parameters).
        index: the block's index in `find_blocks` of the baseline model.
        name: its module path.
    """

    def __init__(self, base: nn.Module, pruned: nn.Module, index: int, name: str) -> None:
        super().__init__()
        self.base = base
        self.pruned = pruned
        self.index = int(index)
        self.name = name
        self.active = BASE

    def set_active(self, form: str) -> None:
        if form not in (BASE, PRUNED):
            raise InputError(f"supernet block form must be {BASE!r} or {PRUNED!r}, got {form!r}")
        self.active = form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pruned(x) if self.active == PRUNED else self.base(x)

    def extra_repr(self) -> str:
        return f"index={self.index}, name={self.name}, active={self.active}"


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP / DataParallel wrapper."""
    return model.module if isinstance(getattr(model, "module", None), nn.Module) else model


def supernet_blocks(model: nn.Module) -> list[SupernetBlock]:
    """The supernet blocks of `model` (unwrapping DDP), in block-index order."""
    blocks = [m for m in _unwrap(model).modules() if isinstance(m, SupernetBlock)]
    return sorted(blocks, key=lambda b: b.index)


def build_supernet(model: nn.Module, candidates: Iterable[int] | None = None,
                   **block_options: Any) -> list[int]:
    """Turn `model` into a supernet in place: each candidate block becomes a `SupernetBlock`.

    Args:
        model: the baseline model (trained weights loaded); modified in place.
        candidates: block indices (`find_blocks`); default every prunable block.
        **block_options: family options for the pruned forms (see `apply_pruning`).

    Returns:
        The candidate indices, sorted.

    Raises:
        InputError: an index out of range, repeated, or the model is already a supernet.
        UnsupportedError: a candidate that is not prunable (the message says why).
    """
    if supernet_blocks(model):
        raise InputError("the model is already a supernet")
    blocks = find_blocks(model)
    if candidates is None:
        cand = [b.index for b in blocks if b.prunable]
        if not cand:
            raise UnsupportedError("the model has no prunable block: nothing to build a supernet from")
    else:
        cand = [int(i) for i in candidates]
        if not cand:
            raise InputError("supernet: no candidate blocks given")
    if len(set(cand)) != len(cand):
        raise InputError(f"supernet: candidate block indices repeat: {cand}")
    for i in cand:
        if not 0 <= i < len(blocks):
            raise InputError(f"block index {i} out of range: the model has {len(blocks)} recognized blocks "
                             f"(0..{len(blocks) - 1})")
        if blocks[i].pruned:
            raise InputError(f"block {i} ({blocks[i].name}) is already pruned: a supernet starts from the "
                             "unpruned baseline")
    cand = sorted(cand)
    originals = {i: model.get_submodule(blocks[i].name) for i in cand}
    apply_pruning(model, cand, lam=1.0, **block_options)  # checks prunability, shares parameters
    for i in cand:
        name = blocks[i].name
        pruned = model.get_submodule(name)
        wrapper = SupernetBlock(originals[i], pruned, i, name)
        wrapper.train(originals[i].training)
        set_submodule(model, name, wrapper)
    logger.info("supernet: %d candidate blocks %s", len(cand), cand)
    return cand


def set_subnet(model: nn.Module, pruned_indices: Iterable[int]) -> tuple[int, ...]:
    """Select a subnet: the blocks at `pruned_indices` run pruned, every other candidate its base form.

    Returns:
        The pruned indices, sorted.

    Raises:
        InputError: an index that is not a candidate block of the supernet.
    """
    blocks = supernet_blocks(model)
    if not blocks:
        raise InputError("set_subnet: the model is not a supernet (no SupernetBlock)")
    chosen = {int(i) for i in pruned_indices}
    unknown = sorted(chosen - {b.index for b in blocks})
    if unknown:
        raise InputError(f"set_subnet: block(s) {unknown} are not candidates of this supernet "
                         f"(candidates: {[b.index for b in blocks]})")
    for b in blocks:
        b.set_active(PRUNED if b.index in chosen else BASE)
    return tuple(sorted(chosen))


def active_subnet(model: nn.Module) -> tuple[int, ...]:
    """Indices of the blocks currently running pruned."""
    return tuple(b.index for b in supernet_blocks(model) if b.active == PRUNED)


def shared_parameter_report(model: nn.Module) -> dict[str, int]:
    """Parameter counts: shared by both forms, only in base forms, only in pruned forms (the new norms)."""
    shared = base_only = pruned_only = 0
    for b in supernet_blocks(model):
        base_ids = {id(p) for p in b.base.parameters()}
        for p in b.pruned.parameters():
            if id(p) in base_ids:
                shared += p.numel()
            else:
                pruned_only += p.numel()
        pruned_ids = {id(p) for p in b.pruned.parameters()}
        base_only += sum(p.numel() for p in b.base.parameters() if id(p) not in pruned_ids)
    return {"shared": shared, "base_only": base_only, "pruned_only": pruned_only}


# ------------------------------------------------------------------ sampling

@dataclass(frozen=True)
class SubnetSampler:
    """Uniform subnet sampling, deterministic per (seed, step) (see the module docstring).

    Attributes:
        candidates: candidate block indices.
        k_min, k_max: range of the number of pruned blocks (inclusive).
        seed: sampling seed.
    """

    candidates: tuple[int, ...]
    k_min: int
    k_max: int
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(sorted(int(i) for i in self.candidates)))
        n = len(self.candidates)
        if not 0 <= self.k_min <= self.k_max <= n:
            raise InputError(f"subnet sampler: need 0 <= k_min <= k_max <= {n} candidates, "
                             f"got k_min={self.k_min}, k_max={self.k_max}")

    def sample(self, step: int) -> tuple[int, ...]:
        """The subnet (sorted pruned indices) of global step `step`."""
        rng = np.random.default_rng([int(self.seed) & 0xFFFFFFFF, int(step), 0x5EED])
        k = int(rng.integers(self.k_min, self.k_max + 1))
        chosen = rng.choice(len(self.candidates), size=k, replace=False)
        return tuple(sorted(self.candidates[int(j)] for j in chosen))

    def describe(self) -> str:
        k = f"K={self.k_min}" if self.k_min == self.k_max else f"K uniform in [{self.k_min}, {self.k_max}]"
        return f"uniform: {k} of {len(self.candidates)} candidates, seed {self.seed}, per (seed, step)"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidates"] = list(self.candidates)
        return d


def k_range_for_target(candidates: Sequence[int], *, target_blocks: int | None = None,
                       target_speedup: float | None = None, lut=None, spread: int = 2) -> tuple[int, int]:
    """(k_min, k_max) of the sampler for a search target (see the module docstring).

    Raises:
        InputError: neither or both targets, K out of range, a speedup target without a latency
            table, or a speedup out of reach.
    """
    n = len(candidates)
    if (target_blocks is None) == (target_speedup is None):
        raise InputError("give exactly one target: a number of blocks or a speedup")
    if target_blocks is not None:
        if not 1 <= target_blocks <= n:
            raise InputError(f"target of {target_blocks} pruned blocks: the supernet has {n} candidates")
        return int(target_blocks), int(target_blocks)
    if lut is None:
        raise InputError("a speedup target needs a latency table")
    if spread < 0:
        raise InputError(f"spread must be >= 0, got {spread}")
    k_min, k_any = lut.blocks_needed(float(target_speedup), candidates)
    k_min = max(k_min, 1)
    return k_min, max(k_min, min(k_any, k_min + spread, n))


# ------------------------------------------------------------------ baseline and calibration

def calibrate_supernet(model: nn.Module, batches: Iterable[Any], max_batches: int | None = None) -> int:
    """Calibrate the new BNs of every pruned form at once (all candidates pruned), before training.

    The inserted end-of-block BNs are set to the identity on the calibration data
    (`identity_init_inserted`), so each pruned form starts as close to its λ = 1 function as the
    data allows. Restores the previously active subnet.
    """
    before = active_subnet(model)
    set_subnet(model, [b.index for b in supernet_blocks(model)])
    try:
        n = calibrate_bn(_unwrap(model), batches, which="pruned", identity_init_inserted=True,
                         max_batches=max_batches)
    finally:
        set_subnet(model, before)
    return n


# ------------------------------------------------------------------ training

@dataclass
class SupernetConfig:
    """Supernet training settings (passed on to `TrainerConfig`, plus the sampling and KD ones).

    The recipe fields have no defaults here: `updp search` owns them
    (`updp.workflows.config.SearchConfig`).

    Attributes:
        epochs: training epochs (0: calibrate only, no training).
        batch_size, lr, weight_decay, warmup_epochs, label_smoothing: optimizer / loss.
            The learning rate is lower than from-scratch training: the weights start trained.
        kd_alpha, kd_temperature: distillation from the frozen baseline (on by default).
        calib_batches: training batches for the initial BN calibration.
        seed: training and sampling seed.
        device: 'auto', 'cpu' or 'cuda'.
        max_steps_per_epoch: cap steps (tests, smoke runs).
        amp: 'off' or 'bf16' (see `TrainerConfig.amp`).
        out: supernet checkpoint path (None: not saved).
        log_jsonl: per-epoch log.
        progress: progress bar.
        resume: resume from `out`.
        spread: speedup targets: k_max - k_min cap (see `k_range_for_target`).
        block_options: family options for the pruned forms.
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float
    kd_alpha: float
    kd_temperature: float
    calib_batches: int
    seed: int = 0
    device: str = DEFAULT_TORCH_DEVICE
    max_steps_per_epoch: int | None = None
    amp: str = "off"
    out: str | None = None
    log_jsonl: str | None = None
    progress: bool = True
    resume: bool = False
    spread: int = 2
    block_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SupernetSummary:
    """What the supernet training did, for the plan and the report.

    `val_acc` is the trainer's final validation accuracy, measured on whichever subnet the last
    training step sampled (so it is a noisy indicator, not a subnet's score).
    """

    candidates: list[int]
    sampler: dict[str, Any]
    sampling_rule: str
    epochs: int
    kd_alpha: float
    kd_temperature: float
    lr: float
    batch_size: int
    calib_batches: int
    params: dict[str, int]
    val_acc: float | None = None
    val_loss: float | None = None
    checkpoint: str | None = None
    seconds: float = 0.0
    seconds_per_epoch: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _calibration_batches(dataset, batch_size: int, n: int, seed: int) -> list[torch.Tensor]:
    out = []
    for x, _ in make_loader(dataset, batch_size, shuffle=True, seed=seed):
        out.append(x)
        if len(out) >= n:
            break
    if not out:
        raise InputError("calibration needs at least one training batch (empty training set)")
    return out


@fast_cpu_math()  # the new BNs' calibration too, not only the training
def train_supernet(model: nn.Module, data, sampler: SubnetSampler, cfg: SupernetConfig, *,
                   teacher: nn.Module | None = None, checkpoint_extra: dict[str, Any] | None = None,
                   echo: Callable[[str], None] | None = None) -> SupernetSummary:
    """Calibrate the pruned forms' new BNs, then train the supernet with per-step subnet sampling.

    Args:
        model: a supernet (`build_supernet`); trained in place.
        data: a `updp.data.DataBundle`.
        sampler: which subnet each global step runs.
        cfg: settings.
        teacher: the frozen baseline for distillation (default: none, unless `cfg.kd_alpha > 0`,
            in which case it is required).
        checkpoint_extra: stored in the supernet checkpoint (e.g. the model spec).
        echo: per-epoch progress lines (see `Trainer`).

    Returns:
        The training summary.
    """
    blocks = supernet_blocks(model)
    if not blocks:
        raise InputError("train_supernet: the model is not a supernet")
    if set(sampler.candidates) - {b.index for b in blocks}:
        raise InputError("train_supernet: the sampler draws blocks that are not candidates of the supernet")
    if cfg.kd_alpha > 0 and teacher is None:
        raise InputError("train_supernet: kd_alpha > 0 needs a teacher (the frozen baseline)")
    t0 = time.perf_counter()
    calib = _calibration_batches(data.train, cfg.batch_size, cfg.calib_batches, cfg.seed)
    calibrate_supernet(model, calib)
    summary = SupernetSummary(candidates=list(sampler.candidates), sampler=sampler.to_dict(),
                              sampling_rule=sampler.describe(), epochs=int(cfg.epochs), kd_alpha=cfg.kd_alpha,
                              kd_temperature=cfg.kd_temperature, lr=cfg.lr, batch_size=cfg.batch_size,
                              calib_batches=len(calib), params=shared_parameter_report(model),
                              checkpoint=cfg.out)
    if cfg.epochs <= 0:
        summary.seconds = time.perf_counter() - t0
        logger.info("supernet: 0 epochs, calibrated only")
        return summary

    def before_step(m: nn.Module, global_step: int, epoch_progress: float) -> None:
        set_subnet(m, sampler.sample(global_step))

    if teacher is not None:
        teacher = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    tcfg = TrainerConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         warmup_epochs=cfg.warmup_epochs, label_smoothing=cfg.label_smoothing,
                         kd_alpha=cfg.kd_alpha if teacher is not None else 0.0, kd_temperature=cfg.kd_temperature,
                         seed=cfg.seed, device=cfg.device, out=cfg.out, resume=cfg.resume, log_jsonl=cfg.log_jsonl,
                         progress=cfg.progress, max_steps_per_epoch=cfg.max_steps_per_epoch, amp=cfg.amp)
    extra = {"supernet": {"candidates": list(sampler.candidates), "sampler": sampler.to_dict(),
                          "block_options": dict(cfg.block_options)}, **(checkpoint_extra or {})}
    # A step trains one subnet: the other form of each block gets no gradient, hence unused
    # parameters under DDP.
    trainer = Trainer(model, data, tcfg, teacher=teacher, before_step=before_step,
                      checkpoint_extra=lambda: extra, find_unused_parameters=True, echo=echo)
    res = trainer.fit()
    summary.val_acc = getattr(res, "val_acc", None)
    summary.val_loss = getattr(res, "val_loss", None)
    summary.history = list(getattr(res, "history", None) or [])
    summary.checkpoint = getattr(res, "checkpoint", None) or cfg.out
    summary.seconds = time.perf_counter() - t0
    train_s = getattr(res, "seconds", None)
    summary.seconds_per_epoch = (train_s if train_s is not None else summary.seconds) / max(cfg.epochs, 1)
    logger.info("supernet trained: %d epochs in %.1fs (%.1fs/epoch)", cfg.epochs, summary.seconds,
                summary.seconds_per_epoch)
    return summary


def frozen_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy with no gradients (the distillation teacher)."""
    t = copy.deepcopy(model).eval()
    for p in t.parameters():
        p.requires_grad_(False)
    return t


__all__ = ["BASE", "PRUNED", "SubnetSampler", "SupernetBlock", "SupernetConfig", "SupernetSummary",
           "active_subnet", "build_supernet", "calibrate_supernet", "frozen_copy", "k_range_for_target",
           "set_subnet", "shared_parameter_report", "supernet_blocks",
           "train_supernet"]
