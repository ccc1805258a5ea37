"""Target concrete score distillation for diffusion students (TCSM, Zhang et al., ICML 2025,
arXiv 2504.16431), estimated on the teacher's top-k tokens.

The system's DLM loss is L = L_CE + λ·L_TCS + γ·L_BlockAttn; an earlier λ = 0.1 was 100x too weak
and stalled training, hence the default weight 1.0 here.
"""

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
    next_position_mask,
    next_token_targets,
    zero_loss,
)


class TCSDistillObjective(Objective):
    """loss = mean over masked positions of
    KL(softmax(teacher_topk / T) || softmax(student[topk_indices] / T)) · T².

    The teacher sees the unmasked original input, the student the masked one. Positions are the
    ones whose logits predict a masked token: with DLM's token shift, position i - 1 for masked
    token i, which is also where the autoregressive teacher predicts token i, so both logits are
    read at the same position. Without a DLM mask in the batch (DLM weight 0), every position
    with a valid next-token label counts.

    Args:
        top_k: k teacher tokens (the rest of the vocabulary is ignored).
        temperature: T.
    """

    name = "tcs"
    requires_teacher = True

    def __init__(self, top_k: int = 100, temperature: float = 5.0) -> None:
        check_positive("top_k", top_k)
        check_positive("temperature", temperature)
        self.top_k = int(top_k)
        self.temperature = float(temperature)

    def forward(
        self, model_outputs: Any, batch: Batch, teacher_outputs: Any = None
    ) -> ObjectiveOutput:
        teacher_logits = self._teacher(teacher_outputs).logits  # (B, L, V_t)
        logits = model_outputs.logits  # (B, L, V)
        if "dlm_mask" in batch:
            positions = next_position_mask(batch["dlm_mask"])  # (B, L)
        else:
            positions = next_token_targets(batch["labels"]) != IGNORE_INDEX
        if not positions.any():
            return ObjectiveOutput(zero_loss(logits), {"positions": positions.sum().float()})
        student = match_vocab(logits[positions], teacher_logits)  # (N, V_t)
        k = min(self.top_k, teacher_logits.shape[-1])
        teacher_top, indices = teacher_logits[positions].topk(k, dim=-1)  # (N, k)
        kl = distill_kl(student.gather(-1, indices), teacher_top, self.temperature)  # (N,)
        loss = kl.mean()
        metrics = {"kl": loss.detach() / self.temperature**2, "positions": positions.sum().float()}
        return ObjectiveOutput(loss, metrics)
