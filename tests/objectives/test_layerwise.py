"""Layerwise hidden-state distillation (mse, normalised mse, cosine; uniform and progressive
layer weights) and LRC reconstruction, by hand."""

import math
from types import SimpleNamespace

import pytest
import torch

from wrinklefree.objectives import LayerwiseDistillObjective, LRCReconstructionObjective

EMB = torch.zeros(1, 2, 2)  # hidden_states[0] (embeddings) is never compared


def outputs(*layers: list) -> SimpleNamespace:
    return SimpleNamespace(hidden_states=(EMB, *(torch.tensor([layer]) for layer in layers)))


# layer 0: student [1, 1] vs teacher [1, 0] at both positions; layer 1: [3, 4] vs [0, 0].
STUDENT = outputs([[1.0, 1.0], [1.0, 1.0]], [[3.0, 4.0], [3.0, 4.0]])
TEACHER = outputs([[1.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]])
BATCH = {"input_ids": torch.zeros(1, 2, dtype=torch.long)}


def test_mse_uniform_and_progressive():
    uniform = LayerwiseDistillObjective("mse")(STUDENT, BATCH, TEACHER)
    # layer 0: mean((0, 1)²) = 0.5; layer 1: (9 + 16) / 2 = 12.5
    assert uniform.metrics["layer_0"].item() == pytest.approx(0.5)
    assert uniform.loss.item() == pytest.approx((0.5 + 12.5) / 2)
    progressive = LayerwiseDistillObjective("mse", layer_weights="progressive")(
        STUDENT, BATCH, TEACHER
    )
    assert progressive.loss.item() == pytest.approx((1 * 0.5 + 2 * 12.5) / 3)


def test_normalised_mse_and_cosine_on_one_layer():
    normalised = LayerwiseDistillObjective("mse_normalized", layers=[0])(STUDENT, BATCH, TEACHER)
    assert normalised.loss.item() == pytest.approx(1.0)  # ||(0, 1)||² / ||(1, 0)||²
    # ratio of sums over tokens: (1 + 0) / (1 + 4) = 0.2 (a mean of per-token ratios would be 0.5)
    mixed = LayerwiseDistillObjective("mse_normalized")(
        outputs([[1.0, 1.0], [2.0, 0.0]]), BATCH, outputs([[1.0, 0.0], [2.0, 0.0]])
    )
    assert mixed.loss.item() == pytest.approx(0.2)
    # the same pair per token: token 1 (1 - 1)² + 1² over 1² = 1, token 2 0 over 4 = 0 -> 0.5
    per_token = LayerwiseDistillObjective("mse_per_token")(
        outputs([[1.0, 1.0], [2.0, 0.0]]), BATCH, outputs([[1.0, 0.0], [2.0, 0.0]])
    )
    assert per_token.loss.item() == pytest.approx(0.5)
    cosine = LayerwiseDistillObjective("cosine", layers=[0])(STUDENT, BATCH, TEACHER)
    assert cosine.loss.item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-6)


def test_padding_positions_are_excluded():
    student = outputs([[1.0, 1.0], [100.0, 100.0]])
    teacher = outputs([[1.0, 0.0], [0.0, 0.0]])
    batch = {
        "input_ids": torch.zeros(1, 2, dtype=torch.long),
        "attention_mask": torch.tensor([[1, 0]]),
    }
    assert LayerwiseDistillObjective("mse")(student, batch, teacher).loss.item() == pytest.approx(
        0.5
    )


def test_lrc_is_uniform_mse_over_layers():
    out = LRCReconstructionObjective()(STUDENT, BATCH, TEACHER)
    assert out.loss.item() == pytest.approx((0.5 + 12.5) / 2)
    assert (
        LRCReconstructionObjective.requires_hidden_states
        and LRCReconstructionObjective.requires_teacher
    )


def test_errors():
    with pytest.raises(ValueError, match="loss_type"):
        LayerwiseDistillObjective("l1")
    deeper = outputs([[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="pass layers"):
        LayerwiseDistillObjective()(STUDENT, BATCH, deeper)
    with pytest.raises(ValueError, match="no hidden_states"):
        LayerwiseDistillObjective()(SimpleNamespace(hidden_states=None), BATCH, TEACHER)
