"""Attention relation distillation: the 2x2 example by hand (dot and cosine forms), padding
keys, block restriction with masked rows, and the q/k/v mean of the objective."""

import math
from types import SimpleNamespace

import pytest
import torch

from wrinklefree.objectives import (
    AttentionRelationDistillObjective,
    BlockAttentionDistillObjective,
)
from wrinklefree.objectives.attention import relation_kl


def kl_vs_uniform(a: float) -> float:
    """KL([σ(a), 1 - σ(a)] || [1/2, 1/2]) where σ(a) = e^a / (e^a + 1)."""
    p = 1.0 / (1.0 + math.exp(-a))
    return p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))


# Teacher rows are orthogonal unit vectors: relation logits [[a, 0], [0, a]] with a = 1/√2 (dot,
# d = 2) or a = 1 (cosine). The student's two vectors are equal: uniform relation rows.
TEACHER = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (B=1, L=2, D=2)
STUDENT = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
ALL = torch.ones(1, 2, dtype=torch.bool)


@pytest.mark.parametrize(("form", "a"), [("dot", 1 / math.sqrt(2)), ("cosine", 1.0)])
def test_two_by_two_relation(form, a):
    loss = relation_kl(STUDENT, TEACHER, ALL, ALL, heads=1, form=form, block=2)
    assert loss.item() == pytest.approx(kl_vs_uniform(a), rel=1e-6)


def test_padding_keys_and_rows_are_excluded():
    teacher = torch.cat([TEACHER, torch.tensor([[[5.0, 5.0]]])], dim=1)  # (1, 3, 2)
    student = torch.cat([STUDENT, torch.tensor([[[-5.0, 3.0]]])], dim=1)
    valid = torch.tensor([[True, True, False]])
    loss = relation_kl(student, teacher, valid, valid, heads=1, form="dot", block=3)
    assert loss.item() == pytest.approx(kl_vs_uniform(1 / math.sqrt(2)), rel=1e-6)


def test_relation_heads_split_the_channels():
    # two relation heads of width 2: head 0 is the 2x2 example, head 1 is identical for both.
    teacher = torch.cat([TEACHER, STUDENT], dim=-1)  # (1, 2, 4)
    student = torch.cat([STUDENT, STUDENT], dim=-1)
    loss = relation_kl(student, teacher, ALL, ALL, heads=2, form="dot", block=2)
    assert loss.item() == pytest.approx(kl_vs_uniform(1 / math.sqrt(2)) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="relation heads"):
        relation_kl(student, teacher, ALL, ALL, heads=3, form="dot", block=2)


def test_block_restriction_and_masked_rows():
    # positions 0-1 form block 0 (the 2x2 example); positions 2-3 are identical in both models.
    teacher = torch.cat([TEACHER, TEACHER], dim=1)  # (1, 4, 2)
    student = torch.cat([STUDENT, TEACHER], dim=1)
    valid = torch.ones(1, 4, dtype=torch.bool)
    row_1 = torch.tensor([[False, True, False, False]])
    row_2 = torch.tensor([[False, False, True, False]])
    blocked = relation_kl(student, teacher, valid, row_1, heads=1, form="dot", block=2)
    assert blocked.item() == pytest.approx(kl_vs_uniform(1 / math.sqrt(2)), rel=1e-6)
    assert relation_kl(student, teacher, valid, row_2, heads=1, form="dot", block=2).item() == 0.0
    # without blocks row 2 sees the differing keys of block 0 and is no longer 0
    assert relation_kl(student, teacher, valid, row_2, heads=1, form="dot", block=4).item() > 0.01


def qkv(q: torch.Tensor, k: torch.Tensor | None = None, v: torch.Tensor | None = None) -> dict:
    """{-1: (q, k, v)} as captured by run_model, (B, 1 head, L, d); k and v default to q."""
    k, v = q if k is None else k, q if v is None else v
    return {-1: tuple(x.unsqueeze(1) for x in (q, k, v))}


def test_objective_averages_q_k_v_relations():
    student = SimpleNamespace(qkv=qkv(STUDENT, TEACHER, TEACHER))  # only q differs
    teacher = SimpleNamespace(qkv=qkv(TEACHER))
    batch = {"input_ids": torch.zeros(1, 2, dtype=torch.long)}
    out = AttentionRelationDistillObjective()(student, batch, teacher)
    one = kl_vs_uniform(1 / math.sqrt(2))
    assert out.loss.item() == pytest.approx(one / 3, rel=1e-6)
    assert out.metrics["q_kl"].item() == pytest.approx(one, rel=1e-6)
    assert out.metrics["k_kl"].item() == 0.0
    assert AttentionRelationDistillObjective(layer=-1).requirements().qkv_layers == [-1]


