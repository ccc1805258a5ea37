"""SubLN: the RMSNorm BitDistill inserts before the output projections."""

from __future__ import annotations

import torch
import torch.nn as nn


class SubLN(nn.Module):
    """RMSNorm y = x / sqrt(mean(x^2) + eps) * g (Zhang & Sennrich 2019, Eq. 4).

    BitDistill (arXiv 2510.13998, Sec. 3.1) inserts it before o_proj and down_proj.

    Computed in float32 and cast back, like the decoders' own RMSNorm.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
