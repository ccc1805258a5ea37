"""Target concrete score distillation for diffusion students (TCSM, Zhang et al., ICML 2025,
arXiv 2504.16431), estimated on the teacher's top-k tokens.

The system's DLM loss is L = L_CE + λ·L_TCS + γ·L_BlockAttn; an earlier λ = 0.1 was 100x too weak
and stalled training, hence the default weight 1.0 here. How this relates to TCSM's concrete-score
matching, and what the top-k truncation leaves unconstrained: docs/objectives.md.
"""

from __future__ import annotations

from typing import Any

import torch

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
from wrinklefree.objectives.dlm import noisy_logits


class TCSDistillObjective(Objective):
    """loss = mean over masked positions of
    KL(softmax(teacher_topk / T) || softmax(student[topk_indices] / T)) · T².

    The teacher runs on the clean window (causal, its native AR forward); the student is read in
    its noisy views (``dlm_logits``, rows b and b + B = window b with complementary masks) at the
    positions whose logits predict a masked token: with DLM's token shift, position i - 1 for
    masked token i, which is also where the autoregressive teacher predicts token i from the
    clean prefix, so both distributions are over the same (shifted) target. Without a DLM mask
    in the batch (DLM weight 0) the clean view is read at every valid next-token position.

    Args:
        top_k: k teacher tokens (the rest of the vocabulary is ignored).
        temperature: T.
    """

    name = "tcs"
    requires_teacher = True
    reads_noisy_view = True

    def __init__(self, top_k: int = 100, temperature: float = 5.0) -> None:
        check_positive("top_k", top_k)
        check_positive("temperature", temperature)
        self.top_k = int(top_k)
        self.temperature = float(temperature)

    def forward(
        self, model_outputs: Any, batch: Batch, teacher_outputs: Any = None
    ) -> ObjectiveOutput:
        teacher_logits = self._teacher(teacher_outputs).logits  # (B, L, V_t) clean window
        if "dlm_mask" in batch:  # the noisy views: rows b and b + B are window b
            logits = noisy_logits(model_outputs)  # (2B, L, V)
            copies = logits.shape[0] // teacher_logits.shape[0]
            teacher_logits = teacher_logits.repeat(copies, 1, 1)  # (2B, L, V_t)
            positions = next_position_mask(batch["dlm_mask"])  # (2B, L) i-1 for masked i
        else:
            logits = model_outputs.logits  # (B, L, V)
            positions = next_token_targets(batch["labels"]) != IGNORE_INDEX
        return self._topk_kl(logits, teacher_logits, positions)

    def _topk_kl(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, positions: torch.Tensor
    ) -> ObjectiveOutput:
        """Mean over ``positions`` (N rows) of the top-k KL·T²; logits (B, L, V), (B, L, V_t)."""
        if not positions.any():
            return ObjectiveOutput(zero_loss(logits), {"positions": positions.sum().float()})
        student = match_vocab(logits[positions], teacher_logits)  # (N, V_t)
        k = min(self.top_k, teacher_logits.shape[-1])
        teacher_top, indices = teacher_logits[positions].topk(k, dim=-1)  # (N, k)
        # Hinton et al. 2015 KD on the teacher's top-k support (TCSM, arXiv 2504.16431, Sec. 4)
        kl = distill_kl(student.gather(-1, indices), teacher_top, self.temperature)  # (N,)
        loss = kl.mean()
        metrics = {"kl": loss.detach() / self.temperature**2, "positions": positions.sum().float()}
        return ObjectiveOutput(loss, metrics)
