"""Likelihood of diffusion students: the masked-diffusion ELBO, comparable with AR NLL.

A DLM student does not define p(x) left to right, so its perplexity is bounded instead: the
negative ELBO of masked diffusion with the linear schedule alpha_t = 1 - t (MDLM, arXiv
2406.07524; LLaDA, arXiv 2502.09992, Eq. 3):

    -log p(x) <= E_{t ~ U(0, 1)} E_{x_t} [ (1/t) sum_{i masked in x_t} -log p(x_i | x_t) ]

Each token is masked independently with probability t. We use the conventions of our DLM
objective: token shift (the logits at i-1 predict masked token i) and position 0 never masked,
so the bound covers the same L-1 tokens per window as the AR NLL of
:func:`wrinklefree.eval.perplexity.mean_nll`, and both read in nats per token.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

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
    if num_samples < 1 or not 0.0 < eps < 1.0:
        raise ValueError(f"need num_samples >= 1 and 0 < eps < 1, got {num_samples}, {eps}")
    if windows.shape[1] < 2:
        raise ValueError(f"windows need at least 2 tokens, got {windows.shape[1]}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    maskable = maskable_positions({"labels": windows})  # (N, L): all but position 0
    total = 0.0
    chunks = list(zip(windows.split(batch_size), maskable.split(batch_size), strict=True))
    for chunk, can_mask in tqdm(chunks, desc="elbo", disable=not progress):
        for t in stratified_rates(num_samples, eps, generator):
            mask = (torch.rand(chunk.shape, generator=generator) < t) & can_mask  # (B, L)
            rate = t.expand(chunk.shape[0])  # (B,)
            terms = masked_nll_sum(model, chunk.to(device), mask.to(device), rate.to(device),
                                   mask_token_id)
            total += float(terms.sum())
    model.train(was_training)
    return total / (num_samples * int(maskable.sum()))
