"""The frozen full-precision teacher that distillation objectives compare the student against."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from wrinklefree.objectives.base import Batch, Requirements
from wrinklefree.objectives.forward import run_model


def check_same_tokenizer(teacher_tokenizer: Any, student_tokenizer: Any) -> None:
    """Raise unless every teacher token has the same id in the student's tokenizer.

    The student may have extra tokens (e.g. the ``<|mask|>`` added for DLM); logits are only
    comparable when ids mean the same tokens.
    """
    teacher_vocab = teacher_tokenizer.get_vocab()
    student_vocab = student_tokenizer.get_vocab()
    differing = [tok for tok, i in teacher_vocab.items() if student_vocab.get(tok) != i]
    if differing:
        raise ValueError(
            f"teacher and student tokenizers differ: {len(differing)} of {len(teacher_vocab)} "
            f"teacher tokens are missing or have other ids in the student's (e.g. "
            f"{differing[:3]}); distillation needs a teacher with the same tokenizer"
        )


class Teacher:
    """A frozen model (eval mode, no gradients) called with what the objectives need.

    The teacher may be larger than the student but must share its tokenizer (checked when both
    tokenizers are given). Its logits are trimmed to its tokenizer's length, so embedding rows
    padded for speed never enter a distillation softmax. It follows the student: on each call it
    moves itself to the device of the batch, and runs inside the caller's autocast context;
    ``dtype`` casts it once (e.g. bf16 to halve its memory).

    Not an ``nn.Module`` on purpose: assigning it to a LightningModule must not put the teacher's
    weights into checkpoints or its parameters into the optimizer.

    Args:
        model: a transformers causal LM (loaded with ``attn_implementation="eager"`` if an
            objective needs attention maps; :func:`run_model` switches it otherwise).
        tokenizer: the teacher's tokenizer (enables vocabulary trimming and the check).
        student_tokenizer: the student's tokenizer, checked against ``tokenizer``.
        dtype: cast the teacher's weights to this dtype.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        tokenizer: Any = None,
        student_tokenizer: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if tokenizer is not None and student_tokenizer is not None:
            check_same_tokenizer(tokenizer, student_tokenizer)
        if dtype is not None:
            model = model.to(dtype)
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.vocab_size = len(tokenizer) if tokenizer is not None else None

    @torch.no_grad()
    def __call__(self, batch: Batch, requirements: Requirements) -> Any:
        """Teacher outputs on the unmasked input (see :func:`run_model` with ``teacher=True``)."""
        self._follow(batch["input_ids"].device)
        out = run_model(self.model, batch, requirements, teacher=True)
        if self.vocab_size is not None and out.logits.shape[-1] > self.vocab_size:
            out.logits = out.logits[..., : self.vocab_size]
            if getattr(out, "on_policy_logits", None) is not None:
                out.on_policy_logits = out.on_policy_logits[..., : self.vocab_size]
        return out

    def _follow(self, device: torch.device) -> None:
        parameter = next(self.model.parameters())
        if parameter.device != device:
            self.model.to(device)

    def to(self, *args: Any, **kwargs: Any) -> Teacher:
        self.model.to(*args, **kwargs)
        return self
