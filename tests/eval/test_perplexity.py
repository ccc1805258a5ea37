"""Clean NLL / perplexity against hand values, and identical windows for every model."""

from __future__ import annotations

import math

import pytest
import torch

from wrinklefree.eval.perplexity import eval_windows, mean_nll, perplexity, windows_per_batch

WINDOW = torch.tensor([[0, 1, 2, 3]])


def test_mean_nll_by_hand(stub):
    # (ln 2 + ln 4 + ln 8) / 3 = 2 ln 2 nats per token; perplexity e^{2 ln 2} = 4
    assert mean_nll(stub, WINDOW) == pytest.approx(2 * math.log(2), rel=1e-6)
    assert perplexity(stub, WINDOW.repeat(3, 1), batch_size=2) == pytest.approx(4.0, rel=1e-6)
    assert perplexity(stub, WINDOW.repeat(3, 1)) == pytest.approx(4.0, rel=1e-6)  # one batch


def test_windows_per_batch_is_a_token_budget():
    assert [windows_per_batch(n) for n in (128, 256, 512, 4096)] == [16, 8, 4, 1]


def test_text_file_windows(gpt2_tokenizer, text_file):
    windows = eval_windows(gpt2_tokenizer, seq_len=16, num_windows=3, text=text_file)
    assert windows.shape == (3, 16)
    # documents are the blank-line separated paragraphs, joined by EOS
    assert gpt2_tokenizer.eos_token_id in windows.flatten().tolist()
    assert torch.equal(windows, eval_windows(gpt2_tokenizer, 16, 3, text_file))


def test_missing_text_file(gpt2_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        eval_windows(gpt2_tokenizer, 16, 2, tmp_path / "nope.txt")
