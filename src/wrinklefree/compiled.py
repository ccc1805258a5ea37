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

from collections.abc import Iterator

import torch
import torch.nn as nn

from wrinklefree.generate import stream_row


class CompiledSteps:
    """The compiled decoding strategy of :func:`~wrinklefree.generate.decode_ar`: a
    ``StaticCache`` sized prompt + ``max_new_tokens`` and the one-token step compiled once
    (``backend``: ``inductor``; ``eager`` for tests)."""

    def __init__(self, model: nn.Module, max_new_tokens: int, backend: str = "inductor") -> None:
        self.model, self.max_new_tokens, self.backend = model, max_new_tokens, backend
        self.length, self.cache, self.compiled = 0, None, None

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:  # (n, P) -> (n, V)
        from transformers import StaticCache

        model, self.length = self.model, prompt.shape[1]
        self.cache = cache = StaticCache(config=model.config,
                                         max_cache_len=self.length + self.max_new_tokens)

        def step(token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
            return model(input_ids=token, past_key_values=cache, use_cache=True,
                         cache_position=position).logits[:, -1]

        self.compiled = torch.compile(step, backend=self.backend, dynamic=False)
        return model(input_ids=prompt, past_key_values=cache, use_cache=True,
                     cache_position=torch.arange(self.length), logits_to_keep=1).logits[:, -1]

    def step(self, token: torch.Tensor, index: int) -> torch.Tensor:  # (n,) -> (n, V)
        return self.compiled(token[:, None], torch.tensor([self.length + index]))


@torch.no_grad()
def generate_ar_compiled(model: nn.Module, input_ids: torch.Tensor, *, max_new_tokens: int,
                         backend: str = "inductor", **sampling) -> Iterator[list[int]]:
    """:func:`wrinklefree.generate.generate_ar` (``sampling``: its other keywords: temperature,
    top_p, seed, eos_token_id, stats, repetition_penalty) on a ``StaticCache`` with the
    one-token decode step compiled (:class:`CompiledSteps`). Same loop, same sampling, same
    tokens up to float reassociation in the compiled graph."""
    steps = CompiledSteps(model, max_new_tokens, backend)
    yield from stream_row(steps, input_ids, max_new_tokens=max_new_tokens, **sampling)
