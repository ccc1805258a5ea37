"""Shared fixtures for the data tests: a tiny byte-level BPE tokenizer and small local corpora."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

EOS = "<|endoftext|>"
CORPUS = [
    "In the beginning God created the heavens and the earth.",
    "And the earth was waste and void; and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light.",
    "And God saw the light, that it was good: and God divided the light from the darkness.",
    "And God called the light Day, and the darkness he called Night.",
]


def train_tokenizer(texts: list[str], vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on ``texts`` in milliseconds, EOS = ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)


def numbered_docs(prefix: str, n: int) -> list[str]:
    """``n`` distinct documents of varied length, e.g. 'a0 light light ... day.'."""
    return [f"{prefix}{i} " + " ".join(["light"] * (1 + i % 7)) + " day." for i in range(n)]


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(CORPUS * 4)


@pytest.fixture(scope="session")
def new_tokenizer():
    """``new_tokenizer(vocab_size=300)``: a fresh tokenizer trained like ``tokenizer``."""
    return lambda vocab_size=300: train_tokenizer(CORPUS * 4, vocab_size)


@pytest.fixture(scope="session")
def make_docs():
    """``make_docs(prefix, n)``: ``n`` distinct small documents."""
    return numbered_docs


@pytest.fixture
def make_jsonl(tmp_path: Path):
    def make(name: str, docs: list[str]) -> Path:
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
        return path

    return make
