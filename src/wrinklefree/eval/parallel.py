"""Why a block-diffusion student decodes k tokens per forward: its confidence per block offset.

Block diffusion (Fast-dLLM v2, arXiv 2509.26328) commits, per denoising step, every masked
position whose confidence (the probability of its greedy token) exceeds a threshold τ. The first
step of a block is the hardest and sets the pace: the block's opening token is known (predicted
autoregressively) and every other position is masked. :func:`block_confidence` runs exactly that
step for every block of held-out windows, each on its clean prefix (the training layout's noisy
row, :func:`~wrinklefree.block_diffusion.block_diffusion_forward`), and reports per
offset inside the block the mean confidence, the accuracy of the greedy token and the fraction
of positions above each τ; and per τ the mean number of positions the first step commits
(at least one, as the decoder does). A student whose offsets >= 2 sit at unigram-level confidence
decodes one token per forward at any useful τ, however its AR perplexity looks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from wrinklefree.block_diffusion import block_diffusion_forward, default_positions
from wrinklefree.eval.perplexity import evaluating
from wrinklefree.generate import greedy_fill


@torch.no_grad()
def block_confidence(
    model: nn.Module,
    windows: torch.Tensor,
    mask_token_id: int,
    block_size: int,
    thresholds: Iterable[float] = (0.9, 0.7, 0.5),
) -> dict[str, Any]:
    """The first denoising step of every block of ``windows`` (N, L), one document each.

    Returns ``offsets``: one row per offset o in 1..block_size-1 (``confidence``, ``accuracy``,
    ``above`` {τ: fraction}), and ``first_step``: {τ: mean positions committed per block}, over
    the whole blocks of the windows (a trailing partial block is left out).
    """
    if block_size < 2 or windows.shape[1] < block_size:
        raise ValueError(f"need block_size >= 2 and windows of at least one block, got "
                         f"block_size {block_size}, windows {tuple(windows.shape)}")
    thresholds = [float(t) for t in thresholds]
    whole = windows.shape[1] // block_size * block_size  # whole blocks only
    with evaluating(model) as device:
        windows = windows[:, :whole].to(device)
        offset = default_positions(windows) % block_size  # (N, L)
        noisy = windows.masked_fill(offset != 0, mask_token_id)  # opening token + masks
        out = block_diffusion_forward(model, windows, noisy, block_size)
    # token shift: the noisy logits at i - 1 predict position i
    tokens, confidence = greedy_fill(out.dlm_logits[:, :-1], mask_token_id)  # (N, L-1) each
    correct = (tokens == windows[:, 1:]).float()

    def by_block(values: torch.Tensor) -> torch.Tensor:
        """(N, L-1) over positions 1.. -> (N·blocks, block_size - 1) over offsets 1.."""
        return F.pad(values, (1, 0)).view(-1, block_size)[:, 1:]

    confidence, correct = by_block(confidence), by_block(correct)
    rows = [{
        "offset": o,
        "confidence": float(confidence[:, o - 1].mean()),
        "accuracy": float(correct[:, o - 1].mean()),
        "above": {t: float((confidence[:, o - 1] > t).float().mean()) for t in thresholds},
    } for o in range(1, block_size)]
    first_step = {t: float((confidence > t).sum(-1).clamp(min=1).float().mean())
                  for t in thresholds}
    return {"block_size": block_size, "offsets": rows, "first_step": first_step,
            "blocks": int(confidence.shape[0])}
