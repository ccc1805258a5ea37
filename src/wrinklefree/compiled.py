"""Autoregressive decoding with a static KV cache and a ``torch.compile``d decode step.

Why: at batch 1 on CPU a decode step of a small model is mostly per-token Python and small-op
overhead of the transformers decoder, not matmul time (SmolLM2-135M: ~65 ms per token, of which the
int8 ternary matmuls are a fraction). A static cache (fixed shapes) lets inductor compile the whole
step into one graph: measured on SmolLM2-135M packed int8 (``_int_mm`` kernel), 1 thread: 17.3
tok/s eager -> 53.3 tok/s compiled (fp32: 16.4 -> 17.8), after a one-off compile of ~4 minutes on
a loaded 2-core machine (docs/generate.md). Worth it for long generations and servers, not for a
30-token answer.

oneDNN's pre-packed int8 weights are opaque tensors inductor cannot trace, so compile a model
packed with ``pack_model(model, kernel="int8", onednn=False)`` (``torch._int_mm``), or an fp32 or
fake-quant model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn

from wrinklefree.generate import DecodeStats, _check_sampling, _eos_set, pick_token, seen_tokens


@torch.no_grad()
def generate_ar_compiled(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    eos_token_id: int | Iterable[int] | None = None,
    stats: DecodeStats | None = None,
    repetition_penalty: float = 1.0,
    backend: str = "inductor",
) -> Iterator[list[int]]:
    """:func:`wrinklefree.generate.generate_ar` on a ``StaticCache`` sized prompt + new tokens,
    with the one-token decode step compiled (``backend``: ``inductor``; ``eager`` for tests).
    Same sampling, same tokens up to float reassociation in the compiled graph."""
    from transformers import StaticCache

    _check_sampling(temperature, top_p, repetition_penalty)
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must have shape (1, L), got {tuple(input_ids.shape)}")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    eos, stats = _eos_set(eos_token_id), stats if stats is not None else DecodeStats()
    length = input_ids.shape[1]
    cache = StaticCache(config=model.config, max_cache_len=length + max_new_tokens)

    def step(token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return model(input_ids=token, past_key_values=cache, use_cache=True,
                     cache_position=position).logits[:, -1]

    compiled = torch.compile(step, backend=backend, dynamic=False)
    out = model(input_ids=input_ids, past_key_values=cache, use_cache=True,
                cache_position=torch.arange(length), logits_to_keep=1)
    logits = out.logits[:, -1]  # (1, V)
    seen = seen_tokens(input_ids, logits.shape[-1], repetition_penalty)  # (1, V) or None
    for i in range(max_new_tokens):
        token = pick_token(logits, seen, repetition_penalty=repetition_penalty,
                           temperature=temperature, top_p=top_p, generator=generator)  # (1,)
        stats.new_tokens += 1
        yield [int(token)]
        if int(token) in eos or i == max_new_tokens - 1:
            return
        logits = compiled(token.view(1, 1), torch.tensor([length + i]))
        stats.model_calls += 1
