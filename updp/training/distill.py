"""Knowledge distillation loss for pruned-subnet and supernet training.

`L = (1-α)·CE_ls(student, y) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))`

(Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"). The T² factor keeps the
gradient scale of the soft term independent of T. `CE_ls` is cross-entropy with label smoothing.
The teacher is the frozen baseline: UPDP distils from it so that a block moving from its baseline
function to its linear one is pulled towards what the whole unpruned network computed, not only
towards the (smoothed) labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """`T²·KL(p_teacher/T ‖ p_student/T)`, averaged over the batch."""
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


class DistillationLoss(nn.Module):
    """`(1-α)·CE(label-smoothed) + α·T²·KL`; with α = 0 (or no teacher logits) it is plain CE.

    Args:
        alpha: weight of the distillation term in [0, 1].
        temperature: softmax temperature T > 0.
        label_smoothing: of the cross-entropy term.
    """

    def __init__(self, alpha: float = 0.0, temperature: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"kd alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"kd temperature must be > 0, got {temperature}")
        self.alpha, self.temperature, self.label_smoothing = float(alpha), float(temperature), float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        if self.alpha == 0.0 or teacher_logits is None:
            return ce
        return (1.0 - self.alpha) * ce + self.alpha * kd_kl(logits, teacher_logits, self.temperature)
