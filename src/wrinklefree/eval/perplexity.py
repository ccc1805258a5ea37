"""Held-out perplexity on clean (unmasked) text, identical windows for every model."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm


@torch.no_grad()
def perplexity(
    model: nn.Module, windows: torch.Tensor, batch_size: int = 4, progress: bool = False
) -> float:
    """exp(mean next-token cross-entropy) over all positions of ``windows`` (N, L).

    Every window is scored independently from its first token; the mean is over tokens, so
    models compare exactly when given the same windows.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for chunk in tqdm(windows.split(batch_size), desc="perplexity", disable=not progress):
        chunk = chunk.to(device)
        logits = model(input_ids=chunk, use_cache=False).logits[:, :-1]  # (B, L-1, V)
        targets = chunk[:, 1:]  # (B, L-1)
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")
        total_nll += float(nll)
        total_tokens += targets.numel()
    model.train(was_training)
    return math.exp(total_nll / total_tokens)
