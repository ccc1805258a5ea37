"""Parity of an exported model with the PyTorch model it came from: same tokens, compare logits.

The acceptance test of every export. llama.cpp runs through the optional ``llama-cpp-python``
package (``requirements-llamacpp.txt``); it quantizes activations per 256-block (TQ types) or
per 32-block (Q8_0) where our BitLinear quantizes per token, so expect close, not bit-exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


def compare_logits(ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Agreement of two (L, V) logit arrays: mean cosine similarity per position, top-1 agreement
    (fraction of positions with the same argmax) and the largest absolute difference."""
    ref, test = np.asarray(ref, dtype=np.float64), np.asarray(test, dtype=np.float64)
    if ref.shape != test.shape:
        raise ValueError(f"logit shapes differ: {ref.shape} vs {test.shape}")
    cos = (ref * test).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(test, axis=-1))
    return {
        "cosine": float(cos.mean()),
        "top1": float((ref.argmax(-1) == test.argmax(-1)).mean()),
        "max_abs_diff": float(np.abs(ref - test).max()),
    }


@torch.no_grad()
def torch_logits(model: nn.Module, tokens: list[int]) -> np.ndarray:
    """(L, V) float32 logits of a transformers model on one sequence."""
    ids = torch.tensor([tokens], dtype=torch.long)
    return model(input_ids=ids, use_cache=False).logits[0].float().numpy()


def llamacpp_logits(path: str | Path, tokens: list[int], n_threads: int = 2,
                    lora: str | Path | None = None) -> np.ndarray:
    """(L, V) float32 logits of a GGUF file evaluated by llama.cpp (llama-cpp-python), with the
    LoRA adapter ``lora`` (e.g. the LRC of ``wf export``) applied at scale 1."""
    from wrinklefree.llamacpp import load

    n = len(tokens)
    llm = load(path, n_ctx=max(n, 16), n_threads=n_threads, lora=lora, n_batch=max(n, 16),
               n_ubatch=max(n, 16), logits_all=True)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[:n], dtype=np.float32)
    finally:
        llm.close()
