"""DLM: maskable positions, complementary masks, the noisy views beside the clean window,
token-shifted loss with and without 1/t weighting, the mask-token helper and its checks.
The block layout itself: tests/objectives/test_block_diffusion.py."""

import math
from types import SimpleNamespace

import pytest
import torch

from wrinklefree.objectives import MASK_TOKEN, DLMObjective, add_mask_token, check_mask_token
from wrinklefree.objectives.dlm import complementary_masks, dlm_loss, maskable_positions

LN2, LN3, LN4 = math.log(2.0), math.log(3.0), math.log(4.0)


def test_maskable_positions_skip_first_documents_ignored_and_padding():
    batch = {
        "labels": torch.tensor([[5, 6, 7, -100, 8, 9], [5, 6, 7, 8, 9, 9]]),
        "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 4, 5]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]),
    }
    expected = torch.tensor(
        [
            [False, True, True, False, False, True],  # -100 at 3, new document at 4
            [False, True, True, True, False, False],  # padding at 4, 5
        ]
    )
    assert torch.equal(maskable_positions(batch), expected)
    # blocks of 2 positions per document: positions 0, 2, 4 open a block and are never masked
    expected[0, 2] = expected[1, 2] = False
    assert torch.equal(maskable_positions(batch, block_size=2), expected)
    plain = {"labels": torch.tensor([[5, 6, 7, 8, 9]])}  # no position ids: 0..L-1
    assert maskable_positions(plain, 3).tolist() == [[False, True, True, False, True]]


def test_complementary_masks_cover_each_maskable_token_once():
    torch.manual_seed(0)
    maskable = torch.rand(4, 50) > 0.2
    masks = complementary_masks(maskable, torch.tensor([0.1, 0.5, 0.9, 0.3]))
    first, second = masks[:4], masks[4:]
    assert not (first & second).any()
    assert torch.equal(first | second, maskable)
    full = complementary_masks(maskable, torch.ones(4))  # rate 1: everything in the first copy
    assert torch.equal(full[:4], maskable) and not full[4:].any()


def test_preprocess_keeps_the_clean_window_and_adds_complementary_noisy_copies(make_batch):
    batch = make_batch(batch=3, length=10)
    batch["attention_mask"] = torch.ones(3, 10, dtype=torch.long)
    batch["attention_mask"][2, 7:] = 0
    batch["source"] = "asv"
    objective = DLMObjective(mask_token_id=127, mask_prob=0.5, block_size=4,
                             allow_vocab_mask_token=True)
    out = objective.preprocess_batch(batch)
    for key in ("input_ids", "labels", "position_ids", "attention_mask"):
        assert out[key] is batch[key]  # the AR objectives' input is untouched, not doubled
    assert out["source"] == "asv" and out["dlm_block_size"] == 4
    mask = out["dlm_mask"]
    assert mask.shape == (6, 10) and not (mask[:3] & mask[3:]).any()
    assert torch.equal(mask[:3] | mask[3:], maskable_positions(batch, 4))
    noisy, clean = out["dlm_noisy_ids"], batch["input_ids"].repeat(2, 1)
    assert (noisy[mask] == 127).all() and torch.equal(noisy[~mask], clean[~mask])
    assert not mask[:, ::4].any()  # block-opening tokens stay visible
    assert torch.equal(out["dlm_rate"], torch.tensor([0.5] * 6))
    assert "dlm_mask" not in batch  # input untouched


def test_random_rate_is_within_eps_and_complementary():
    torch.manual_seed(0)
    objective = DLMObjective(mask_token_id=1, eps=0.1, allow_vocab_mask_token=True)
    batch = {
        "input_ids": torch.zeros(64, 5, dtype=torch.long),
        "labels": torch.zeros(64, 5, dtype=torch.long),
    }
    rate = objective.preprocess_batch(batch)["dlm_rate"]
    assert rate.min() >= 0.1 and rate.max() <= 0.9
    assert torch.allclose(rate[:64] + rate[64:], torch.ones(64))


# A complementary pair over tokens [0, 1, 2]: copy 0 masks token 1, copy 1 masks token 2.
TARGETS = torch.tensor([[0, 1, 2], [0, 1, 2]])
MASK = torch.tensor([[False, True, False], [False, False, True]])
LOGITS = torch.tensor(
    [
        [[0.0, 0.0, 0.0], [50.0, 0.0, 0.0], [50.0, 0.0, 0.0]],  # pos 0 -> token 1: ln 3
        [[50.0, 0.0, 0.0], [LN2, 0.0, 0.0], [50.0, 0.0, 0.0]],  # pos 1 -> token 2: ln 4
    ]
)


def test_token_shifted_loss_fixed_rate():
    loss, ce, accuracy = dlm_loss(LOGITS, TARGETS, MASK)
    assert loss.item() == pytest.approx((LN3 + LN4) / 2, rel=1e-6)
    assert ce.item() == pytest.approx((LN3 + LN4) / 2, rel=1e-6)
    assert accuracy.item() == 0.0  # argmax is token 0 in both rows


