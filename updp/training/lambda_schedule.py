"""The λ schedule of progressive subnet training (UPDP step 3).

λ goes from 0 to 1 over the first `ramp_fraction` of the training steps, then stays exactly 1.0
so that the final weights are trained in the exactly mergeable (linear) state:

* `linear`: `λ = p`;
* `cosine`: `λ = (1 - cos(π·p)) / 2` (slow start and end);
* `step`:   `λ = floor(p·levels) / levels` for p < 1 (a staircase of `levels` plateaus);

with `p = min(1, s / R)` the ramp progress of step s and `R` the ramp length in steps. R is
`ceil(ramp_fraction · steps)` clamped to [1, steps - 1], so that at least the last step runs at
λ = 1 whatever the fraction (with `ramp_fraction = 1` the very last step is the first at λ = 1).
`ramp_fraction = 0` is the abrupt ablation (DepthShrinker-style): λ = 1 from the first step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from updp.core.errors import InputError

KINDS = ("linear", "cosine", "step")


@dataclass
class LambdaSchedule:
    """λ as a function of the global training step.

    Attributes:
        kind: 'linear', 'cosine' or 'step'.
        ramp_fraction: fraction of `steps` over which λ rises from 0 to 1 (0: abrupt).
        steps: total training steps.
        levels: plateaus of the 'step' kind.
    """

    kind: str = "linear"
    ramp_fraction: float = 0.5
    steps: int = 1
    levels: int = 4

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown lambda schedule {self.kind!r} (use {', '.join(KINDS)})")
        if not 0.0 <= self.ramp_fraction <= 1.0:
            raise InputError(f"--ramp-fraction must be in [0, 1], got {self.ramp_fraction}")
        if self.steps < 1:
            raise InputError(f"lambda schedule needs >= 1 step, got {self.steps}")
        if self.levels < 1:
            raise InputError(f"step schedule needs >= 1 level, got {self.levels}")

    @property
    def ramp_steps(self) -> int:
        """R: the first step at which λ is exactly 1 (0 for the abrupt schedule)."""
        if self.ramp_fraction == 0.0:
            return 0
        return max(1, min(self.steps - 1, math.ceil(self.ramp_fraction * self.steps)))

    def __call__(self, step: int) -> float:
        r = self.ramp_steps
        if r == 0 or step >= r:
            return 1.0
        p = max(0.0, step / r)
        if self.kind == "linear":
            lam = p
        elif self.kind == "cosine":
            lam = 0.5 * (1.0 - math.cos(math.pi * p))
        else:
            lam = math.floor(p * self.levels) / self.levels
        return min(1.0, max(0.0, lam))

    def describe(self) -> str:
        if self.ramp_steps == 0:
            return "abrupt (lambda = 1 from the first step)"
        extra = f", {self.levels} levels" if self.kind == "step" else ""
        return f"{self.kind} 0->1 over {self.ramp_steps} of {self.steps} steps{extra}, then 1"
