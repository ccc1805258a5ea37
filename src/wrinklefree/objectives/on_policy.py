"""On-policy distillation: KD on continuations the student writes itself (GKD, Agarwal et al.,
"On-Policy Distillation of Language Models", ICLR 2024, arXiv 2306.13649, Sec. 3).

Logits KD on fixed text teaches the student the teacher's next token after the *teacher's* (or
the corpus's) prefixes; greedy decoding then runs the student on its own prefixes, where a small
error compounds into a loop (" of the city of the city ..."). Here the student continues a few
prompts (the first tokens of some windows of the batch) without gradients, and the loss is the
teacher-student divergence at the tokens it wrote: wherever the student's own text leaves what
the teacher would say, the teacher's distribution pulls it back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from wrinklefree.generate import generate_batch
from wrinklefree.objectives.base import (
    Batch,
    Objective,
    ObjectiveOutput,
    check_positive,
    distill_kl,
    match_vocab,
)

ON_POLICY_KEYS = ("on_policy_ids",)  # rows the student wrote; student and teacher both read them


def drop_weight_caches(model: nn.Module) -> None:
    """Forget BitLinear's cached quantized weights (``train()`` drops them, the mode stays):
    fused AdamW updates weights without bumping their version, so a cache made under
    ``no_grad`` at one step would still serve the weights of that step at the next."""
    model.train(model.training)


class OnPolicyDistillObjective(Objective):
    """loss = mean over the student-written tokens of KL(softmax(z_T/T) || softmax(z_S/T)) · T²
    (with ``reverse`` = r: (1-r)·that + r·KL(student || teacher)·T², as logits_distill).

    Each step the first ``prompt_tokens`` of the batch's first ``rows`` windows are continued by
    the student for ``new_tokens`` (greedy at ``sample_temperature`` 0, the decoding whose loops
    this targets; else sampled), under ``no_grad``; student and teacher then read those rows in a
    second plain causal forward, and the divergence is taken at the positions that predict the
    written tokens. GKD's on-policy mode with the forward KL (its "supervised KD on student
    outputs"; Sec. 3, Eq. 3 with λ = 1). The decoding costs ``new_tokens`` small student
    forwards per step.

    Args:
        rows: windows of the batch whose beginnings are continued.
        prompt_tokens: tokens of each window kept as the prompt.
        new_tokens: tokens the student writes per row.
        sample_temperature: 0 = greedy; > 0 samples from the student at that temperature.
        temperature: the KD temperature T.
        reverse: the share of the reverse KL, in [0, 1].
    """

    name = "on_policy_distill"
    requires_teacher = True
    modifies_input = True
    writes_rows = True

    def __init__(
        self,
        rows: int = 2,
        prompt_tokens: int = 16,
        new_tokens: int = 32,
        sample_temperature: float = 0.0,
        temperature: float = 1.0,
        reverse: float = 0.0,
    ) -> None:
        for key, value in (("rows", rows), ("prompt_tokens", prompt_tokens),
                           ("new_tokens", new_tokens)):
            if int(value) < 1:
                raise ValueError(f"on_policy_distill.{key} must be >= 1, got {value}")
        check_positive("temperature", temperature)
        check_positive("sample_temperature", sample_temperature, allow_zero=True)
        if not 0.0 <= reverse <= 1.0:
            raise ValueError(f"on_policy_distill.reverse must be in [0, 1] (the share of the "
                             f"reverse KL), got {reverse}")
        self.rows, self.prompt_tokens, self.new_tokens = int(rows), int(prompt_tokens), int(
            new_tokens)
        self.sample_temperature = float(sample_temperature)
        self.temperature, self.reverse = float(temperature), float(reverse)

    def preprocess_batch(self, batch: Batch) -> Batch:
        """Mark the prompts; :meth:`write` (which needs the student) turns them into rows."""
        input_ids = batch["input_ids"]  # (B, L)
        if input_ids.shape[1] < self.prompt_tokens:
            raise ValueError(
                f"on_policy_distill.prompt_tokens={self.prompt_tokens} is longer than the "
                f"{input_ids.shape[1]}-token windows; lower it or raise data.seq_len"
            )
        return {**batch, "on_policy_prompts": input_ids[: self.rows, : self.prompt_tokens]}

    def write(self, batch: Batch, student: nn.Module) -> Batch:
        """The student continues ``batch['on_policy_prompts']`` (R, P): ``on_policy_ids`` (R,
        P + new_tokens)."""
        prompts = batch["on_policy_prompts"]
        drop_weight_caches(student)
        written = generate_batch(student, prompts, max_new_tokens=self.new_tokens,
                                 temperature=self.sample_temperature)  # (R, new_tokens)
        drop_weight_caches(student)  # the cache holds a copy of every weight
        rest = {k: v for k, v in batch.items() if k != "on_policy_prompts"}
        return {**rest, "on_policy_ids": torch.cat([prompts, written], dim=1)}

    def forward(
        self, model_outputs: Any, batch: Batch, teacher_outputs: Any = None
    ) -> ObjectiveOutput:
        student = getattr(model_outputs, "on_policy_logits", None)  # (R, P + N, V)
        if student is None:
            raise ValueError(
                "objective 'on_policy_distill' needs the student's logits on "
                "batch['on_policy_ids']: build the batch with ObjectiveManager.preprocess_batch "
                "and .write_rows, and run the model with run_model"
            )
        teacher = self._teacher(teacher_outputs).on_policy_logits  # (R, P + N, V_t)
        first = batch["on_policy_ids"].shape[1] - self.new_tokens - 1  # predicts written token 0
        student = student[:, first:-1].flatten(0, 1)  # (R·N, V)
        teacher = teacher[:, first:-1].flatten(0, 1)  # (R·N, V_t)
        kl = distill_kl(match_vocab(student, teacher), teacher, self.temperature, self.reverse)
        loss = kl.mean()
        return ObjectiveOutput(loss, {"kl": loss.detach() / self.temperature**2})
