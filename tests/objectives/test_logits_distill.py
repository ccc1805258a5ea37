"""LogitsDistillObjective: KL(teacher || student)·T² at valid shifted positions, by hand."""

import math
from types import SimpleNamespace

import pytest
import torch

from wrinklefree.objectives import LogitsDistillObjective

LN3 = math.log(3.0)


def kl_uniform_vs(q0: float) -> float:
    """KL([1/2, 1/2] || [q0, 1 - q0])."""
    return 0.5 * math.log(0.5 / q0) + 0.5 * math.log(0.5 / (1 - q0))


def test_kl_times_t_squared():
    # teacher uniform over 2 tokens; student logits [ln 3, 0].
    teacher = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    student = torch.tensor([[[LN3, 0.0], [9.0, -9.0]]])
    labels = torch.tensor([[1, 1]])  # only position 0 has a next token
    objective = LogitsDistillObjective(temperature=1.0)
    out = objective(
        SimpleNamespace(logits=student), {"labels": labels}, SimpleNamespace(logits=teacher)
    )
    assert out.loss.item() == pytest.approx(kl_uniform_vs(0.75), rel=1e-6)  # 0.5·ln(4/3)
    # T = 2: student softmax of [ln 3 / 2, 0] = [√3, 1] / (1 + √3); loss scaled by 4.
    out = LogitsDistillObjective(temperature=2.0)(
        SimpleNamespace(logits=student), {"labels": labels}, SimpleNamespace(logits=teacher)
    )
    q0 = math.sqrt(3) / (1 + math.sqrt(3))
    assert out.loss.item() == pytest.approx(4 * kl_uniform_vs(q0), rel=1e-6)
    assert out.metrics["kl"].item() == pytest.approx(kl_uniform_vs(q0), rel=1e-6)


def test_student_extra_vocabulary_is_dropped_and_ignored_labels_skipped():
    teacher = torch.zeros(1, 3, 2)
    # the student's third column (a mask token) would dominate if it were kept
    student = torch.tensor([[[LN3, 0.0, 50.0], [LN3, 0.0, 50.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, 1, -100]])  # position 1 predicts -100: skipped
    out = LogitsDistillObjective(temperature=1.0)(
        SimpleNamespace(logits=student), {"labels": labels}, SimpleNamespace(logits=teacher)
    )
    assert out.loss.item() == pytest.approx(kl_uniform_vs(0.75), rel=1e-6)


def test_larger_teacher_vocabulary_and_missing_teacher_are_errors():
    student = SimpleNamespace(logits=torch.zeros(1, 2, 3))
    batch = {"labels": torch.zeros(1, 2, dtype=torch.long)}
    with pytest.raises(ValueError, match="teacher logits have 4"):
        LogitsDistillObjective()(student, batch, SimpleNamespace(logits=torch.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match="needs teacher outputs"):
        LogitsDistillObjective()(student, batch, None)


def test_reverse_kl_and_the_mix_by_hand():
    # teacher p uniform over 2 tokens, student q = [3/4, 1/4] (logits [ln 3, 0]):
    # KL(q || p) = 3/4·ln(3/2) + 1/4·ln(1/2); the forward KL(p || q) as in the first test.
    teacher = torch.zeros(1, 2, 2)
    student = torch.tensor([[[LN3, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 1]])
    reverse_kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    for r, expected in [(1.0, reverse_kl), (0.25, 0.75 * kl_uniform_vs(0.75) + 0.25 * reverse_kl)]:
        out = LogitsDistillObjective(temperature=1.0, reverse=r)(
            SimpleNamespace(logits=student), {"labels": labels}, SimpleNamespace(logits=teacher)
        )
        assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match=r"reverse must be in \[0, 1\].*got 1.5"):
        LogitsDistillObjective(reverse=1.5)
