"""Tiny random decoders built from configs, for tests (a plain module, importable by name)."""

from __future__ import annotations

import torch
import transformers

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)

# (config class, extra config kwargs) for every architecture conversion is tested on
ARCHITECTURES = {
    "llama": (transformers.LlamaConfig, {}),
    "qwen2": (transformers.Qwen2Config, {}),  # q/k/v biases
    "qwen3": (transformers.Qwen3Config, {"head_dim": 16}),  # q_norm / k_norm
    "mistral": (transformers.MistralConfig, {"sliding_window": None}),
}


def tiny_config(arch: str = "llama", **overrides):
    config_cls, extra = ARCHITECTURES[arch]
    return config_cls(**{**TINY, **extra, **overrides})


def tiny_model(arch: str = "llama", seed: int = 0, head: str = "causal", **overrides):
    """A tiny random model; ``head`` is 'causal' or 'classification' (num_labels=2)."""
    torch.manual_seed(seed)
    config = tiny_config(arch, **overrides)
    if head == "classification":
        config.num_labels = 2
        config.pad_token_id = 0
        return transformers.AutoModelForSequenceClassification.from_config(config).eval()
    return transformers.AutoModelForCausalLM.from_config(config).eval()
