"""TCSDistillObjective: top-k KL·T² on the positions that predict masked tokens, by hand; the
student is read in its noisy views, the teacher on the clean window."""

import math
from types import SimpleNamespace

import pytest
import torch

from wrinklefree.objectives import TCSDistillObjective


def kl_two(p0: float, q0: float) -> float:
    return p0 * math.log(p0 / q0) + (1 - p0) * math.log((1 - p0) / (1 - q0))


TEACHER_ROW = [3.0, 1.0, 0.0, -5.0]  # top-2: tokens 0 and 1
STUDENT_ROW = [1.0, 1.0, 9.0, 9.0]  # gathered at 0, 1 -> [1, 1] (uniform over the top-2)


def test_topk_kl_by_hand():
    teacher = torch.tensor([[TEACHER_ROW, TEACHER_ROW]])
    student = torch.tensor([[STUDENT_ROW, STUDENT_ROW]])
    batch = {"labels": torch.tensor([[0, 0]]), "dlm_mask": torch.tensor([[False, True]])}
    # masked token 1 is predicted at position 0 (token shift); only that row counts.
    out = TCSDistillObjective(top_k=2, temperature=1.0)(
        SimpleNamespace(dlm_logits=student), batch, SimpleNamespace(logits=teacher)
    )
    p0 = math.exp(3) / (math.exp(3) + math.exp(1))
    assert out.loss.item() == pytest.approx(kl_two(p0, 0.5), rel=1e-6)
    assert out.metrics["positions"].item() == 1
    # T = 2: teacher top-2 softmax of [1.5, 0.5], scaled by T² = 4.
    out = TCSDistillObjective(top_k=2, temperature=2.0)(
        SimpleNamespace(dlm_logits=student), batch, SimpleNamespace(logits=teacher)
    )
    p0 = math.exp(1.5) / (math.exp(1.5) + math.exp(0.5))
    assert out.loss.item() == pytest.approx(4 * kl_two(p0, 0.5), rel=1e-6)


def test_only_masked_positions_count():
    same = torch.tensor([[TEACHER_ROW] * 3])
    student = same.clone()
    student[0, 1] = torch.tensor(STUDENT_ROW)  # differs only at position 1
    teacher = SimpleNamespace(logits=same)
    labels = torch.zeros(1, 3, dtype=torch.long)
    masked_2 = {"labels": labels, "dlm_mask": torch.tensor([[False, False, True]])}
    masked_1 = {"labels": labels, "dlm_mask": torch.tensor([[False, True, False]])}
    objective = TCSDistillObjective(top_k=2, temperature=1.0)
    assert objective(SimpleNamespace(dlm_logits=student), masked_2, teacher).loss.item() > 0.1
    assert objective(SimpleNamespace(dlm_logits=student), masked_1, teacher).loss.item() == 0.0


def test_both_noisy_copies_are_scored_against_the_one_clean_teacher_row():
    # window [a, b, c]; copy 0 masks token 1, copy 1 masks token 2 (complementary)
    teacher = SimpleNamespace(logits=torch.tensor([[TEACHER_ROW] * 3]))  # (1, 3, 4) clean
    noisy = torch.tensor([[STUDENT_ROW, TEACHER_ROW, TEACHER_ROW],
                          [TEACHER_ROW, STUDENT_ROW, TEACHER_ROW]])  # (2, 3, 4)
    batch = {
        "labels": torch.zeros(1, 3, dtype=torch.long),
        "dlm_mask": torch.tensor([[False, True, False], [False, False, True]]),
    }
    out = TCSDistillObjective(top_k=2, temperature=1.0)(
        SimpleNamespace(logits=torch.zeros(1, 3, 4), dlm_logits=noisy), batch, teacher
    )
    p0 = math.exp(3) / (math.exp(3) + math.exp(1))
    assert out.metrics["positions"].item() == 2  # position 0 of copy 0, position 1 of copy 1
    assert out.loss.item() == pytest.approx(kl_two(p0, 0.5), rel=1e-6)


def test_without_dlm_mask_every_valid_position_counts():
    teacher = torch.tensor([[TEACHER_ROW, TEACHER_ROW, TEACHER_ROW]])
    student = torch.tensor([[STUDENT_ROW, STUDENT_ROW, STUDENT_ROW]])
    out = TCSDistillObjective(top_k=2, temperature=1.0)(
        SimpleNamespace(logits=student),
        {"labels": torch.zeros(1, 3, dtype=torch.long)},
        SimpleNamespace(logits=teacher),
    )
    p0 = math.exp(3) / (math.exp(3) + math.exp(1))
    assert out.metrics["positions"].item() == 2
    assert out.loss.item() == pytest.approx(kl_two(p0, 0.5), rel=1e-6)
