"""A tiny BitNet student trained with a teacher through a curriculum: CE only, then
CE + DLM + TCS + block attention distillation, with plain torch AdamW."""

import copy
import math

import torch

from wrinklefree.convert import convert_model_to_bitnet
from wrinklefree.objectives import add_mask_token, create_objective_manager, run_model
from wrinklefree.teacher import Teacher

CONFIG = {
    "objectives": {
        "continue_pretrain": {"weight": 1.0},
        "dlm": {"mask_prob": None},
        "tcs": {"top_k": 8},
        "block_attention_distill": {"block_size": 4},
    },
    "curriculum": {
        "phases": [
            {"name": "ce", "end_ratio": 0.5, "objective_weights": {"continue_pretrain": 1.0}},
            {
                "name": "dlm",
                "end_ratio": 1.0,
                "objective_weights": {
                    "continue_pretrain": 1.0,
                    "dlm": 1.0,
                    "tcs": 1.0,
                    "block_attention_distill": 1.0,
                },
            },
        ]
    },
}


def test_curriculum_training_reports_finite_losses_and_weights(make_model, make_batch, tokenizer):
    source = make_model()
    teacher_tokenizer = copy.deepcopy(tokenizer)
    student = copy.deepcopy(source)
    add_mask_token(tokenizer, student)
    convert_model_to_bitnet(student, calibrate=False)
    student.train()
    teacher = Teacher(source, tokenizer=teacher_tokenizer, student_tokenizer=tokenizer)
    manager = create_objective_manager(CONFIG, total_steps=4, tokenizer=tokenizer)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    before = student.model.layers[0].mlp.down_proj.weight.detach().clone()

    history = []
    for step in range(4):
        batch = manager.preprocess_batch(make_batch(batch=2, length=16, seed=step))
        needs = manager.requirements()
        out = run_model(student, batch, needs)
        teacher_out = teacher(batch, needs) if needs.teacher else None
        result = manager(out, batch, teacher_out)
        result.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append(manager.metrics())
        manager.step()

    warmup, main = history[:2], history[2:]
    for metrics in history:
        assert all(math.isfinite(v) for v in metrics.values()), metrics
    for metrics in warmup:
        assert metrics["curriculum/phase"] == 0.0
        assert metrics["weight/dlm"] == 0.0 and "dlm/loss" not in metrics
        assert 3.0 < metrics["continue_pretrain/loss"] < 7.0  # ≈ ln(129) on unmasked input
    for metrics in main:
        assert metrics["curriculum/phase"] == 1.0
        assert metrics["weight/tcs"] == 1.0 and metrics["weight/dlm"] == 1.0
        for key in (
            "dlm/loss",
            "dlm/accuracy",
            "tcs/loss",
            "tcs/kl",
            "block_attention_distill/q_kl",
        ):
            assert key in metrics
        assert metrics["tcs/loss"] > 0 and metrics["block_attention_distill/loss"] > 0
        assert metrics["loss"] > metrics["continue_pretrain/loss"]
    assert not torch.equal(before, student.model.layers[0].mlp.down_proj.weight)
