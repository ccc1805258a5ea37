"""Fixtures for end-to-end training (tests/train, tests/bench): a tiny model folder with the GPT-2
tokenizer, small text files, and a fast `wf train` config."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Tokenizer, LlamaConfig, LlamaForCausalLM

from wrinklefree import assets
from wrinklefree.train.compose import compose_train_config


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory):
    """A random 2-layer Llama (hidden 64) saved with the GPT-2 BPE tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = GPT2Tokenizer.from_pretrained(assets.gpt2_tokenizer_dir(folder / "vocab"))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def text_files(tmp_path_factory):
    """Two small local sources: plain English sentences and digit strings."""
    folder = tmp_path_factory.mktemp("text")
    words = (folder / "words.txt")
    words.write_text("\n\n".join(f"The {i}th shepherd fed his flock by the river."
                                 for i in range(300)))
    digits = (folder / "digits.txt")
    digits.write_text("\n\n".join(" ".join(str((i * 7 + j) % 10) for j in range(20))
                                  for i in range(300)))
    return {"words": words, "digits": digits}


@pytest.fixture
def tiny_overrides(tiny_source, text_files, tmp_path):
    """The `wf train` overrides of a fast training run; extra overrides as arguments."""

    def make(*overrides: str) -> list[str]:
        return [
            f"model.source={tiny_source}",
            f"data.sources=[{{name: words, path: '{text_files['words']}'}}]",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.seq_len=32",
            "model.calibration_batches=1",
            "training.batch_size=2",
            "training.val_windows=2",
            "training.val_every=1000",
            "training.sample_tokens=4",
            "training.eval_before=false",
            "training.reconstruct.epochs=0",  # the demo's stage; tests that want it set it
            "model.convert.fp_layers=[]",  # the demo keeps 4 layers full precision; tiny has 2
            "model.convert.lrc_rank=null",  # the demo's low-rank correction (LRC tests set it)
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            f"run_dir={tmp_path / 'run'}",
            *overrides,
        ]

    return make


@pytest.fixture
def tiny_config(tiny_overrides):
    """Compose a fast training config; extra Hydra overrides as arguments."""

    def make(*overrides: str):
        return compose_train_config(tiny_overrides(*overrides))

    return make
