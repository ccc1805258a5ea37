"""Tiny converted Llama models with a byte-level BPE tokenizer, saved like `wf convert` does.

A plain module (not conftest) so test files can import it unambiguously."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from wrinklefree.convert import convert_model_to_bitnet

# Widths are multiples of 256 so llama.cpp's TQ1_0 / TQ2_0 apply to every projection.
TINY = dict(vocab_size=384, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256, tie_word_embeddings=True)

TEXT = (
    "In the beginning God created the heaven and the earth. And the earth was waste and void; "
    "and darkness was upon the face of the deep: and the Spirit of God moved upon the face of "
    "the waters. And God said, Let there be light: and there was light. 1234 5678 90."
)


def tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE trained in milliseconds on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 8, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([TEXT] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")


def save_tiny(path: Path, seed: int = 0, **overrides) -> Path:
    """Build, convert (random SubLN gains so the norms matter) and save a tiny BitNet Llama."""
    config_kw = {k: overrides.pop(k) for k in list(overrides) if k in LlamaConfig().to_dict()}
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY, **config_kw}))
    convert_model_to_bitnet(model, **overrides, calibrate=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("sub_norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    tiny_tokenizer(model.config.vocab_size).save_pretrained(path)
    return path


