"""Lossless self-speculative decoding of a block-diffusion student: greedy AR text, fewer forwards.

A student trained with the block-diffusion layout (:mod:`wrinklefree.block_diffusion`)
is two models in one set of weights: the clean view is an ordinary causal LM, and the noisy view
fills masked positions of a block from the clean text of the blocks before it. Each forward here
runs both, as the training forward does:

- **verify** (clean view, causal, on the KV cache): the pending tokens ``[g, d_1 .. d_m]`` — ``g``
  the next greedy token (certain), ``d_j`` drafts. Greedy AR would pick ``t_j`` from the logits
  before position j; the drafts are accepted while ``d_j == t_j``, and the first ``t_j`` that
  differs (or the one after the last draft) comes free: it is the exact next greedy token;
- **draft** (noisy view): the block of the first uncertain position, its known tokens (committed
  text and ``g``) as they are and the rest masked, attending to the cached clean text of the
  earlier blocks and bidirectionally to itself. Its greedy fill gives the drafts of the next
  forward, for the positions after the free token. They only depend on certain tokens, so they
  stay valid whatever this forward accepts (Jacobi-style re-drafting, CLLM arXiv 2403.00835).

Every committed token is a greedy AR choice from causal logits over exactly its prefix, so the
text equals :func:`~wrinklefree.generate.generate_ar`'s (with the same repetition penalty), up
to float rounding between a one-token and a many-token forward: tested on tiny models, and
checked by ``wf bench dlm`` on the real student in float64, because a ternary student's int8
activation quantizer turns float32's shape-dependent rounding into different logits within a
few tokens (docs/generate.md). The drafts only decide how many tokens a forward
commits: 1 when none is accepted, so it never costs more forwards than AR. A block's opening
token is only known once the block before it is verified, so a block takes at least two
forwards: at most ``block_size / 2`` new tokens per forward.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn
from transformers import DynamicCache

from wrinklefree.block_diffusion import attention_bias, model_dtype
from wrinklefree.generate import (
    NOT_DLM_HINT,
    DecodeStats,
    NotDLMModelError,
    check_one_row,
    greedy_fill,
)
from wrinklefree.sampling import check_sampling, eos_set, pick_token, seen_tokens


@torch.no_grad()
def generate_speculative(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    mask_token_id: int | None,
    max_new_tokens: int,
    block_size: int = 32,
    eos_token_id: int | Iterable[int] | None = None,
    stats: DecodeStats | None = None,
    repetition_penalty: float = 1.0,
) -> Iterator[list[int]]:
    """Yield the greedy AR continuation of input_ids (1, L), several tokens per forward.

    Chunks are the tokens each forward commits. Stops after ``max_new_tokens`` or after an
    end-of-sequence token. ``block_size`` must be the student's training block size (the drafts
    come from its blocks; a wrong size only makes them worse). ``repetition_penalty`` as in
    :func:`~wrinklefree.generate.generate_ar`; the verifier applies it token by token, so the
    text equals ``generate_ar`` with the same penalty.
    """
    if mask_token_id is None:
        raise NotDLMModelError("no mask token: config.mask_token_id is not set and the tokenizer "
                               "has none; " + NOT_DLM_HINT)
    if block_size < 2:
        raise ValueError(f"need block_size >= 2, got {block_size}")
    check_one_row(input_ids)
    check_sampling(0.0, 1.0, repetition_penalty)
    eos = eos_set(eos_token_id)
    stats = stats if stats is not None else DecodeStats()
    seq = input_ids[0].tolist()  # committed text: the prompt, then every committed token
    end = len(seq) + max_new_tokens  # one past the last position to produce
    cache = DynamicCache()
    out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    seen = seen_tokens(input_ids, out.logits.shape[-1], repetition_penalty)  # (1, V) or None
    pending = [_greedy(out.logits[:, -1], seen, repetition_penalty)]  # [g, drafts...]
    while True:
        pending = pending[: end - len(seq)]  # never verify past the budget
        if pending[0] in eos or len(seq) + 1 == end:
            stats.new_tokens += 1
            yield pending[:1]  # certain, and nothing follows it
            return
        clean, noisy = verify_and_draft(model, cache, seq, pending, mask_token_id, block_size,
                                        end, input_ids.device)
        stats.model_calls += 1
        accepted, free = _verify(clean, pending, seen, repetition_penalty)
        stats.count_drafts(len(pending) - 1, accepted)
        committed = pending[: 1 + accepted]
        _keep(cache, len(seq) + len(committed))  # drop the rejected drafts and the draft block
        stop = next((i for i, t in enumerate(committed) if t in eos), None)
        if stop is not None:
            committed = committed[: stop + 1]
        seq += committed
        stats.new_tokens += len(committed)
        yield committed
        if stop is not None or len(seq) == end:
            return
        pending = [free] + _drafts(noisy, len(seq) + 1, mask_token_id)


def _greedy(logits: torch.Tensor, seen: torch.Tensor | None, penalty: float) -> int:
    """Greedy AR's pick from logits (1, V), the repetition penalty applied (seen updated)."""
    return int(pick_token(logits, seen, repetition_penalty=penalty, temperature=0.0, top_p=1.0)[0])


