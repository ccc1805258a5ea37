"""Multi-head self-attention relation distillation (MiniLM-v2, arXiv 2012.15828; BitDistill,
arXiv 2510.13998, Eq. 12), over the whole sequence or within diagonal blocks for DLM students.

For X ∈ {Q, K, V} of one layer, the heads are concatenated and split again into R *relation
heads* of size d_r (so teacher and student may have different head counts and widths), and each
relation head gives a row-stochastic L × L matrix R_X = softmax(X·Xᵀ / √d_r). The loss is
KL(R_X^teacher || R_X^student) averaged over relation heads, query rows and the three of Q, K, V.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Literal

import torch
import torch.nn.functional as F

from wrinklefree.objectives.base import (
    Batch,
    Objective,
    ObjectiveOutput,
    Requirements,
    check_positive,
    masked_mean,
    token_mask,
)

Form = Literal["dot", "cosine"]


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, d) -> (B, L, H·d)."""
    batch, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * dim)


def split_relation_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, R, L, D / R)."""
    batch, length, dim = x.shape
    if dim % heads:
        raise ValueError(
            f"{dim} q/k/v channels cannot be split into {heads} relation heads; set "
            "relation_heads to a divisor of both the student's and the teacher's q and k/v widths"
        )
    return x.reshape(batch, length, heads, dim // heads).transpose(1, 2)


def document_ids(position_ids: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """(B, L) long: the index of the document each position belongs to, within its row.

    A packed window restarts its position ids at every document (``data.packing``); a document
    boundary is wherever the position id is not the previous one plus 1. Without position ids
    the whole row is one document.
    """
    if position_ids is None:
        return torch.zeros(like.shape[:2], dtype=torch.long, device=like.device)
    rows = like.shape[0]
    if position_ids.shape[0] != rows:  # (1, L) for every row, or (B, L) for a doubled DLM batch
        position_ids = position_ids.repeat(rows // position_ids.shape[0], 1)
    starts = torch.ones_like(position_ids, dtype=torch.long)
    starts[:, 1:] = (position_ids[:, 1:] != position_ids[:, :-1] + 1).long()
    return starts.cumsum(-1) - 1


def relation_log_probs(
    x: torch.Tensor, key_valid: torch.Tensor, form: Form, block: int, docs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log relation matrices within blocks of ``block`` positions and within documents.

    x (B, R, L, d), key_valid (B, L), docs (B, L) document ids -> log-probs
    (B, R, nb, block, block) and the (query, key) mask (B, 1, nb, block, block). ``block = L`` is
    the full sequence. Invalid and padding keys, and keys of another document of a packed window,
    get probability 0.
    """
    batch, heads, length, dim = x.shape
    pad = (-length) % block
    x = F.pad(x.float(), (0, 0, 0, pad))
    key_valid = F.pad(key_valid, (0, pad), value=False)
    docs = F.pad(docs, (0, pad), value=-1)
    blocks = (length + pad) // block
    x = x.reshape(batch, heads, blocks, block, dim)
    if form == "cosine":  # BitDistill reference code: cosine similarity, no temperature
        x = F.normalize(x, dim=-1)
        scores = x @ x.transpose(-1, -2)
    else:  # BitDistill Eq. 12 / MiniLM-v2: scaled dot product
        scores = x @ x.transpose(-1, -2) / math.sqrt(dim)
    docs = docs.reshape(batch, 1, blocks, block)
    pairs = (docs.unsqueeze(-1) == docs.unsqueeze(-2)) & key_valid.reshape(
        batch, 1, blocks, 1, block)  # (B, 1, nb, block, block)
    scores = scores.masked_fill(~pairs, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1), pairs


