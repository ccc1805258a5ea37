"""Hidden-state alignment with the teacher, layer by layer (feature distillation: FitNets, arXiv
1412.6550; TinyBERT's hidden-state loss, arXiv 1909.10351), and its special case used to train
low-rank corrections (LRC, arXiv 2412.07902)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from wrinklefree.objectives.base import Batch, Objective, ObjectiveOutput, masked_mean, token_mask

LossType = Literal["mse", "mse_normalized", "mse_per_token", "cosine"]
LayerWeights = Literal["uniform", "progressive"]


def hidden_state_loss(
    student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor, loss_type: LossType
) -> torch.Tensor:
    """Distance between hidden states over valid tokens; student/teacher (B, L, H), valid (B, L).

    mse: mean over tokens and channels of (s - t)²; mse_normalized: Σ||s - t||² / Σ||t||² over
    the valid tokens (the layer's relative squared error: scale-free, and unlike a per-token ratio
    not blown up by tokens whose teacher state is near 0); mse_per_token: mean over valid tokens of
    ||s - t||² / ||t||² (every token weighs the same, so a few tokens carrying massive activations
    do not dominate; for residual-stream states, never near 0); cosine: mean of 1 - cos(s, t).
    """
    s, t = student.float(), teacher.float()
    if loss_type == "mse":
        return masked_mean((s - t).pow(2).mean(-1), valid)
    if loss_type == "mse_per_token":  # relative error per token, then averaged (no paper: ours)
        per_token = (s - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp(min=1e-12)  # (B, L)
        return masked_mean(per_token, valid)
    if loss_type == "mse_normalized":
        error = masked_mean((s - t).pow(2).sum(-1), valid)
        return error / masked_mean(t.pow(2).sum(-1), valid).clamp(min=1e-12)
    return masked_mean(1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8), valid)


class LayerwiseDistillObjective(Objective):
    """loss = Σ_l w_l · d(h_l^student, h_l^teacher) over the selected decoder layers.

    h_l is the output of decoder layer l, read from ``hidden_states[l + 1]`` (transformers puts
    the embeddings first; its last entry is after the final norm). Teacher and student must have
    the same hidden size. The teacher sees the unmasked input.

    Hidden states of pretrained LLMs have a few huge channels ("massive activations"), so plain
    MSE is in the thousands (≈3.5e3 on SmolLM2-135M); the default relative MSE is O(1).

    Args:
        loss_type: "mse_normalized" (default), "mse" or "cosine" (see :func:`hidden_state_loss`).
        layer_weights: "uniform" (w_l = 1/n) or "progressive" (w_l ∝ position in the selected
            list, 1..n, so later layers weigh more; normalised to sum to 1).
        layers: decoder layer indices (negative from the end); None = every layer.
    """

    name = "layerwise_distill"
    requires_teacher = True
    requires_hidden_states = True

    def __init__(
        self,
        loss_type: LossType = "mse_normalized",
        layer_weights: LayerWeights = "uniform",
        layers: list[int] | None = None,
    ) -> None:
        if loss_type not in ("mse", "mse_normalized", "mse_per_token", "cosine"):
            raise ValueError(
                "loss_type must be 'mse', 'mse_normalized', 'mse_per_token' or 'cosine', got "
                f"{loss_type!r}"
            )
        if layer_weights not in ("uniform", "progressive"):
            raise ValueError(
                f"layer_weights must be 'uniform' or 'progressive', got {layer_weights!r}"
            )
        self.loss_type: LossType = loss_type
        self.layer_weights: LayerWeights = layer_weights
        self.layers = None if layers is None else [int(i) for i in layers]

    def forward(
        self, model_outputs: Any, batch: Batch, teacher_outputs: Any = None
    ) -> ObjectiveOutput:
        student = _layer_outputs(model_outputs, "student")
        teacher = _layer_outputs(self._teacher(teacher_outputs), "teacher")
        if len(student) != len(teacher) and self.layers is None:
            raise ValueError(
                f"student has {len(student)} layers and teacher {len(teacher)}: pass layers=[...] "
                "(negative indices select the same depth from the end)"
            )
        indices = list(range(len(student))) if self.layers is None else self.layers
        raw = [1.0] * len(indices)
        if self.layer_weights == "progressive":
            raw = [float(i + 1) for i in range(len(indices))]
        weights = [w / sum(raw) for w in raw]
        valid = token_mask(batch, batch["input_ids"])
        loss = student[0].new_zeros((), dtype=torch.float32)
        metrics = {}
        for index, weight in zip(indices, weights, strict=True):
            s, t = student[index], teacher[index]
            if s.shape != t.shape:
                raise ValueError(
                    f"layer {index}: student hidden states {tuple(s.shape)} and teacher "
                    f"{tuple(t.shape)} differ; layerwise distillation needs the same hidden size"
                )
            term = hidden_state_loss(s, t, valid, self.loss_type)
            loss = loss + weight * term
            metrics[f"layer_{index}"] = term.detach()
        return ObjectiveOutput(loss, metrics)


class LRCReconstructionObjective(LayerwiseDistillObjective):
    """Per-layer output reconstruction of the full-precision teacher: uniform mean over layers of
    the MSE between decoder-layer outputs (LRC, arXiv 2412.07902, Sec. 3: its output
    reconstruction error, taken here per decoder layer and trained end to end).

    Used to train low-rank corrections of a quantized student: only the correction parameters
    need to be trainable; the teacher is the unquantized source model. Plain MSE keeps the
    paper's objective but is large (≈3e3 on SmolLM2-135M, dominated by massive-activation
    channels): alone its weight does not matter to Adam; next to CE use a weight near 1e-3.

    Args:
        layers: decoder layer indices; None = every layer.
    """

    name = "lrc"

    def __init__(self, layers: list[int] | None = None) -> None:
        super().__init__(loss_type="mse", layer_weights="uniform", layers=layers)


def _layer_outputs(outputs: Any, who: str) -> tuple[torch.Tensor, ...]:
    hidden = getattr(outputs, "hidden_states", None)
    if not hidden:
        raise ValueError(
            f"the {who} outputs have no hidden_states: call the model through "
            "run_model(model, batch, manager.requirements())"
        )
    return tuple(hidden[1:])