def _verify(logits: torch.Tensor, pending: list[int], seen: torch.Tensor | None,
            penalty: float) -> tuple[int, int]:
    """(accepted drafts, the free token) from the causal logits (m + 1, V) of ``pending``.

    Greedy AR's token after pending[j] is picked from logits[j]; drafts are accepted while they
    equal it. ``seen`` ends holding exactly the committed tokens and the free one.
    """
    accepted = 0
    for j in range(len(pending)):
        token = _greedy(logits[j : j + 1], seen, penalty)
        if j + 1 == len(pending) or pending[j + 1] != token:
            return accepted, token
        accepted += 1
    raise AssertionError("unreachable: the loop returns at its last position")


def _keep(cache: DynamicCache, length: int) -> None:
    """Crop the cache to its first ``length`` positions."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class _Noisy:
    """The draft forward's noisy-view logits (n, V) and the position of its first row."""

    def __init__(self, logits: torch.Tensor, start: int) -> None:
        self.logits, self.start = logits, start


def verify_and_draft(model: nn.Module, cache: DynamicCache, seq: list[int], pending: list[int],
             mask_token_id: int, block_size: int, end: int,
             device: torch.device) -> tuple[torch.Tensor, _Noisy | None]:
    """One forward over [pending (clean, causal) | the draft block (noisy)] on the cache.

    The draft block is the block of the first uncertain position q = len(seq) + 1: its known
    tokens (committed text and pending[0]) then masks up to the block's end (or ``end``). It is
    left out when it could draft nothing (q opens a block, or fewer than two masks fit). Returns
    the clean rows' logits (len(pending), V) and the noisy rows' (or None).
    """
    past, first = len(seq), len(seq) + 1  # cached tokens; first uncertain position
    start = first // block_size * block_size
    stop = min(start + block_size, end)
    draft = first % block_size != 0 and stop - first >= 2
    known = (seq + pending[:1])[start:] if draft else []
    noisy = known + [mask_token_id] * (stop - first) if draft else []
    ids = torch.tensor([pending + noisy], device=device)  # (1, Q)
    positions = torch.tensor([list(range(past, past + len(pending)))
                              + list(range(start, start + len(noisy)))], device=ids.device)
    allowed = draft_attention(past, len(pending), len(noisy), start, ids.device)
    logits = model(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True,
                   attention_mask=attention_bias(allowed, model, model_dtype(model))).logits[0]
    clean = logits[: len(pending)]  # (m + 1, V)
    return clean, (_Noisy(logits[len(pending):], start) if draft else None)


def draft_attention(past: int, n_clean: int, n_noisy: int, block_start: int,
                    device: torch.device) -> torch.Tensor:
    """The 4D boolean mask (1, 1, Q, past + Q) of one verify-and-draft forward, True = attend.

    Clean rows (the pending tokens) attend causally: the whole cache and the pending tokens up
    to themselves. Noisy rows (the draft block) attend as in the training layout: the cached
    clean text of the earlier blocks (positions < ``block_start``) and the whole draft block.
    """
    queries = n_clean + n_noisy
    allowed = torch.zeros(queries, past + queries, dtype=torch.bool, device=device)
    allowed[:n_clean, :past] = True
    allowed[:n_clean, past : past + n_clean] = torch.ones(
        n_clean, n_clean, dtype=torch.bool, device=device).tril()
    allowed[n_clean:, :block_start] = True
    allowed[n_clean:, past + n_clean :] = True
    return allowed[None, None]


def _drafts(noisy: _Noisy | None, position: int, mask_token_id: int) -> list[int]:
    """Greedy drafts for ``position`` onwards from the noisy view (token shift: the logits at
    i - 1 predict position i); none past the draft block."""
    if noisy is None:
        return []
    rows = noisy.logits[position - 1 - noisy.start : -1]  # predicts position .. block end
    return greedy_fill(rows, mask_token_id)[0].tolist() if len(rows) else []
