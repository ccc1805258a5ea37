"""SubLN: the RMSNorm BitDistill inserts before the output projections."""

from __future__ import annotations

import torch
import torch.nn as nn


class _RMSNormFunction(torch.autograd.Function):
    """:func:`rms_norm` with a hand-written backward: 4 element-wise passes instead of autograd's
    ~9 (pow, mean, rsqrt, two products and their gradients), the same values.

    With y = g ⊙ x̂, x̂ = x·r, r = (mean(x²) + eps)^(-1/2) (Zhang & Sennrich 2019, Eq. 4):
    dL/dg = Σ_tokens dy ⊙ x̂ and dL/dx = r · (dx̂ - x̂ · mean(dx̂ ⊙ x̂)) with dx̂ = dy ⊙ g.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x_hat, r = _normalize(x, eps)
        ctx.save_for_backward(x_hat, r, weight)
        ctx.x_dtype = x.dtype
        return weight * x_hat.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x_hat, r, weight = ctx.saved_tensors
        grad_x_hat = grad_y.float() * weight.float()  # (..., d)
        grad_w = (grad_y.float() * x_hat).sum(tuple(range(grad_y.dim() - 1)))  # (d,)
        dot = (grad_x_hat * x_hat).mean(-1, keepdim=True)  # (..., 1)
        grad_x = torch.addcmul(grad_x_hat, x_hat, dot, value=-1.0).mul_(r)
        return grad_x.to(ctx.x_dtype), grad_w.to(weight.dtype), None


def _normalize(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x̂ = x / sqrt(mean(x²) + eps) in float32 and r = 1 / sqrt(mean(x²) + eps), (..., 1)."""
    xf = x.float()
    r = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return xf * r, r


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm y = x / sqrt(mean(x^2) + eps) * g (Zhang & Sennrich 2019, Eq. 4).

    The statistics are computed in float32 and the normalised value is cast back before the gain,
    exactly as transformers' ``LlamaRMSNorm`` / ``BitNetRMSNorm`` do, so an exported model
    reproduces these values bit for bit in any dtype.
    """
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _RMSNormFunction.apply(x, weight, eps)
    x_hat, _ = _normalize(x, eps)
    return weight * x_hat.to(x.dtype)


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


class SubLNLinear(nn.Linear):
    """A full-precision ``nn.Linear`` with a SubLN on its input: y = W·SubLN(x) + b.

    For decoder layers kept in full precision (``fp_layers``) that must still fit llama.cpp's
    ``bitnet`` graph and transformers' BitNet, which normalise the input of o_proj and down_proj
    in every layer (``fp_layers_subln``). Same parameter names as a BitLinear with SubLN
    (``weight``, ``bias``, ``sub_norm.weight``), so exporters read both alike.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 subln_eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.sub_norm: SubLN | None = SubLN(in_features, subln_eps, device=device, dtype=dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, subln_eps: float = 1e-6) -> SubLNLinear:
        """A SubLNLinear sharing ``linear``'s weight and bias tensors, with unit SubLN gains."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device="meta")
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.sub_norm = SubLN(linear.in_features, subln_eps, device=linear.weight.device,
                               dtype=linear.weight.dtype)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        # sub_norm is None only while calibrate_subln collects the unnormalised input
        return super().forward(x if self.sub_norm is None else self.sub_norm(x))
