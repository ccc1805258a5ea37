"""Normalised fast Walsh–Hadamard transform for H-BitLinear (BitNet v2, arXiv 2504.18415).

BitNet v2 rotates the input of ``o_proj`` / ``down_proj`` with a Hadamard matrix before 8-bit
(or 4-bit) activation quantization: the rotation spreads outlier channels over all channels, so
absmax quantization wastes fewer levels. The weight is rotated once at conversion, W' = W·Hᵀ, so
W'·(H·x) = W·x and the layer is unchanged with quantization off (H is orthonormal).

Sizes that are not a power of two (SmolLM2: down_proj input 1536 = 3·512, o_proj input
576 = 9·64) use a block-diagonal Hadamard diag(H_b, ..., H_b) with b the largest power of two
dividing the size. It is still orthonormal and symmetric and keeps every tensor's shape (padding
to the next power of two would add columns to W', change the checkpoint's shapes and cost up to
2x compute); the price is that mixing happens only inside each block of b channels.
"""

from __future__ import annotations

import math

import torch


def hadamard_block_size(n: int) -> int:
    """The largest power of two dividing ``n`` (the block of the block-diagonal Hadamard)."""
    if n <= 0:
        raise ValueError(f"Hadamard size must be positive, got {n}")
    block = n & -n
    if block == 1:
        raise ValueError(
            f"size {n} is odd: its block-diagonal Hadamard would be the identity; disable "
            "hadamard for this layer (BitNetConfig.hadamard_targets)"
        )
    return block


def fwht(x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """y = H·x along the last dim, H = diag(H_b, ...) with H_b the normalised Sylvester Hadamard.

    H_1 = [1], H_2k = [[H_k, H_k], [H_k, -H_k]] / √2 (Sylvester 1867); O(n log b) butterflies,
    one reshape per stage, computed in at least float32. H is symmetric and orthonormal, so
    fwht(fwht(x)) == x. ``block`` defaults to :func:`hadamard_block_size` of the last dim.
    """
    n = x.shape[-1]
    block = hadamard_block_size(n) if block is None else block
    if block < 1 or block & (block - 1) or n % block:
        raise ValueError(f"Hadamard block {block} must be a power of two dividing the size {n}")
    y = x.to(torch.promote_types(x.dtype, torch.float32))
    y = y.reshape(-1, n // block, 1, block)  # (T, blocks, pairs, span)
    h = block
    while h > 1:  # stage: split each span into halves (top, bottom) -> (top + bottom, top - bottom)
        h //= 2
        y = y.reshape(y.shape[0], y.shape[1], -1, 2, h)
        top, bottom = y[..., 0, :], y[..., 1, :]
        y = torch.stack((top + bottom, top - bottom), dim=-2)
    return (y.reshape(x.shape) * (1.0 / math.sqrt(block))).to(x.dtype)
