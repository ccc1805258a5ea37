"""Tiny models, tokenizers and batches shared by the objective tests (all random, all offline).

Exposed as fixtures only (``make_model``, ``make_batch``...), never imported by name, so this
conftest cannot clash with another directory's.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 128


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **overrides,
    )
    return LlamaForCausalLM(config)


def word_tokenizer(size: int = VOCAB):
    """A whitespace word-level tokenizer whose ids 0..size-1 are w0.., <unk>, <eos>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(size - 2)}
    vocab["<unk>"], vocab["<eos>"] = size - 2, size - 1
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


def lm_batch(batch: int = 2, length: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB - 2, (batch, length), generator=generator)
    return {
        "input_ids": input_ids,
        "labels": input_ids.clone(),
        "position_ids": torch.arange(length).repeat(batch, 1),
    }


@pytest.fixture
def make_model():
    return tiny_llama


@pytest.fixture
def make_batch():
    return lm_batch


@pytest.fixture
def model() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture
def tokenizer():
    return word_tokenizer()
