"""Certainty forcing (dParallel): hand-computed loss, suffix masks per block, the manager path."""

import math

import pytest
import torch

from wrinklefree.objectives import CertaintyForcingObjective, create_objective_manager, run_model
from wrinklefree.objectives.certainty import certainty_forcing_loss, suffix_masks
from wrinklefree.objectives.dlm import maskable_positions

MASK_ID = 127


def test_loss_hand_computed():
    """Two masked positions: one predicted right ([2, 0, 0] for target 0), one wrong ([0, 1, 0]
    for target 0). CE averages both; the entropy at T = 0.5 counts only the right one."""
    logits = torch.zeros(2, 3, 3)
    logits[0, 0] = torch.tensor([2.0, 0.0, 0.0])  # copy 0 predicts its masked position 1
    logits[1, 1] = torch.tensor([0.0, 1.0, 0.0])  # copy 1 predicts its masked position 2
    targets = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.tensor([[False, True, False], [False, False, True]])
    loss, metrics = certainty_forcing_loss(logits, targets, mask, temperature=0.5,
                                           entropy_weight=2.0)
    ce = ((math.log(math.e**2 + 2) - 2) + math.log(2 + math.e)) / 2
    z = math.e**4 + 2  # softmax([2, 0, 0] / 0.5) = [e^4, 1, 1] / z
    entropy = math.log(z) - 4 * math.e**4 / z
    assert float(loss) == pytest.approx(ce + 2.0 * entropy, abs=1e-5)
    assert float(metrics["ce"]) == pytest.approx(ce, abs=1e-5)
    assert float(metrics["entropy"]) == pytest.approx(entropy, abs=1e-5)
    assert float(metrics["accuracy"]) == 0.5 and float(metrics["masked_tokens"]) == 2
    # nothing predicted right: no certainty term at all, only the cross-entropy
    targets[1, 2] = 2
    targets[0, 1] = 1
    loss, metrics = certainty_forcing_loss(logits, targets, mask, 0.5, 2.0)
    ce = ((math.log(math.e**2 + 2) - 0) + (math.log(2 + math.e) - 0)) / 2
    assert float(loss) == pytest.approx(ce, abs=1e-5) and float(metrics["entropy"]) == 0


def test_suffix_masks_cut_every_block_once_per_copy():
    """A window opening inside a block and holding a document boundary: in every piece of a
    block, each copy masks exactly the maskable offsets from a cut c in 1..B-1 on."""
    positions = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5, 6, 7, 8]])
    batch = {"labels": torch.ones(1, 16, dtype=torch.long), "position_ids": positions}
    maskable = maskable_positions(batch, 4)
    pieces = [range(0, 3), range(3, 7), range(7, 11), range(11, 15), range(15, 16)]
    cuts_seen = set()
    for seed in range(30):
        mask = suffix_masks(maskable, positions, 4, generator=torch.Generator().manual_seed(seed))
        assert mask.shape == (2, 16) and not (mask & ~maskable).any()
        for row in mask:
            for piece in pieces:
                masked = [int(positions[0, i]) % 4 for i in piece if row[i]]
                free = [int(positions[0, i]) % 4 for i in piece if maskable[0, i] and not row[i]]
                assert not masked or not free or max(free) < min(masked)  # a suffix
                if positions[0, piece[-1]] % 4 == 3 and maskable[0, piece[-1]]:
                    assert row[piece[-1]]  # c <= B - 1: the block's last offset always masked
                    cuts_seen.add(min(masked))
    assert cuts_seen == {1, 2, 3}


def test_objective_trains_through_the_manager(model, make_batch):
    config = {"objectives": {
        "continue_pretrain": {"weight": 1.0},
        "certainty": {"mask_token_id": MASK_ID, "block_size": 4, "allow_vocab_mask_token": True},
    }}
    manager = create_objective_manager(config)
    batch = manager.preprocess_batch(make_batch(batch=2, length=12))
    assert batch["dlm_noisy_ids"].shape == (4, 12) and batch["dlm_block_size"] == 4
    assert not (batch["input_ids"] == MASK_ID).any()  # the clean window stays clean
    result = manager(run_model(model, batch, manager.requirements()), batch)
    result.loss.backward()
    metrics = result.metrics
    assert metrics["certainty/masked_tokens"] == int(batch["dlm_mask"].sum())
    assert metrics["certainty/loss"] >= metrics["certainty/ce"] > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_refuses_a_second_masking_objective_and_bad_options(make_batch):
    both = create_objective_manager({"objectives": {
        "dlm": {"mask_token_id": MASK_ID, "allow_vocab_mask_token": True},
        "certainty": {"mask_token_id": MASK_ID, "allow_vocab_mask_token": True},
    }})
    with pytest.raises(ValueError, match="two masking objectives ran on it"):
        both.preprocess_batch(make_batch())
    with pytest.raises(ValueError, match="temperature must be > 0"):
        CertaintyForcingObjective(MASK_ID, temperature=0, allow_vocab_mask_token=True)
    with pytest.raises(ValueError, match="block_size must be >= 2"):
        CertaintyForcingObjective(MASK_ID, block_size=1, allow_vocab_mask_token=True)
    with pytest.raises(ValueError, match="without the tokenizer"):
        CertaintyForcingObjective(MASK_ID)