def test_token_shifted_loss_with_inverse_rate_weights():
    # (ln 3 / 0.25 + ln 4 / 0.75) / (2 masked × 2) = ln 3 + ln 4 / 3
    loss, ce, _ = dlm_loss(LOGITS, TARGETS, MASK, rate=torch.tensor([0.25, 0.75]))
    assert loss.item() == pytest.approx(LN3 + LN4 / 3, rel=1e-6)
    assert ce.item() == pytest.approx((LN3 + LN4) / 2, rel=1e-6)


def test_objective_forward_reads_the_noisy_views_with_the_batch_mask_and_rate():
    batch = {
        "input_ids": TARGETS[:1],  # the clean window; rows 0 and 1 of the views are its copies
        "dlm_mask": MASK,
        "dlm_rate": torch.tensor([0.25, 0.75]),
    }
    out = SimpleNamespace(logits=torch.zeros(1, 3, 3), dlm_logits=LOGITS)
    fixed = DLMObjective(mask_token_id=2, mask_prob=0.5, allow_vocab_mask_token=True)
    assert fixed(out, batch).loss.item() == pytest.approx((LN3 + LN4) / 2, rel=1e-6)
    elbo = DLMObjective(mask_token_id=2, allow_vocab_mask_token=True)
    assert elbo(out, batch).loss.item() == pytest.approx(LN3 + LN4 / 3, rel=1e-6)
    assert elbo(out, batch).metrics["masked_tokens"].item() == 2


def test_errors():
    objective = DLMObjective(mask_token_id=1, allow_vocab_mask_token=True)
    short = {
        "input_ids": torch.zeros(1, 2, dtype=torch.long),
        "labels": torch.zeros(1, 2, dtype=torch.long),
    }
    with pytest.raises(ValueError, match="longer than 2"):
        objective.preprocess_batch(short)
    with pytest.raises(ValueError, match="no 'dlm_mask'"):
        objective(SimpleNamespace(dlm_logits=LOGITS), {"input_ids": TARGETS[:1]})
    with pytest.raises(ValueError, match="no 'dlm_logits'"):
        objective(SimpleNamespace(logits=LOGITS), {"input_ids": TARGETS[:1], "dlm_mask": MASK})
    batch = {
        "input_ids": torch.zeros(1, 4, dtype=torch.long),
        "labels": torch.zeros(1, 4, dtype=torch.long),
    }
    with pytest.raises(ValueError, match="two masking objectives ran on it"):
        objective.preprocess_batch(objective.preprocess_batch(batch))
    outside = DLMObjective(mask_token_id=3, allow_vocab_mask_token=True)
    with pytest.raises(ValueError, match="outside the model's 3 logits"):
        outside(SimpleNamespace(dlm_logits=LOGITS), {"input_ids": TARGETS[:1], "dlm_mask": MASK})
    with pytest.raises(ValueError, match="block_size must be >= 2"):
        DLMObjective(mask_token_id=1, block_size=1, allow_vocab_mask_token=True)
    with pytest.raises(ValueError, match="without the tokenizer"):
        DLMObjective(mask_token_id=5)


def test_add_mask_token_initialises_new_rows_to_the_mean(make_model, tokenizer):
    model = make_model()  # untied head, 128 rows == len(tokenizer)
    embedding_mean = model.get_input_embeddings().weight.detach().mean(0).clone()
    head_mean = model.get_output_embeddings().weight.detach().mean(0).clone()
    mask_id = add_mask_token(tokenizer, model)
    assert mask_id == 128 and len(tokenizer) == 129
    assert model.get_input_embeddings().weight.shape[0] == 129
    assert torch.allclose(model.get_input_embeddings().weight[mask_id], embedding_mean)
    assert torch.allclose(model.get_output_embeddings().weight[mask_id], head_mean)
    assert model.config.mask_token_id == 128
    assert tokenizer.convert_tokens_to_ids(MASK_TOKEN) == 128
    # idempotent: a second call keeps the (possibly trained) row
    with torch.no_grad():
        model.get_input_embeddings().weight[mask_id] = 7.0
    assert add_mask_token(tokenizer, model) == 128
    assert (model.get_input_embeddings().weight[mask_id] == 7.0).all()
    check_mask_token(tokenizer, mask_id)  # a dedicated token passes


def test_add_mask_token_tied_head(make_model, tokenizer):
    model = make_model(tie_word_embeddings=True)
    mean = model.get_input_embeddings().weight.detach().mean(0).clone()
    mask_id = add_mask_token(tokenizer, model)
    assert (
        model.get_output_embeddings().weight.data_ptr()
        == model.get_input_embeddings().weight.data_ptr()
    )
    assert torch.allclose(model.get_output_embeddings().weight[mask_id], mean)
    assert model(torch.tensor([[1, mask_id]])).logits.shape[-1] == 129


def test_ordinary_or_reserved_tokens_are_rejected_unless_allowed(tokenizer):
    with pytest.raises(ValueError, match="not a dedicated mask token"):
        check_mask_token(tokenizer, 5)  # 'w5'
    with pytest.raises(ValueError, match="not a dedicated mask token"):
        check_mask_token(tokenizer, tokenizer.eos_token_id)
    check_mask_token(tokenizer, 5, allow_vocab_token=True)
    with pytest.raises(ValueError, match="not a dedicated mask token"):
        DLMObjective(mask_token_id=5, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="add_mask_token"):
        DLMObjective(tokenizer=tokenizer)  # no <|mask|> yet to look up
