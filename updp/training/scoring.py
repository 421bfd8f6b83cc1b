"""Scoring subnets on held-out data: the supernet's holdout accuracy with a subnet active, after
recalibrating its BatchNorm statistics (see `updp.training.search` for why), sharded over DDP ranks.

Under torchrun the work is split and the results are exact: each rank recalibrates on its share of
the fixed calibration batches and the BN statistics are pooled by batch count
(`pool_running_stats`, an identity tested in float64), and each rank scores its share of the
holdout batches and the correct counts are summed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from updp.blocks.convert import calibrate_bn, target_batchnorms
from updp.core.distributed import group_info
from updp.core.errors import InputError
from updp.data import make_loader
from updp.models.fast_compute import fast_compute
from updp.training.supernet import active_subnet, set_subnet


def _bn_state(model: nn.Module) -> dict[str, tuple[torch.Tensor, ...]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and m.running_mean is not None:
            out[name] = (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
    return out


def _restore_bn(model: nn.Module, state: dict[str, tuple[torch.Tensor, ...]]) -> None:
    with torch.no_grad():
        for name, m in model.named_modules():
            if name in state:
                mean, var, nbt = state[name]
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(nbt)


def pool_running_stats(batch_counts: Sequence[int], stats: torch.Tensor) -> torch.Tensor:
    """BN running statistics over all calibration batches, from those of disjoint shards of them.

    `calibrate_bn` (momentum=None) leaves each BN's running mean and variance at the plain average
    of the per-batch means and (unbiased) variances. Shard r of the batches, with n_r batches,
    holds the average over its own batches, so the average over all of them is
    Σ_r n_r · stats_r / Σ_r n_r: exact, whatever the split. Computed in float64.

    Args:
        batch_counts: n_r, the batches each shard calibrated on (≥ 0, not all 0).
        stats: (shards, ...) the shards' running statistics, stacked.

    Returns:
        The pooled statistics, shaped like one shard's, in `stats`'s dtype.
    """
    counts = torch.as_tensor(list(batch_counts), dtype=torch.float64)
    if counts.numel() != stats.shape[0] or bool((counts < 0).any()) or float(counts.sum()) <= 0:
        raise ValueError(f"batch counts {list(batch_counts)} do not fit {stats.shape[0]} shards")
    weights = (counts / counts.sum()).reshape(-1, *([1] * (stats.dim() - 1)))
    return (weights * stats.to(torch.float64)).sum(0).to(stats.dtype)


class SubnetScorer:
    """Holdout accuracy of a supernet's subnet after BN recalibration (see the module docstring).

    Under torchrun (an initialized process group) the work is sharded: rank r calibrates on
    calibration batches r, r + world, … and the BN statistics are pooled exactly
    (`pool_running_stats`); it scores holdout batches r, r + world, … and the correct counts are
    summed. Every rank gets the same accuracy, so every rank's search takes the same path.

    Args:
        model: the supernet.
        calib_batches: fixed input batches for the BN recalibration (the same for every candidate).
        holdout: (inputs, labels) batches of the holdout split.
        recalibrate: 'all' BN-type modules (default), 'pruned' (the BNs added by pruning) or 'none'.
        device: where to run (default: the model's device).
    """

    def __init__(self, model: nn.Module, calib_batches: Sequence[torch.Tensor],
                 holdout: Sequence[tuple[torch.Tensor, torch.Tensor]], *, recalibrate: str = "all",
                 device: torch.device | str | None = None) -> None:
        if recalibrate not in ("all", "pruned", "none"):
            raise InputError(f"recalibrate must be 'all', 'pruned' or 'none', got {recalibrate!r}")
        if recalibrate != "none" and not calib_batches:
            raise InputError("BN recalibration needs at least one calibration batch")
        if not holdout:
            raise InputError("the holdout split is empty: nothing to score subnets on")
        p = next(model.parameters())
        self.device = torch.device(device) if device is not None else p.device
        self.model = model.to(self.device).eval()
        self.rank, self.world = group_info()
        # Shard the calibration only when every rank gets a batch (calibrate_bn needs one).
        self.calib_counts = ([len(calib_batches[r::self.world]) for r in range(self.world)]
                             if self.world > 1 and len(calib_batches) >= self.world else None)
        mine = calib_batches[self.rank::self.world] if self.calib_counts else calib_batches
        self.calib = [x.to(self.device) for x in mine]
        self.holdout = [(x.to(self.device), y.to(self.device)) for x, y in holdout[self.rank::self.world]]
        self.recalibrate = recalibrate
        self.n_scored = 0
        self.seconds = 0.0

    @torch.no_grad()
    def accuracy(self) -> float:
        """Holdout accuracy of the model as it is (eval mode)."""
        self.model.eval()
        correct = n = 0
        for x, y in self.holdout:
            logits = self.model(x)
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            correct += int((logits.argmax(1) == y).sum())
            n += int(y.numel())
        if self.world > 1:
            counts = torch.tensor([correct, n], dtype=torch.int64, device=self.device)
            dist.all_reduce(counts)
            correct, n = (int(v) for v in counts.tolist())
        return correct / n

    def _pool_calibration(self) -> None:
        """Every rank's recalibrated BNs get the statistics over all ranks' batches."""
        bns = target_batchnorms(self.model, self.recalibrate)
        if not bns:
            return
        flat = torch.cat([t for bn in bns for t in (bn.running_mean, bn.running_var)])
        gathered = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(gathered, flat)
        pooled = pool_running_stats(self.calib_counts, torch.stack(gathered))
        offset = 0
        with torch.no_grad():
            for bn in bns:
                for t in (bn.running_mean, bn.running_var):
                    t.copy_(pooled[offset:offset + t.numel()].view_as(t))
                    offset += t.numel()
                bn.num_batches_tracked.fill_(sum(self.calib_counts))

    def __call__(self, blocks: Sequence[int]) -> float:
        t0 = time.perf_counter()
        before = active_subnet(self.model)
        saved = _bn_state(self.model)
        try:
            set_subnet(self.model, blocks)
            with fast_compute(self.model):
                if self.recalibrate != "none":
                    # identity_init_inserted=False: the inserted BNs' affines are trained weights now.
                    calibrate_bn(self.model, self.calib, which=self.recalibrate, identity_init_inserted=False)
                    if self.calib_counts:
                        self._pool_calibration()
                return self.accuracy()
        finally:
            _restore_bn(self.model, saved)
            set_subnet(self.model, before)
            self.n_scored += 1
            self.seconds += time.perf_counter() - t0


def fixed_batches(dataset, batch_size: int, n: int | None, *, shuffle: bool, seed: int) -> list:
    """The first `n` batches (all with None) of a seeded loader, materialized: the same for every
    candidate, so that candidates are compared on identical data."""
    out = []
    for batch in make_loader(dataset, batch_size, shuffle=shuffle, seed=seed):
        out.append(batch)
        if n is not None and len(out) >= n:
            break
    return out



__all__ = ["SubnetScorer", "fixed_batches", "pool_running_stats"]
