"""The masked-diffusion ELBO against hand-computed values (stub with fixed log-probabilities:
-log p(x1) = ln 2, -log p(x2) = ln 4, -log p(x3) = ln 8 for the window [0, 1, 2, 3])."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from wrinklefree.eval.elbo import (
    block_elbo_terms,
    block_masked_elbo,
    masked_elbo,
    masked_nll_sum,
    stratified_rates,
)
from wrinklefree.objectives import add_mask_token

LN2 = math.log(2)
WINDOW = torch.tensor([[0, 1, 2, 3]])
MASK_ID = 4


def test_one_sample_term_by_hand(stub):
    # tokens 1 and 3 masked at t = 0.5: (ln 2 + ln 8) / 0.5 = 4 ln 2 / 0.5 = 8 ln 2
    mask = torch.tensor([[False, True, False, True]])
    term = masked_nll_sum(stub, WINDOW, mask, torch.tensor([0.5]), MASK_ID)
    assert term.item() == pytest.approx(8 * LN2, rel=1e-5)
    assert stub.seen[0].tolist() == [[0, 4, 2, 4]]  # the model saw x_t, masks in place


def test_position_zero_cannot_be_masked(stub):
    mask = torch.tensor([[True, False, False, False]])
    with pytest.raises(ValueError, match="position 0"):
        masked_nll_sum(stub, WINDOW, mask, torch.tensor([0.5]), MASK_ID)


def test_t_near_one_masks_everything_but_position_zero(stub):
    # t -> 1: every token but the first is masked, weight 1: (ln 2 + ln 4 + ln 8) / 3 = 2 ln 2
    elbo = masked_elbo(stub, WINDOW, MASK_ID, num_samples=1, eps=1 - 1e-7)
    assert elbo == pytest.approx(2 * LN2, rel=1e-5)
    assert stub.seen[0].tolist() == [[0, 4, 4, 4]]


def test_unbiased_for_a_mask_blind_model(stub):
    # E_t E_mask[(1/t) sum m_i c_i] = sum c_i for every t: the estimate converges to 2 ln 2
    windows = WINDOW.repeat(64, 1)
    elbo = masked_elbo(stub, windows, MASK_ID, num_samples=32, eps=0.05, batch_size=64, seed=1)
    assert elbo == pytest.approx(2 * LN2, rel=0.05)
    assert all((seen[:, 0] == 0).all() for seen in stub.seen)  # position 0 never masked


def test_stratified_rates_cover_each_stratum():
    rates = stratified_rates(4, 0.2, torch.Generator().manual_seed(0))
    # stratum k of [0.2, 1) is [0.2 + 0.2 k, 0.2 + 0.2 (k + 1))
    for k, t in enumerate(rates.tolist()):
        assert 0.2 + 0.2 * k <= t < 0.2 + 0.2 * (k + 1)


def test_same_seed_same_estimate(gpt2_tokenizer, save_tiny, tmp_path):
    model = save_tiny(tmp_path, gpt2_tokenizer)
    tokenizer = type(gpt2_tokenizer).from_pretrained(tmp_path)
    mask_id = add_mask_token(tokenizer, model)
    windows = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    first = masked_elbo(model, windows, mask_id, num_samples=3, seed=7)
    assert first == masked_elbo(model, windows, mask_id, num_samples=3, seed=7)
    assert first != masked_elbo(model, windows, mask_id, num_samples=3, seed=8)
    assert math.isfinite(first) and first > 0


def test_needs_a_mask_token(stub):
    with pytest.raises(ValueError, match="mask token"):
        masked_elbo(stub, WINDOW, None)


# ----------------------------------------------------------------------------- block diffusion


class Uniform(torch.nn.Module):
    """Logits 0 everywhere: every token costs ln V, whatever the attention."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(_attn_implementation="sdpa")

    def forward(self, input_ids, **kwargs):
        return CausalLMOutputWithPast(logits=torch.zeros(*input_ids.shape, self.vocab))


def test_block_elbo_terms_by_hand():
    windows = torch.tensor([[1, 2, 3, 4, 5, 6]])  # blocks of 3: positions 3 opens block 1
    mask = torch.tensor([[False, True, True, False, True, False]])
    ar, diffusion = block_elbo_terms(Uniform(8), windows, mask, torch.tensor([0.5]), 7, 3)
    assert ar.item() == pytest.approx(math.log(8))  # one block-opening token (position 3)
    assert diffusion.item() == pytest.approx(3 * math.log(8) / 0.5)  # 3 masked, 1/t = 2
    with pytest.raises(ValueError, match="block-opening"):
        block_elbo_terms(Uniform(8), windows, torch.tensor([[False] * 3 + [True] + [False] * 2]),
                         torch.tensor([0.5]), 7, 3)


def test_block_elbo_of_a_uniform_model_is_about_ln_v():
    # E[(1/t)·#masked] = #maskable, so the bound is ≈ ln V per token (Monte-Carlo)
    windows = torch.randint(0, 7, (4, 33), generator=torch.Generator().manual_seed(0))
    value = block_masked_elbo(Uniform(8), windows, 7, 4, num_samples=64, batch_size=4)
    assert value == pytest.approx(math.log(8), rel=0.1)


def test_one_block_per_window_is_the_plain_bound_with_the_same_masks():
    """A block as long as the window has no block-opening token but position 0: both bounds
    draw the same rates and masks from one seed, so they agree to float rounding."""
    windows = torch.randint(0, 7, (3, 9), generator=torch.Generator().manual_seed(2))
    options = {"num_samples": 4, "batch_size": 2, "seed": 5}
    block = block_masked_elbo(Uniform(8), windows, 7, 9, **options)
    assert block == pytest.approx(masked_elbo(Uniform(8), windows, 7, **options), rel=1e-6)
    assert block != pytest.approx(math.log(8), rel=1e-3)  # a Monte-Carlo value, not the mean
