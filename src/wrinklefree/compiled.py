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

from wrinklefree.generate import DecodeStats, check_one_row, decode_ar


class CompiledSteps:
    """The compiled decoding strategy of :func:`~wrinklefree.generate.decode_ar`: a
    ``StaticCache`` of ``max_cache_len`` positions and the one-token step compiled once
    (``backend``: ``inductor``; ``eager`` for tests)."""

    def __init__(self, model: nn.Module, max_cache_len: int, backend: str = "inductor") -> None:
        from transformers import StaticCache

        self.model, self.length = model, 0
        self.cache = cache = StaticCache(config=model.config, max_cache_len=max_cache_len)

        def step(token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
            return model(input_ids=token, past_key_values=cache, use_cache=True,
                         cache_position=position).logits[:, -1]

        self.compiled = torch.compile(step, backend=backend, dynamic=False)

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:  # (n, P) -> (n, V)
        self.length = prompt.shape[1]
        return self.model(input_ids=prompt, past_key_values=self.cache, use_cache=True,
                          cache_position=torch.arange(self.length),
                          logits_to_keep=1).logits[:, -1]

    def step(self, token: torch.Tensor, index: int) -> torch.Tensor:  # (n,) -> (n, V)
        return self.compiled(token[:, None], torch.tensor([self.length + index]))


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
    with the one-token decode step compiled (:class:`CompiledSteps`). Same loop, same sampling,
    same tokens up to float reassociation in the compiled graph."""
    check_one_row(input_ids)
    steps = CompiledSteps(model, input_ids.shape[1] + max_new_tokens, backend)
    for token in decode_ar(steps, input_ids, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, seed=seed,
                           eos_token_id=eos_token_id, stats=stats,
                           repetition_penalty=repetition_penalty):
        yield [int(token)]
