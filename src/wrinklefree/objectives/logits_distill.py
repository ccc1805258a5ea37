"""Logits distillation: KL from the full-precision teacher's next-token distribution
(BitDistill, arXiv 2510.13998, Eq. 8-9; Hinton et al. 2015)."""

from __future__ import annotations

from typing import Any

from wrinklefree.objectives.base import (
    IGNORE_INDEX,
    Batch,
    Objective,
    ObjectiveOutput,
    check_positive,
    distill_kl,
    match_vocab,
    next_token_targets,
    zero_loss,
)


class LogitsDistillObjective(Objective):
    """loss = mean over valid positions of KL(softmax(z_T/T) || softmax(z_S/T)) · T²
    (with ``reverse`` = r: (1-r)·that + r·KL(student || teacher)·T²).

    Positions follow the CE's shift convention: position i counts when ``labels[i + 1]`` is not
    -100 (teacher and student logits are compared at the same position, both predicting token
    i + 1). The teacher sees the unmasked input. Student logits beyond the teacher's vocabulary
    (mask token, padding) are dropped.

    Args:
        temperature: T (BitDistill uses 5).
        reverse: the share r of the reverse KL, in [0, 1] (0: the forward KL of BitDistill).
    """

    name = "logits_distill"
    requires_teacher = True

    def __init__(self, temperature: float = 5.0, reverse: float = 0.0) -> None:
        check_positive("temperature", temperature)
        if not 0.0 <= reverse <= 1.0:
            raise ValueError(f"logits_distill.reverse must be in [0, 1] (the share of the reverse "
                             f"KL), got {reverse}")
        self.temperature = float(temperature)
        self.reverse = float(reverse)

    def forward(
        self, model_outputs: Any, batch: Batch, teacher_outputs: Any = None
    ) -> ObjectiveOutput:
        teacher_logits = self._teacher(teacher_outputs).logits  # (B, L, V_t)
        logits = model_outputs.logits  # (B, L, V)
        valid = next_token_targets(batch["labels"]) != IGNORE_INDEX  # (B, L)
        if not valid.any():
            return ObjectiveOutput(zero_loss(logits))
        student = match_vocab(logits[valid], teacher_logits)  # (N, V_t)
        kl = distill_kl(student, teacher_logits[valid], self.temperature, self.reverse)  # (N,)
        loss = kl.mean()
        return ObjectiveOutput(loss, {"kl": loss.detach() / self.temperature**2})
