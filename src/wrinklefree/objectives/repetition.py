"""Pseudo-repetition penalty: DITTO (Xu et al., "Learning to Break the Loop", NeurIPS 2022,
arXiv 2206.02369, Sec. 5).

A language model that has produced a sentence twice makes it *more* likely a third time (the
paper's self-reinforcement effect): greedy decoding then loops (" of the city of the city of
..."). DITTO builds a row by repeating one short span of training text and trains each token of
every repetition to be ``penalty`` times as likely as the same token one repetition earlier, so
repeated context lowers a sentence's probability instead of raising it.
"""

from __future__ import annotations

from typing import Any

import torch

from wrinklefree.objectives.base import Batch, Objective, ObjectiveOutput

REPETITION_KEYS = ("repetition_ids",)  # the student-only view this objective adds


def repeated_rows(
    input_ids: torch.Tensor, span: int, rows: int, repeats: int | None = None
) -> torch.Tensor:
    """(B, L) -> (rows, N): the first ``span`` tokens of the first ``rows`` windows, repeated
    ``repeats`` times (N = span · repeats), or to the window length if None (N = L, the last
    repetition cut short)."""
    length = input_ids.shape[1] if repeats is None else span * repeats
    return input_ids[:rows, :span].repeat(1, -(-length // span))[:, :length]


def repetition_loss(
    logits: torch.Tensor, ids: torch.Tensor, period: int, penalty: float
) -> torch.Tensor:
    """DITTO's loss on rows of ``ids`` that repeat every ``period`` tokens.

    p_t = P(x_{t+1} | x_≤t) from ``logits`` (R, L, V); for every token whose previous occurrence
    is one period back, loss = -log(1 - |p_t - penalty · sg(p_{t-period})|) (DITTO, Sec. 5; sg:
    stop gradient), averaged. Its minimum, p_t = penalty · p_{t-period}, is a probability that
    decays geometrically with each repetition.
    """
    scores = logits[:, :-1].float()  # (R, L-1, V): row t predicts ids[t + 1]
    picked = scores.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (R, L-1)
    p = torch.exp(picked - torch.logsumexp(scores, dim=-1))  # (R, L-1)
    current, previous = p[:, period:], p[:, :-period].detach()  # (R, L-1-period)
    gap = (current - penalty * previous).abs().clamp(max=1.0 - 1e-6)
    return -torch.log1p(-gap).mean()


class RepetitionObjective(Objective):
    """DITTO's pseudo-repetition penalty on ``rows`` extra rows per step (the student reads them
    in a second, plain causal forward; the teacher and the other objectives never do).

    Args:
        span: tokens repeated per row (DITTO repeats a sentence; a packed window's first
            ``span`` tokens stand in for it).
        rows: repeated rows built per step, from the batch's first ``rows`` windows.
        penalty: λ, the factor each repetition's probability should shrink by (DITTO: 0.5).
        repeats: repetitions per row (>= 2); None fills the window length, as DITTO fills its
            maximum length. Fewer make the extra forward cheaper.
    """

    name = "repetition"
    modifies_input = True

    def __init__(
        self, span: int = 16, rows: int = 1, penalty: float = 0.5, repeats: int | None = None
    ) -> None:
        if span < 1:
            raise ValueError(f"repetition span must be >= 1 token, got {span}")
        if rows < 1:
            raise ValueError(f"repetition rows must be >= 1, got {rows}")
        if not 0.0 <= penalty <= 1.0:
            raise ValueError(f"repetition penalty must be in [0, 1], got {penalty}")
        if repeats is not None and repeats < 2:
            raise ValueError(f"repetition repeats must be >= 2 (or null: fill the window), got "
                             f"{repeats}")
        self.span, self.rows, self.penalty = int(span), int(rows), float(penalty)
        self.repeats = None if repeats is None else int(repeats)

    def preprocess_batch(self, batch: Batch) -> Batch:
        input_ids = batch["input_ids"]  # (B, L)
        # filling the window needs two repetitions and a token in it; fixed repeats, one span
        needed = self.span if self.repeats else 2 * self.span + 1
        if input_ids.shape[1] < needed:
            raise ValueError(
                f"objectives.repetition.span={self.span} needs windows of at least {needed} "
                f"tokens to repeat it, got {input_ids.shape[1]}; lower the span or raise "
                "data.seq_len"
            )
        rows = min(self.rows, input_ids.shape[0])
        repeated = repeated_rows(input_ids, self.span, rows, self.repeats)  # (R, N)
        return {**batch, "repetition_ids": repeated}

    def forward(
        self, model_outputs: Any, batch: Batch, teacher_outputs: Any = None
    ) -> ObjectiveOutput:
        logits = getattr(model_outputs, "repetition_logits", None)  # (R, N, V)
        if logits is None:
            raise ValueError(
                "objective 'repetition' needs the student's logits on batch['repetition_ids']: "
                "run the model with run_model on a batch from RepetitionObjective.preprocess_batch"
            )
        loss = repetition_loss(logits, batch["repetition_ids"], self.span, self.penalty)
        return ObjectiveOutput(loss)
