"""SubLN: the RMSNorm BitDistill inserts before the output projections."""

from __future__ import annotations

import torch
import torch.nn as nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm y = x / sqrt(mean(x^2) + eps) * g (Zhang & Sennrich 2019, Eq. 4).

    The statistics are computed in float32 and the normalised value is cast back before the gain,
    exactly as transformers' ``LlamaRMSNorm`` / ``BitNetRMSNorm`` do, so an exported model
    reproduces these values bit for bit in any dtype.
    """
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class SubLN(nn.Module):
    """RMSNorm before o_proj and down_proj (BitDistill, arXiv 2510.13998, Sec. 3.1).

    See :func:`rms_norm` for the formula and its precision.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
