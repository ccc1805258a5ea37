"""Likelihood of diffusion students: the masked-diffusion ELBO, comparable with AR NLL.

A DLM student does not define p(x) left to right, so its perplexity is bounded instead: the
negative ELBO of masked diffusion with the linear schedule alpha_t = 1 - t (MDLM, arXiv
2406.07524; LLaDA, arXiv 2502.09992, Eq. 3):

    -log p(x) <= E_{t ~ U(0, 1)} E_{x_t} [ (1/t) sum_{i masked in x_t} -log p(x_i | x_t) ]

Each token is masked independently with probability t. We use the conventions of our DLM
objective: token shift (the logits at i-1 predict masked token i) and position 0 never masked,
so the bound covers the same L-1 tokens per window as the AR NLL of
:func:`wrinklefree.eval.perplexity.mean_nll`, and both read in nats per token.

Two bounds share one Monte-Carlo loop (:func:`masked_draws`: the same seed gives the same masks):
:func:`masked_elbo` for plain masked-diffusion students and :func:`block_masked_elbo` for
block-diffusion students under the factorisation their decoder uses (Fast-dLLM v2).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from wrinklefree.block_diffusion import block_diffusion_forward, default_positions
from wrinklefree.eval.perplexity import evaluating
from wrinklefree.objectives.dlm import maskable_positions


def stratified_rates(num_samples: int, eps: float, generator: torch.Generator) -> torch.Tensor:
    """(K,) mask rates, one uniform draw in each of K equal strata of [eps, 1).

    Stratifying t lowers the Monte-Carlo variance of the 1/t-weighted estimate without bias.
    """
    u = torch.rand(num_samples, generator=generator)  # (K,)
    return eps + (1 - eps) * (torch.arange(num_samples) + u) / num_samples


@torch.no_grad()
def masked_nll_sum(
    model: nn.Module,
    windows: torch.Tensor,
    mask: torch.Tensor,
    rate: torch.Tensor,
    mask_token_id: int,
) -> torch.Tensor:
    """(B,) one-sample ELBO term per window: (1/t) sum_{masked i} -log p(x_i | x_t).

    windows (B, L) clean tokens, mask (B, L) True where masked (never position 0), rate (B,) t.
    """
    if mask[:, 0].any():
        raise ValueError("position 0 cannot be masked: with token shift nothing predicts it")
    inputs = windows.masked_fill(mask, mask_token_id)  # x_t
    logits = model(input_ids=inputs, use_cache=False).logits[:, :-1]  # (B, L-1, V)
    # token shift: the logits at i-1 score token i
    nll = F.cross_entropy(logits.float().transpose(1, 2), windows[:, 1:], reduction="none")
    return (nll * mask[:, 1:]).sum(-1) / rate  # LLaDA Eq. 3: 1/t-weighted masked CE


@torch.no_grad()
def masked_elbo(
    model: nn.Module,
    windows: torch.Tensor,
    mask_token_id: int,
    *,
    num_samples: int = 16,
    eps: float = 1e-3,
    batch_size: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """Negative masked ELBO in nats per token, a Monte-Carlo upper bound on the NLL.

    Every window gets ``num_samples`` stratified rates t in [eps, 1) and one random mask per
    rate; the mean is over samples and over the L-1 predictable tokens of each window. The same
    ``seed`` gives the same masks for every model of the same window shape.
    """
    if mask_token_id is None or mask_token_id < 0:
        raise ValueError("the masked ELBO needs the model's mask token id (config.mask_token_id, "
                         "set by the DLM objective); this model is not a DLM student")
    _check_options(windows, num_samples, eps)
    maskable = maskable_positions({"labels": windows})  # (N, L): all but position 0
    total = 0.0
    with evaluating(model) as device:
        for _, chunk, mask, rate in masked_draws(windows, maskable, num_samples=num_samples,
                                                 eps=eps, batch_size=batch_size, seed=seed,
                                                 progress=progress):
            terms = masked_nll_sum(model, chunk.to(device), mask.to(device), rate.to(device),
                                   mask_token_id)
            total += float(terms.sum())
    return total / (num_samples * int(maskable.sum()))


# ----------------------------------------------------------------------------- block diffusion


def block_opening(position_ids: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B, L) bool: tokens that open a block (position % block_size == 0) other than a
    document's first token: the decoder predicts them autoregressively from the clean prefix."""
    return (position_ids % block_size == 0) & (position_ids > 0)


