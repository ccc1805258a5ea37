"""Ternary weights whose BitNet scale is exact in every precision, for parity tests that must hold
on any CPU (a float32 scale rounded differently on two code paths moves activations across int8
rounding ties, and the difference cascades through the layers)."""

from __future__ import annotations

import torch
import torch.nn as nn

from wrinklefree.nn import BitLinear


def make_weights_exactly_ternary(model: nn.Module, seed: int = 1) -> None:
    """Set every BitLinear weight to codes · 2^-4, codes in {-1, 0, 1} with exactly half of each
    row zero: the absmean scale (BitNet b1.58, arXiv 2402.17764, Eq. 3) is then 2^-5 per tensor
    and per row, and its inverse 32, both exact in float32 and float64 in any summation order."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BitLinear):
                out_f, in_f = module.weight.shape
                if in_f % 2:
                    raise ValueError(f"in_features must be even, got {in_f}")
                codes = torch.randint(0, 2, (out_f, in_f), generator=gen) * 2.0 - 1.0
                zeros = torch.rand(out_f, in_f, generator=gen).argsort(-1)[:, : in_f // 2]
                codes.scatter_(1, zeros, 0.0)
                module.weight.copy_(codes * 2.0**-4)