def relation_kl(
    student: torch.Tensor,
    teacher: torch.Tensor,
    key_valid: torch.Tensor,
    rows: torch.Tensor,
    heads: int,
    form: Form,
    block: int,
    docs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over relation heads and selected query rows of KL(R_teacher || R_student).

    student (B, L, D_s), teacher (B, L, D_t), key_valid / rows (B, L) bool, docs (B, L) document
    ids (None: one document per row).
    """
    if docs is None:
        docs = document_ids(None, rows)
    log_s, pairs = relation_log_probs(
        split_relation_heads(student, heads), key_valid, form, block, docs)
    log_t, _ = relation_log_probs(
        split_relation_heads(teacher, heads), key_valid, form, block, docs)
    kl = torch.where(pairs, log_t.exp() * (log_t - log_s), 0.0).sum(-1)  # (B, R, nb, block)
    batch, length = rows.shape
    rows = F.pad(rows, (0, (-length) % block), value=False).reshape(batch, 1, kl.shape[2], block)
    return masked_mean(kl, rows)


class AttentionRelationDistillObjective(Objective):
    """Q-Q, K-K and V-V relation distillation on one decoder layer (BitDistill Eq. 12).

    loss = 1/3 Σ_{X∈{Q,K,V}} 1/(R·|rows|) Σ_r Σ_rows KL(R_X,r^T || R_X,r^S),
    R_X = softmax(X·Xᵀ/√d_r) (``form="dot"``, the default: the paper's equation and MiniLM-v2's).
    q/k/v are the projection outputs (before RoPE) captured by
    :func:`~wrinklefree.objectives.run_model`; padding keys and rows are excluded, and in a
    packed window (position ids restarting per document) a row's keys are its own document's.

    Scale and the paper's γ: the loss is a mean KL per relation row in nats, so a weight near 1
    puts it on the scale of CE (measured on SmolLM2-135M against fresh BitNet students: 3.7-3.9,
    next to CE 4.5-16; see docs/objectives.md). It equals the paper's Eq. 12 (one layer,
    α = 1) divided by 3, so weight w here is γ = 3w in the equation's form. The published γ
    (1e5 classification, 1e3 summarisation) was tuned with the reference code's cosine relations
    (``form="cosine"``: softmax of cosines in [-1, 1], nearly uniform rows whose KLs are 100-500x
    smaller, 0.007-0.03 measured) and does not transfer to the dot form: γ = 1e5 there would swamp
    CE by orders of magnitude.

    Args:
        layer: decoder layer index (negative counts from the end; BitDistill distils one late
            layer). The same index is read from the teacher.
        relation_heads: R; None uses the student's number of key/value heads (each relation head
            then covers one GQA group).
        form: "dot" (scaled dot product) or "cosine".
    """

    name = "attention_distill"
    requires_teacher = True
    block_size: int | None = None  # None: the full sequence

    def __init__(self, layer: int = -1, relation_heads: int | None = None, form: Form = "dot"):
        if form not in ("dot", "cosine"):
            raise ValueError(f"form must be 'dot' or 'cosine', got {form!r}")
        if relation_heads is not None:
            check_positive("relation_heads", relation_heads)
        self.layer = int(layer)
        self.relation_heads = relation_heads
        self.form: Form = form

    def requirements(self) -> Requirements:
        return Requirements(teacher=True, qkv_layers=[self.layer])

    def query_rows(self, batch: Batch, valid: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: the query positions whose relation rows are distilled."""
        return valid

    def forward(
        self, model_outputs: Any, batch: Batch, teacher_outputs: Any = None
    ) -> ObjectiveOutput:
        student = _captured_qkv(model_outputs, self.layer, "student")
        teacher = _captured_qkv(self._teacher(teacher_outputs), self.layer, "teacher")
        valid = token_mask(batch, batch["input_ids"])  # (B, L)
        rows = self.query_rows(batch, valid)
        heads = self.relation_heads or student[1].shape[1]
        block = self.block_size or valid.shape[1]
        docs = document_ids(batch.get("position_ids"), valid)  # packed windows: per document
        terms = {
            name: relation_kl(
                merge_heads(s), merge_heads(t), valid, rows, heads, self.form, block, docs)
            for name, s, t in zip(("q", "k", "v"), student, teacher, strict=True)
        }
        loss = (terms["q"] + terms["k"] + terms["v"]) / 3
        metrics = {f"{name}_kl": value.detach() for name, value in terms.items()}
        metrics["rows"] = rows.sum().float()
        return ObjectiveOutput(loss, metrics)


class BlockAttentionDistillObjective(AttentionRelationDistillObjective):
    """The relation loss restricted to diagonal blocks and to masked positions (DLM students).

    Relations are computed only between positions of the same block of ``block_size`` tokens
    (Fast-dLLM v2's 32-token blocks, inside which a block-diffusion student attends
    bidirectionally), and only the rows of masked tokens (``dlm_mask``) count: the student must
    recover, for a masked token, the relations the teacher computes for the original one. Without
    a DLM mask in the batch every valid row counts.

    Args:
        block_size: tokens per block (Fast-dLLM v2 uses 32).
        layer, relation_heads, form: as :class:`AttentionRelationDistillObjective`.
    """

    name = "block_attention_distill"

    def __init__(
        self,
        layer: int = -1,
        relation_heads: int | None = None,
        form: Form = "dot",
        block_size: int = 32,
    ) -> None:
        super().__init__(layer=layer, relation_heads=relation_heads, form=form)
        check_positive("block_size", block_size)
        self.block_size = int(block_size)

    reads_noisy_view = True

    def query_rows(self, batch: Batch, valid: torch.Tensor) -> torch.Tensor:
        if "dlm_mask" in batch:
            return valid & batch["dlm_mask"]
        return valid

    def forward(
        self, model_outputs: Any, batch: Batch, teacher_outputs: Any = None
    ) -> ObjectiveOutput:
        if "dlm_mask" not in batch:
            return super().forward(model_outputs, batch, teacher_outputs)
        # DLM batch: the student's noisy views (2B rows, ``dlm_qkv``) against the teacher's
        # clean window repeated for both complementary copies
        copies = batch["dlm_mask"].shape[0] // batch["input_ids"].shape[0]
        student = SimpleNamespace(qkv=getattr(model_outputs, "dlm_qkv", None) or {})
        teacher = SimpleNamespace(qkv={
            i: tuple(t.repeat(copies, 1, 1, 1) for t in x)
            for i, x in (getattr(self._teacher(teacher_outputs), "qkv", None) or {}).items()
        })
        view = {k: _repeat_rows(v, batch["input_ids"].shape[0], copies) for k, v in batch.items()}
        view["input_ids"], view["dlm_mask"] = batch["dlm_noisy_ids"], batch["dlm_mask"]
        return super().forward(student, view, teacher)


def _repeat_rows(value: Any, rows: int, copies: int) -> Any:
    """A per-window (B, ...) tensor repeated for the noisy copies; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
        return value.repeat(copies, *([1] * (value.dim() - 1)))
    return value


def _captured_qkv(outputs: Any, layer: int, who: str) -> tuple[torch.Tensor, ...]:
    captured = getattr(outputs, "qkv", None) or {}
    if layer not in captured:
        raise ValueError(
            f"the {who} outputs have no q/k/v for layer {layer} (captured: {sorted(captured)}): "
            "call the model through run_model(model, batch, manager.requirements())"
        )
    return captured[layer]