def test_block_objective_uses_the_dlm_mask():
    # a DLM batch: the student's noisy view (dlm_qkv) against the teacher's clean window
    student = SimpleNamespace(qkv={}, dlm_qkv=qkv(torch.cat([STUDENT, TEACHER], dim=1)))
    teacher = SimpleNamespace(qkv=qkv(torch.cat([TEACHER, TEACHER], dim=1)))
    objective = BlockAttentionDistillObjective(block_size=2)
    batch = {"input_ids": torch.zeros(1, 4, dtype=torch.long)}
    batch["dlm_noisy_ids"] = torch.zeros(1, 4, dtype=torch.long)
    batch["dlm_mask"] = torch.tensor([[False, False, True, True]])
    assert objective(student, batch, teacher).loss.item() == 0.0
    batch["dlm_mask"] = torch.tensor([[True, False, False, False]])
    out = objective(student, batch, teacher)
    assert out.loss.item() == pytest.approx(kl_vs_uniform(1 / math.sqrt(2)), rel=1e-6)
    assert out.metrics["rows"].item() == 1


def test_missing_capture_is_a_clear_error():
    with pytest.raises(ValueError, match="run_model"):
        AttentionRelationDistillObjective(layer=0)(
            SimpleNamespace(qkv=qkv(STUDENT)), {"input_ids": torch.zeros(1, 2)}, SimpleNamespace()
        )


def test_document_ids_restart_with_the_position_ids():
    from wrinklefree.objectives.attention import document_ids

    positions = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]])
    like = torch.zeros(2, 5)
    assert document_ids(positions, like).tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
    assert document_ids(None, like).tolist() == [[0] * 5] * 2
    # one (1, L) row of position ids serves a whole batch
    assert document_ids(positions[:1], like).tolist() == [[0, 0, 0, 1, 1]] * 2


def test_packed_documents_relate_only_within_themselves_batch_of_two():
    """Row 0 packs the 2x2 example (document A) and a 2-token document B identical in both models;
    row 1 holds one 4-token document. By hand: row 0 gives KL(A) on its 2 rows and 0 on B's, so the
    mean over the 8 rows is (2·KL(A) + 4·KL(row 1 alone)) / 8."""
    from wrinklefree.objectives.attention import document_ids

    teacher = torch.cat([TEACHER, TEACHER], dim=1)  # (1, 4, 2): A = rows 0-1, B = rows 2-3
    student = torch.cat([STUDENT, TEACHER], dim=1)
    other_t, other_s = torch.randn(1, 4, 2), torch.randn(1, 4, 2)
    valid = torch.ones(2, 4, dtype=torch.bool)
    positions = torch.tensor([[0, 1, 0, 1], [0, 1, 2, 3]])
    docs = document_ids(positions, valid)
    packed = relation_kl(torch.cat([student, other_s]), torch.cat([teacher, other_t]), valid,
                         valid, heads=1, form="dot", block=4, docs=docs)
    alone = relation_kl(other_s, other_t, valid[:1], valid[:1], heads=1, form="dot", block=4)
    expected = (2 * kl_vs_uniform(1 / math.sqrt(2)) + 4 * alone.item()) / 8
    assert packed.item() == pytest.approx(expected, rel=1e-5)
    # the teeth: across the document boundary B's rows would see A's differing keys
    mixed = relation_kl(torch.cat([student, other_s]), torch.cat([teacher, other_t]), valid,
                        valid, heads=1, form="dot", block=4)
    assert mixed.item() > packed.item() + 0.01


def test_single_token_documents_have_nothing_to_distil():
    # every document is one token: each relation row is [1] for both models, KL 0 exactly
    objective = AttentionRelationDistillObjective()
    student = SimpleNamespace(qkv=qkv(torch.randn(2, 3, 4)))  # (B, L, d), one head
    teacher = SimpleNamespace(qkv=qkv(torch.randn(2, 3, 4)))
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long),
             "position_ids": torch.zeros(2, 3, dtype=torch.long)}
    assert objective(student, batch, teacher).loss.item() == 0.0
    del batch["position_ids"]  # one document per row: the same tensors now differ
    assert objective(student, batch, teacher).loss.item() > 0.0
