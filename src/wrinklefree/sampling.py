"""Picking the next token from logits: greedy, top-p nucleus sampling, the repetition penalty.

One step shared by every decoder (:mod:`wrinklefree.generate`'s autoregressive loop and block
diffusion, :mod:`wrinklefree.speculative`), so a seed and a setting mean the same token whichever
decoder runs them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-p nucleus of ``probs`` (..., V): the smallest set of most likely tokens whose mass
    reaches ``top_p``, renormalised (Holtzman et al. 2020, arXiv 1904.09751, Eq. 2-3).

    Returns ``(weights, ids)``, both (..., V), most likely first, zero weight past the nucleus.
    """
    top, ids = probs.sort(dim=-1, descending=True)  # (..., V)
    mass_before = top.cumsum(-1) - top  # mass of strictly more likely tokens
    weights = top.masked_fill(mass_before >= top_p, 0.0)
    return weights / weights.sum(-1, keepdim=True), ids


def next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of logits (..., V): argmax at temperature 0, else a sample from
    softmax(logits / temperature) restricted to the top-p nucleus. Returns long (...)."""
    if temperature == 0.0:
        return logits.argmax(-1)
    probs = (logits.float() / temperature).softmax(-1)  # (..., V)
    return sample(probs, top_p, generator)


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Lower the logits (n, V) of the tokens each row has already seen ((n, V) bool): CTRL's
    repetition penalty, which stops the loops greedy decoding falls into (``and the king, and the
    king, ...``) without sampling. 1.0 = off; CTRL suggests 1.2."""
    # Keskar et al. 2019 (arXiv 1909.05858) Sec. 4.1: x -> x/θ for seen tokens (x·θ if x < 0)
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def seen_tokens(input_ids: torch.Tensor, vocab_size: int,
                repetition_penalty: float) -> torch.Tensor | None:
    """(n, L) ids -> (n, V) bool, the tokens of each row's prompt; None when the penalty is off."""
    if repetition_penalty == 1.0:
        return None
    seen = torch.zeros(input_ids.shape[0], vocab_size, dtype=torch.bool, device=input_ids.device)
    return seen.scatter_(1, input_ids, True)


def pick_token(logits: torch.Tensor, seen: torch.Tensor | None, *, repetition_penalty: float,
               temperature: float, top_p: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`next_token` of logits (n, V) after :func:`penalize_repeats`; the picked tokens (n,)
    join ``seen`` in place. The one step every autoregressive decoder here takes."""
    if seen is None:
        return next_token(logits, temperature=temperature, top_p=top_p, generator=generator)
    logits = penalize_repeats(logits, seen, repetition_penalty)
    token = next_token(logits, temperature=temperature, top_p=top_p, generator=generator)
    seen.scatter_(1, token[:, None], True)
    return token


def sample(probs: torch.Tensor, top_p: float = 1.0, generator: torch.Generator | None = None,
           rounds: int = 8) -> torch.Tensor:
    """One token id per row of probs (..., V), drawn from the row's top-p nucleus (exactly).

    By rejection: draw from the whole distribution (inverse CDF) and keep the draw when it lies
    in the nucleus, i.e. when the tokens strictly more likely than it hold less than ``top_p``;
    a row is accepted with probability its nucleus mass (>= ``top_p``), and the accepted draws
    follow the renormalised nucleus. Rows still rejected after ``rounds`` draws (a tiny
    ``top_p``) are drawn from the sorted :func:`nucleus`. Why: sorting a 49k vocabulary per row
    and a multinomial over all of it were half of the time of batched sampling on CPU.
    """
    flat = probs.reshape(-1, probs.shape[-1])  # (N, V)
    rows, cdf = flat, flat.double().cumsum(-1)  # (n, V); float64: no drift over a large vocab
    if top_p >= 1.0:  # the whole distribution: one draw, always accepted
        return _inverse_cdf_draw(cdf, generator).view(probs.shape[:-1])
    tokens = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)  # (N,)
    todo = torch.arange(flat.shape[0], device=flat.device)  # rows not yet drawn
    for _ in range(rounds):
        draw = _inverse_cdf_draw(cdf, generator)  # (n, 1)
        accepted = (rows * (rows > rows.gather(-1, draw))).sum(-1) < top_p  # (n,) mass above
        tokens[todo[accepted]] = draw[accepted, 0]
        todo, rows, cdf = todo[~accepted], rows[~accepted], cdf[~accepted]
        if len(todo) == 0:
            return tokens.view(probs.shape[:-1])
    weights, ids = nucleus(flat[todo], top_p)  # (n, V)
    picked = torch.multinomial(weights, 1, generator=generator)  # (n, 1)
    tokens[todo] = ids.gather(-1, picked)[:, 0]
    return tokens.view(probs.shape[:-1])


def _inverse_cdf_draw(cdf: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of an unnormalised CDF (n, V), drawn in proportion to its steps: (n, 1)."""
    u = torch.rand(cdf.shape[0], 1, generator=generator, dtype=cdf.dtype, device=cdf.device)
    draw = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # (n, 1)
    return draw.clamp_(max=cdf.shape[-1] - 1)


def check_sampling(temperature: float, top_p: float, repetition_penalty: float = 1.0) -> None:
    """Raise a ValueError naming the first sampling setting out of its range."""
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 = off, 1.2 = CTRL's), got "
                         f"{repetition_penalty}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def eos_set(eos_token_id: int | Iterable[int] | None) -> set[int]:
    """One end-of-sequence id, several, or None as a set."""
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