@torch.no_grad()
def block_elbo_terms(
    model: nn.Module,
    windows: torch.Tensor,
    mask: torch.Tensor,
    rate: torch.Tensor,
    mask_token_id: int,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window (B,): the AR NLL of the block-opening tokens and the 1/t-weighted masked CE.

    windows (B, L) clean tokens (one document each, positions 0..L-1), mask (B, L) True where
    masked (never position 0 nor a block-opening token), rate (B,) the mask rate t.
    """
    positions = default_positions(windows)
    if (mask & ((positions % block_size) == 0)).any():
        raise ValueError("block-opening tokens (position % block_size == 0) cannot be masked: "
                         "the decoder predicts them autoregressively")
    noisy = windows.masked_fill(mask, mask_token_id)  # x_t
    out = block_diffusion_forward(model, windows, noisy, block_size, position_ids=positions)
    targets = windows[:, 1:]  # token shift: the logits at i-1 score token i
    ar = F.cross_entropy(out.logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    masked = F.cross_entropy(out.dlm_logits[:, :-1].float().transpose(1, 2), targets,
                             reduction="none")  # (B, L-1)
    opening = block_opening(positions, block_size)[:, 1:]
    # Fast-dLLM v2 factorisation: AR for block-opening tokens, masked diffusion for the rest of
    # each block (LLaDA, arXiv 2502.09992, Eq. 3: (1/t) Σ_masked -log p(x_i | x_t))
    return (ar * opening).sum(-1), (masked * mask[:, 1:]).sum(-1) / rate


@torch.no_grad()
def block_masked_elbo(
    model: nn.Module,
    windows: torch.Tensor,
    mask_token_id: int,
    block_size: int,
    *,
    num_samples: int = 8,
    eps: float = 1e-3,
    batch_size: int = 4,
    seed: int = 0,
) -> float:
    """Negative ELBO of a block-diffusion student, nats per token (an upper bound on its NLL).

    The decoder's factorisation: each block-opening token autoregressively from the clean prefix,
    the rest of each block by masked diffusion given the block's first token and the clean
    previous blocks, so -log p(x) <= Σ_opening -log p_AR(x_i | x_<i) + E_t[(1/t) Σ_masked
    -log p(x_i | x_t, clean previous blocks)] (MDLM, arXiv 2406.07524; LLaDA Eq. 3), with
    ``num_samples`` stratified t ~ U[eps, 1) per window. It covers the same L-1 tokens per window
    as the AR NLL of :func:`wrinklefree.eval.perplexity.mean_nll`.
    """
    _check_options(windows, num_samples, eps)
    maskable = default_positions(windows) % block_size != 0  # not position 0, not block-opening
    total = 0.0
    with evaluating(model) as device:
        for k, chunk, mask, rate in masked_draws(windows, maskable, num_samples=num_samples,
                                                 eps=eps, batch_size=batch_size, seed=seed):
            ar, diffusion = block_elbo_terms(model, chunk.to(device), mask.to(device),
                                             rate.to(device), mask_token_id, block_size)
            # the AR term does not depend on the mask: count it once per window
            total += float(diffusion.sum()) / num_samples + (float(ar.sum()) if k == 0 else 0.0)
    return total / (windows.shape[0] * (windows.shape[1] - 1))


# ----------------------------------------------------------------------------- Monte Carlo


def masked_draws(
    windows: torch.Tensor,
    maskable: torch.Tensor,
    *,
    num_samples: int,
    eps: float,
    batch_size: int,
    seed: int,
    progress: bool = False,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The Monte-Carlo draws of both bounds: per chunk of ``batch_size`` windows (N, L),
    ``num_samples`` stratified rates t and one random mask per rate, restricted to ``maskable``
    (N, L). Yields (sample index k, windows (B, L), mask (B, L), rate (B,)) on the CPU.

    One CPU generator seeded with ``seed`` draws everything in a fixed order, so every model
    scored on windows of the same shape sees the same masks (a paired comparison).
    """
    generator = torch.Generator().manual_seed(seed)
    chunks = list(zip(windows.split(batch_size), maskable.split(batch_size), strict=True))
    for chunk, can_mask in tqdm(chunks, desc="elbo", disable=not progress):
        for k, t in enumerate(stratified_rates(num_samples, eps, generator)):
            mask = (torch.rand(chunk.shape, generator=generator) < t) & can_mask  # (B, L)
            yield k, chunk, mask, t.expand(chunk.shape[0])


def _check_options(windows: torch.Tensor, num_samples: int, eps: float) -> None:
    if num_samples < 1 or not 0.0 < eps < 1.0:
        raise ValueError(f"need num_samples >= 1 and 0 < eps < 1, got {num_samples}, {eps}")
    if windows.shape[1] < 2:
        raise ValueError(f"windows need at least 2 tokens, got {windows.shape[1]}")
