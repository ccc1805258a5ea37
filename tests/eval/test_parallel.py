"""The first-denoising-step confidence of a block-diffusion student, by hand on a stub whose
noisy-view probabilities are fixed (V = 5, token 4 is the mask, blocks of 3)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from wrinklefree.eval.parallel import block_confidence

MASK_ID = 4
WINDOW = torch.tensor([[0, 1, 2, 3, 1, 2]])  # blocks [0, 1, 2] and [3, 1, 2]


def _row(probs: dict[int, float]) -> torch.Tensor:
    rest = (1 - sum(probs.values())) / (5 - len(probs))
    return torch.tensor([probs.get(v, rest) for v in range(5)]).log()


# noisy-view rows, one per position; the row at i - 1 predicts position i (token shift)
NOISY = torch.stack([
    _row({4: 0.5, 1: 0.4}),  # -> position 1 (offset 1, target 1): 0.4 / 0.5 = 0.8 without the mask
    _row({3: 0.6}),  # -> position 2 (offset 2, target 2): wrong, 0.6 / 0.9 without the mask
    _row({}),  # position 3 opens block 1: known, not scored
    _row({1: 0.97}),  # -> position 4 (offset 1, target 1): 0.97 / 0.9925
    _row({}),  # -> position 5 (offset 2, target 2): uniform, argmax 0 is wrong, 0.25
    _row({}),  # the last row predicts nothing
])


class FixedNoisy(nn.Module):
    """Uniform clean view, the fixed NOISY table for the noisy view; records its input."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def forward(self, input_ids, **kwargs):
        self.seen.append(input_ids.clone())
        length = input_ids.shape[1] // 2
        clean = torch.zeros(input_ids.shape[0], length, 5)
        return SimpleNamespace(logits=torch.cat([clean, NOISY[None]], dim=1), get=lambda k: None)


def test_first_step_confidence_by_hand():
    model = FixedNoisy().train()
    result = block_confidence(model, WINDOW, MASK_ID, 3, thresholds=(0.9, 0.7, 0.5))
    assert model.seen[0][0, 6:].tolist() == [0, 4, 4, 3, 4, 4]  # opening tokens + masks
    assert model.training  # mode restored
    one, two = result["offsets"]
    assert one["offset"] == 1 and two["offset"] == 2
    assert one["confidence"] == pytest.approx((0.8 + 0.97 / 0.9925) / 2, rel=1e-5)
    assert one["accuracy"] == 1.0 and two["accuracy"] == 0.0
    assert two["confidence"] == pytest.approx((0.6 / 0.9 + 0.25) / 2, rel=1e-5)
    assert one["above"] == {0.9: 0.5, 0.7: 1.0, 0.5: 1.0}
    assert two["above"] == {0.9: 0.0, 0.7: 0.0, 0.5: 0.5}
    # per block, positions above τ (at least 1): τ 0.9 -> 1, 1; 0.7 -> 1, 1; 0.5 -> 2, 1
    assert result["first_step"] == {0.9: 1.0, 0.7: 1.0, 0.5: 1.5}
    assert result["blocks"] == 2


def test_needs_a_whole_block():
    with pytest.raises(ValueError, match="block_size"):
        block_confidence(FixedNoisy(), WINDOW, MASK_ID, 8)
