"""The optimizer's learning-rate schedule and weight-decay groups (every training run uses these).

Learning rate: linear warm-up, then cosine to 0, per optimizer step. Weight decay only on
weights with ndim >= 2: norm affines, biases and layer scales are not decayed, because decaying a
layer scale or a BN weight towards 0 shrinks a residual branch for no reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear warm-up `(s+1)/warmup` for s < warmup, then cosine from 1 to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    rest = max(1, total - warmup)
    p = min(1.0, (step - warmup) / rest)
    return 0.5 * (1.0 + math.cos(math.pi * p))


class WarmupCosine:
    """Picklable LR lambda (LambdaLR saves a callable object's __dict__ in its state dict)."""

    def __init__(self, total: int, warmup: int) -> None:
        self.total, self.warmup = total, warmup

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.total, self.warmup)


def param_groups(model: nn.Module, weight_decay: float,
                 lr_for: Callable[[str], float | None] | None = None) -> list[dict]:
    """Decay weights with ndim ≥ 2; not norm affines, biases or layer scales (see the module docstring).

    Parameters for which `lr_for(name)` gives a learning rate go into their own groups (one per
    rate, no weight decay), e.g. Layer-Folding's α's.
    """
    decay, no_decay = [], []
    own: dict[float, list] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        lr = lr_for(name) if lr_for is not None else None
        if lr is not None:
            own.setdefault(float(lr), []).append(p)
        else:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    groups += [{"params": ps, "weight_decay": 0.0, "lr": lr} for lr, ps in own.items()]
    return groups
