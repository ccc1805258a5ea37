"""Next-token cross-entropy: the continued pre-training loss (BitDistill stage 2,
arXiv 2510.13998)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from wrinklefree.objectives.base import (
    IGNORE_INDEX,
    Batch,
    Objective,
    ObjectiveOutput,
    next_token_targets,
    zero_loss,
)


class ContinuePretrainObjective(Objective):
    """Shifted causal CE against ``labels`` (the original tokens; -100 and padding ignored).

    loss = mean over valid positions i of CE(logits_i, labels_{i+1}), with optional label
    smoothing (Szegedy et al. 2016): (1 - ε)·NLL + ε·mean_v(-log p_v). The reported perplexity is
    exp(NLL) without smoothing. When the DLM objective is active the model sees masked input and
    this is the loss of predicting the next original token from that input.

    Args:
        label_smoothing: ε in [0, 1).
    """

    name = "continue_pretrain"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(
        self, model_outputs: Any, batch: Batch, teacher_outputs: Any = None
    ) -> ObjectiveOutput:
        logits = model_outputs.logits  # (B, L, V)
        targets = next_token_targets(batch["labels"])  # (B, L)
        valid = targets != IGNORE_INDEX
        if not valid.any():
            zero = zero_loss(logits)
            return ObjectiveOutput(zero, {"tokens": zero.detach()})
        rows = logits[valid].float()  # (N, V)
        nll = F.cross_entropy(rows, targets[valid])  # Eq.: -1/N Σ log p(x_{i+1} | x_≤i)
        loss = nll
        if self.label_smoothing > 0:
            loss = F.cross_entropy(rows, targets[valid], label_smoothing=self.label_smoothing)
        nll = nll.detach()
        metrics = {
            "nll": nll,
            "perplexity": torch.exp(nll),
            "tokens": valid.sum().to(nll.dtype),
        }
        return ObjectiveOutput(loss, metrics)
