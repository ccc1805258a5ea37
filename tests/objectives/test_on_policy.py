"""On-policy distillation (GKD): the loss by hand on the written positions only, the rows the
student writes (greedy, fresh weights), and student + teacher through the manager."""

import math
from types import SimpleNamespace

import pytest
import torch

from wrinklefree.convert import convert_model_to_bitnet
from wrinklefree.generate import generate_batch
from wrinklefree.nn.bitlinear import BitLinear
from wrinklefree.objectives import (
    OnPolicyDistillObjective,
    create_objective_manager,
    run_model,
)
from wrinklefree.teacher import Teacher


def test_loss_by_hand_counts_only_the_positions_that_predict_written_tokens():
    objective = OnPolicyDistillObjective(prompt_tokens=2, new_tokens=1)
    batch = {"on_policy_ids": torch.tensor([[0, 1, 1]])}  # prompt [0, 1], written [1]
    # only position 1 predicts the written token; positions 0 and 2 differ wildly and must not count
    student = torch.tensor([[[9.0, -9.0], [0.0, 0.0], [-9.0, 9.0]]])
    teacher = torch.tensor([[[-9.0, 9.0], [0.0, math.log(3.0)], [9.0, -9.0]]])
    out = objective(SimpleNamespace(on_policy_logits=student), batch,
                    SimpleNamespace(on_policy_logits=teacher))
    # p = (1/4, 3/4), q = (1/2, 1/2): KL(p || q) = 1/4 ln(1/2) + 3/4 ln(3/2), T = 1
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_options_are_checked():
    with pytest.raises(ValueError, match="rows must be >= 1"):
        OnPolicyDistillObjective(rows=0)
    with pytest.raises(ValueError, match="reverse"):
        OnPolicyDistillObjective(reverse=2.0)
    with pytest.raises(ValueError, match="sample_temperature"):
        OnPolicyDistillObjective(sample_temperature=-1.0)
    batch = {"input_ids": torch.zeros(2, 8, dtype=torch.long)}
    with pytest.raises(ValueError, match="prompt_tokens=16 is longer than the 8-token windows"):
        OnPolicyDistillObjective().preprocess_batch(batch)
    with pytest.raises(ValueError, match="needs the student's logits"):
        OnPolicyDistillObjective()(SimpleNamespace(), {}, None)


def test_the_student_writes_greedy_rows_with_its_current_weights(make_model, make_batch):
    student = convert_model_to_bitnet(make_model(), calibrate=False)
    objective = OnPolicyDistillObjective(rows=2, prompt_tokens=3, new_tokens=5)
    batch = objective.preprocess_batch(make_batch(batch=3, length=8))
    rows = objective.write(batch, student)["on_policy_ids"]  # (2, 8)
    layers = [m for m in student.modules() if isinstance(m, BitLinear)]
    assert all(getattr(m, "_w_cache", None) is None for m in layers)  # no copy left behind
    assert rows.shape == (2, 8) and torch.equal(rows[:, :3], batch["input_ids"][:2, :3])
    assert torch.equal(rows[:, 3:], generate_batch(student, rows[:, :3], max_new_tokens=5))
    # an optimizer step that does not bump the weights' versions (fused AdamW) must still count
    with torch.no_grad():
        generate_batch(student, rows[:, :3], max_new_tokens=1)  # fills the cache
    for m in layers:
        m.weight.data.mul_(-1.0)
    fresh = objective.write(batch, student)["on_policy_ids"]
    for m in layers:
        m._w_cache = None
    assert torch.equal(fresh[:, 3:], generate_batch(student, rows[:, :3], max_new_tokens=5))


def test_student_and_teacher_read_the_written_rows_through_the_manager(make_model, make_batch):
    student, teacher = make_model(seed=0), Teacher(make_model(seed=1))
    manager = create_objective_manager({"objectives": {
        "continue_pretrain": {"weight": 1.0},
        "on_policy_distill": {"weight": 1.0, "rows": 2, "prompt_tokens": 3, "new_tokens": 4},
    }})
    batch = manager.preprocess_batch(make_batch(batch=2, length=8))
    batch = manager.write_rows(batch, student)
    assert batch["on_policy_ids"].shape == (2, 7) and "on_policy_prompts" not in batch
    needs = manager.requirements()
    t_out = teacher(batch, needs)
    with torch.no_grad():
        plain = teacher.model(input_ids=batch["on_policy_ids"]).logits
    assert torch.allclose(t_out.on_policy_logits, plain, atol=1e-5)
    result = manager(run_model(student, batch, needs), batch, t_out)
    assert result.objective_outputs["on_policy_distill"].loss > 0
    result.loss.backward()
    assert student.model.embed_tokens.weight.grad.abs().sum() > 0
