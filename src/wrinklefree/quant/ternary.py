"""BitNet b1.58 quantizers as pure functions.

Every function returns *dequantized* values in the input dtype (fake quantization), so the
straight-through estimator can mix them with the full-precision tensor; the integer codes are
available from :func:`ternary_codes` for packing and export.
"""

from __future__ import annotations

import torch

EPS = 1e-5


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or in float64 when it already is (``x.float()`` would round it)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def absmean_scale(w: torch.Tensor, per_channel: bool = False, eps: float = EPS) -> torch.Tensor:
    """Weight scale gamma = mean(|W|) (BitNet b1.58, arXiv 2402.17764, Eq. 3).

    Per tensor returns a 0-d tensor; per output channel returns shape (out, 1).
    """
    w = at_least_float32(w)
    if per_channel:
        return w.abs().mean(dim=-1, keepdim=True).clamp(min=eps)  # (out, 1)
    return w.abs().mean().clamp(min=eps)  # ()


def ternary_codes(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Integer codes RoundClip(W / gamma, -1, 1) in {-1, 0, 1} (BitNet b1.58, Eq. 1-2), as int8."""
    return (at_least_float32(w) / scale).round().clamp(-1, 1).to(torch.int8)


def ternary_weight_quant(w: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """Fake-quantized ternary weight gamma * RoundClip(W / gamma, -1, 1) (BitNet b1.58, Eq. 1-3)."""
    scale = absmean_scale(w, per_channel)
    # in place on the one temporary: every extra full-size allocation costs a pass (and page faults)
    return (at_least_float32(w) / scale).round_().clamp_(-1, 1).mul_(scale).to(w.dtype)


def absmax_activation_quant(x: torch.Tensor, bits: int = 8, eps: float = EPS) -> torch.Tensor:
    """Per-token absmax quantization to signed ``bits`` (BitNet, arXiv 2310.11453, Eq. 4).

    scale = Q_b / max|x| over the last dim with Q_b = 2^(b-1) - 1 (127 for int8); the max is
    clamped by ``eps`` so an all-zero token yields zeros, never NaN.
    """
    q_max = 2 ** (bits - 1) - 1
    xf = at_least_float32(x)
    # abs().amax(): the same value as vector_norm(inf), ~15x faster on CPU (one SIMD max pass)
    absmax = xf.abs().amax(dim=-1, keepdim=True)  # (..., 1)
    scale = q_max / absmax.clamp(min=eps)  # (..., 1)
    return (xf * scale).round_().clamp_(-q_max - 1, q_max).div_(scale).to(x.dtype)


def ste_mix(x: torch.Tensor, x_quant: torch.Tensor, lam: float) -> torch.Tensor:
    """Straight-through estimator with warm-up mixing: x + lam * (Q(x) - x).detach().

    Forward value is (1 - lam) * x + lam * Q(x); the gradient is the identity (BitNet, Sec. 2.1;
    lambda warm-up from HF's "Fine-tuning LLMs to 1.58bit", 2024). lam=0 is full precision,
    lam=1 the fully quantized model. With nothing to differentiate (no grad mode, or ``x`` not
    requiring grad) the same value comes from one fused pass, or none at lam=1.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return x + lam * (x_quant - x).detach()
    return x_quant if lam == 1.0 else torch.lerp(x, x_quant, lam)


class _STELinear(torch.autograd.Function):
    """linear(x_q, w_q, b) whose gradients flow to x and W as if x_q = x and w_q = W."""

    @staticmethod
    def forward(ctx, x, weight, bias, x_q, w_q):
        ctx.save_for_backward(x_q, w_q)
        ctx.has_bias = bias is not None
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return torch.nn.functional.linear(x_q, w_q, bias)  # autocast picks the compute dtype

    @staticmethod
    def backward(ctx, grad_out):  # (..., out), in the compute dtype (bf16 under autocast)
        x_q, w_q = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        grad_x = (grad_out @ w_q.to(grad_out.dtype)).to(x_dtype)  # (..., in)
        g2 = grad_out.reshape(-1, grad_out.shape[-1])  # (T, out)
        grad_w = (g2.t() @ x_q.reshape(-1, x_q.shape[-1]).to(g2.dtype)).to(w_dtype)  # (out, in)
        grad_b = g2.sum(0).to(b_dtype) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None, None


def ste_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x_q: torch.Tensor,
    w_q: torch.Tensor,
) -> torch.Tensor:
    """``F.linear(x_q, w_q, bias)`` with straight-through gradients to ``x`` and ``weight``.

    The same values and gradients as ``F.linear(ste_mix(x, ...), ste_mix(W, ...), b)`` (STE,
    BitNet Sec. 2.1: dQ(x)/dx = I), but the quantized copies are computed once without autograd
    recording their element-wise ops, which is most of BitLinear's training overhead.
    ``x_q`` and ``w_q`` must be computed under ``torch.no_grad()``.
    """
    return _STELinear.apply(x, weight, bias, x_q, w_q)
