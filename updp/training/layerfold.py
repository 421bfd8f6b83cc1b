"""Layer-Folding (Ben Dror et al., 2021) as a pruning method beside UPDP's progressive λ.

Layer-Folding learns, for each removable activation, a slope α: the activation becomes
`α·x + act(x) − α·act(x)` (α = 0 the original, α = 1 the identity), and a penalty
`λ_LF · Σ |1 − α²|` in the loss pushes the α's towards 1. Activations whose α reaches 1 are linear
and their layers fold together. In updp the blocks to prune are chosen beforehand (the same
choice for every method), so at the end of the penalty phase every α of the chosen blocks is
forced to 1 and the blocks merge like any λ = 1 block. Only the way a block becomes linear
differs from UPDP: learned slopes under a penalty instead of a λ ramp.

Where the paper and its code leave a choice to updp, and why:

* **Which parts get an α.** A block's pruned form in updp has, besides its removed activations,
  the LayerNorm → BatchNorm blend and the inserted end BatchNorm + activation (see
  `updp.blocks.modules`). Each of these λ-modules gets its own α under the same penalty, i.e. is
  treated as Layer-Folding treats an activation; a method that swapped the norms abruptly would
  measure DepthShrinker's weakness, not Layer-Folding's.
* **Initialisation: α = 0**, as the authors' code does: training starts from the baseline function.
  The penalty's gradient `−2α` vanishes at 0, so the first moves of α come from the task loss.
* **λ_LF = 0.25**, the authors' default (`--layerfold-penalty`).
* **α's learning rate: 0.05** (`--layerfold-alpha-lr`), in their own AdamW group without weight
  decay. The authors train 100 epochs with SGD at 0.001; with AdamW an α moves about one learning
  rate per step, and updp's budgets are a few hundred steps, so at the weights' learning rate (1e-3)
  an α could not move more than a few tenths before it is forced: the method would collapse into
  the abrupt one. 0.05 lets an α cross [0, 1] within the penalty phase of a one-epoch run.
* **Range: α is clamped to [0, 1]** before every step (the code clips at 0 only; above 1 the blend
  extrapolates past the identity, which no merged block computes).
* **When α is forced: at the end of the ramp** (`ramp_fraction` of the steps), where UPDP's λ
  reaches 1, so both methods spend the same steps in the final linear form. With
  `ramp_fraction = 0` this is the abrupt method with the α's never used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from updp.blocks.convert import add_alphas, fold_alphas
from updp.blocks.modules import LambdaModule
from updp.core.errors import InputError

logger = logging.getLogger(__name__)

def folding_penalty(alphas: Sequence[torch.Tensor]) -> torch.Tensor:
    """`Σ |1 − α²|`: zero exactly when every α is 1 (or −1, excluded by the clamp to [0, 1])."""
    if not alphas:
        raise InputError("the Layer-Folding penalty needs at least one alpha")
    return torch.stack([(1.0 - a * a).abs() for a in alphas]).sum()


@dataclass
class LayerFold:
    """The α's of one run, their penalty and the step at which they are forced to 1.

    Attributes:
        modules: the λ-modules that carry an α (from `add_alphas`).
        names: the α's parameter names in the model (their own optimizer group).
        penalty: λ_LF, the weight of `folding_penalty` in the loss.
        fold_step: the first step that runs in the folded (λ = 1) form.
        mean_at_fold: the α's mean just before they were forced (None until this run folds them).
    """

    modules: list[LambdaModule]
    names: frozenset[str]
    penalty: float
    fold_step: int
    mean_at_fold: float | None = None

    @classmethod
    def attach(cls, model: nn.Module, *, penalty: float, fold_step: int) -> LayerFold:
        """Add α's to every λ-module of `model`'s pruned blocks (at their λ, 0 for a fresh run)."""
        if penalty < 0:
            raise InputError(f"--layerfold-penalty must be >= 0, got {penalty}")
        alphas = {id(a) for a in add_alphas(model)}
        if not alphas:
            raise InputError("Layer-Folding: the model has no pruned blocks to give an alpha")
        modules = [m for m in model.modules() if isinstance(m, LambdaModule) and id(m.alpha) in alphas]
        names = frozenset(n for n, p in model.named_parameters() if id(p) in alphas)
        return cls(modules=modules, names=names, penalty=penalty, fold_step=fold_step)

    @property
    def alphas(self) -> list[nn.Parameter]:
        return [m.alpha for m in self.modules]

    @property
    def folded(self) -> bool:
        """Whether the α's are forced: their blocks are at λ = 1 (set by `fold_alphas`, or by a
        checkpoint written after the fold)."""
        return not any(m.learning_alpha for m in self.modules)

    def before_step(self, model: nn.Module, step: int) -> None:
        """Clamp the α's to [0, 1]; from `fold_step` on, force them to 1 (idempotent, so that a
        resumed run folds at its first step past the fold)."""
        if step >= self.fold_step:
            if not self.folded:
                self.mean_at_fold = self.mean_alpha()
                n = fold_alphas(model)
                logger.info("Layer-Folding: %d alphas forced to 1 at step %d (their mean was %.3f)", n, step,
                            self.mean_at_fold)
            return
        with torch.no_grad():
            for a in self.alphas:
                a.clamp_(0.0, 1.0)

    def loss(self, model: nn.Module) -> torch.Tensor | None:
        """`λ_LF · Σ |1 − α²|` while the α's learn; None once they are folded (or λ_LF = 0)."""
        if self.penalty == 0 or self.folded:
            return None
        return self.penalty * folding_penalty(self.alphas)

    def mean_alpha(self) -> float:
        return float(torch.stack([a.detach().clamp(0.0, 1.0) for a in self.alphas]).mean())

    def owns(self, name: str) -> bool:
        """Whether the parameter `name` (of `model.named_parameters()`) is one of the α's."""
        return name in self.names


__all__ = ["LayerFold", "folding_penalty"]
