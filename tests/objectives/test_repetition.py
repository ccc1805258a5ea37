"""DITTO's pseudo-repetition penalty: the repeated rows, the loss by hand, its stop gradient, and
the second forward that only the student runs."""

import math

import pytest
import torch

from wrinklefree.objectives import (
    ObjectiveManager,
    RepetitionObjective,
    Requirements,
    create_objective_manager,
    run_model,
)
from wrinklefree.objectives.repetition import repeated_rows, repetition_loss


def _logits_for(probabilities: list[float], targets: list[int]) -> torch.Tensor:
    """(1, len + 1, 2) logits whose row t gives ``targets[t]`` probability ``probabilities[t]``
    (two-token vocabulary; the last row predicts nothing)."""
    rows = []
    for p, target in zip(probabilities, targets, strict=True):
        row = [0.0, 0.0]
        row[target] = math.log(p / (1 - p))
        rows.append(row)
    rows.append([0.0, 0.0])
    return torch.tensor([rows])


def test_repeated_rows_repeat_the_first_span_to_the_window_length():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8], [9, 9, 9, 9, 9, 9, 9, 9]])
    assert repeated_rows(ids, span=3, rows=1).tolist() == [[1, 2, 3, 1, 2, 3, 1, 2]]
    assert repeated_rows(ids, span=4, rows=2).tolist() == [[1, 2, 3, 4, 1, 2, 3, 4], [9] * 8]
    assert repeated_rows(ids, span=2, rows=1, repeats=3).tolist() == [[1, 2, 1, 2, 1, 2]]


def test_loss_by_hand():
    ids = torch.tensor([[0, 1, 0, 1, 0]])  # period 2
    # p_t = P(ids[t+1] | ids[:t+1]) for t = 0..3: targets 1, 0, 1, 0
    logits = _logits_for([0.5, 0.5, 0.8, 0.2], [1, 0, 1, 0])
    loss = repetition_loss(logits, ids, period=2, penalty=0.5)
    # t=2: |0.8 - 0.5·0.5| = 0.55; t=3: |0.2 - 0.5·0.5| = 0.05
    expected = -(math.log(1 - 0.55) + math.log(1 - 0.05)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_minimum_is_a_geometric_decay_and_the_earlier_repetition_gets_no_gradient():
    ids = torch.tensor([[0, 1, 0, 1, 0]])
    decayed = _logits_for([0.6, 0.6, 0.3, 0.3], [1, 0, 1, 0])  # each repetition halves
    assert repetition_loss(decayed, ids, 2, 0.5).item() == pytest.approx(0.0, abs=1e-6)
    logits = _logits_for([0.5, 0.5, 0.8, 0.2], [1, 0, 1, 0]).requires_grad_()
    repetition_loss(logits, ids, 2, 0.5).backward()
    assert torch.all(logits.grad[0, :2] == 0)  # sg(p_{t-period}): the target is not moved
    assert torch.all(logits.grad[0, 2:4].abs().sum(-1) > 0)


def test_preprocess_adds_a_student_only_view_and_refuses_short_windows(make_batch):
    batch = make_batch(batch=3, length=10)
    out = RepetitionObjective(span=4, rows=2).preprocess_batch(batch)
    assert torch.equal(out["input_ids"], batch["input_ids"])  # the clean window is untouched
    assert out["repetition_ids"].shape == (2, 10)
    assert torch.equal(out["repetition_ids"][:, 4:8], batch["input_ids"][:2, :4])
    with pytest.raises(ValueError, match="span=5 needs windows of at least 11"):
        RepetitionObjective(span=5).preprocess_batch(batch)
    with pytest.raises(ValueError, match="penalty"):
        RepetitionObjective(penalty=1.5)
    with pytest.raises(ValueError, match="repeats must be >= 2"):
        RepetitionObjective(repeats=1)
    short = RepetitionObjective(span=2, repeats=3).preprocess_batch(batch)
    assert short["repetition_ids"].shape == (1, 6)
    # fixed repeats need only one span inside the window
    longer = RepetitionObjective(span=6, repeats=2).preprocess_batch(batch)
    assert longer["repetition_ids"].shape == (1, 12)


def test_student_runs_the_repeated_rows_and_the_teacher_does_not(model, make_batch):
    model.eval()
    batch = RepetitionObjective(span=3).preprocess_batch(make_batch(batch=2, length=8))
    out = run_model(model, batch, Requirements())
    with torch.no_grad():
        plain = model(input_ids=batch["repetition_ids"]).logits
        clean = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    assert torch.allclose(out.repetition_logits, plain, atol=1e-5)
    assert torch.allclose(out.logits, clean, atol=1e-5)  # the other objectives' view
    teacher = run_model(model, batch, Requirements(), teacher=True)
    assert not hasattr(teacher, "repetition_logits")


def test_trains_with_cross_entropy_through_the_manager(model, make_batch):
    manager = create_objective_manager(
        {"objectives": {"continue_pretrain": {"weight": 1.0},
                        "repetition": {"weight": 1.0, "span": 3}}})
    assert isinstance(manager, ObjectiveManager)
    batch = manager.preprocess_batch(make_batch(batch=2, length=8))
    result = manager(run_model(model, batch, manager.requirements()), batch)
    assert torch.isfinite(result.loss) and result.objective_outputs["repetition"].loss > 0
    result.loss.backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0
