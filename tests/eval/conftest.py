"""Tiny model folders with the GPT-2 tokenizer, and a stub model whose log-probabilities are
fixed by hand, for the evaluation tests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from transformers import GPT2Tokenizer, LlamaConfig, LlamaForCausalLM

from wrinklefree import assets

# Hand-set next-token probabilities for the window [0, 1, 2, 3] over a 5-token vocabulary
# (token 4 is the mask): the logits at position i give token i + 1 the probability 1/2, 1/4, 1/8.
TARGET_PROBS = (0.5, 0.25, 0.125)


def _fixed_logits() -> torch.Tensor:
    rows = []
    for position, p in enumerate(TARGET_PROBS):
        row = torch.full((5,), (1 - p) / 4)
        row[position + 1] = p
        rows.append(row)
    rows.append(torch.full((5,), 0.2))  # the last position predicts nothing we score
    return torch.stack(rows).log()  # (L, V): softmax(log p) = p


class FixedLogProbs(nn.Module):
    """Returns the same logits for every input (so -log p(x_i) does not depend on the mask) and
    records every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device
        self.register_buffer("table", _fixed_logits())
        self.seen: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        self.seen.append(input_ids.clone())
        return SimpleNamespace(logits=self.table.expand(input_ids.shape[0], -1, -1))



@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy machine they only wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def stub():
    return FixedLogProbs()


@pytest.fixture(scope="session")
def gpt2_tokenizer(tmp_path_factory):
    return GPT2Tokenizer.from_pretrained(assets.gpt2_tokenizer_dir(tmp_path_factory.mktemp("v")))


def _save_tiny(folder, tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """A random 2-layer Llama (hidden 64) over ``tokenizer``'s vocabulary, saved with it."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def save_tiny():
    """``save_tiny(folder, tokenizer, seed=0)`` saves a tiny random Llama and returns it."""
    return _save_tiny


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, gpt2_tokenizer):
    folder = tmp_path_factory.mktemp("tiny")
    _save_tiny(folder, gpt2_tokenizer)
    return folder


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "heldout.txt"
    path.write_text("\n\n".join(f"The {i}th shepherd fed his flock by the river at dawn."
                                for i in range(40)))
    return path


# A word-level vocabulary for the fine-tuning tests: with ~40 embedding rows instead of GPT-2's
# 50k, a training step of the tiny model takes milliseconds.
WORDS = ("the a of and to in that it was for on with as his at by good bad article summary "
         "sheep ran field dog barked river shepherd fed flock : . \n").split(" ")


def _word_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<eos>"]
    words = specials + sorted({w.strip() for w in WORDS if w.strip()} | {"Article", "Summary"})
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                   pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="session")
def word_folder(tmp_path_factory):
    """A tiny random Llama with a word-level tokenizer of about 40 words, saved together."""
    folder = tmp_path_factory.mktemp("words")
    _save_tiny(folder, _word_tokenizer())
    return folder
