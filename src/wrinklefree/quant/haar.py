"""Haar-wavelet ternary weight quantization (``weight_quant="haar"``).

Each weight row w (the input dimension) is sent through one level of the orthonormal Haar
transform, c = [a | d] with a_i = (w_2i + w_2i+1)/√2 (approximation, low-pass) and
d_i = (w_2i - w_2i+1)/√2 (detail, high-pass). The two halves have very different magnitudes, so
each gets its own absmean ternary scale; the dequantized weight is mapped back with the inverse
transform. Because the transform is orthonormal, W x = C (H x) with C the ternary coefficients:
an inference kernel can run ternary on Haar-transformed activations.

Only even row lengths are supported: an odd length has no partner for its last element, and
padding would change the layer's shape. Odd lengths raise a ValueError naming the length.
"""

from __future__ import annotations

import math

import torch

from wrinklefree.quant.ternary import absmean_scale, ternary_codes

_SQRT1_2 = 1.0 / math.sqrt(2.0)


def _check_even(n: int) -> None:
    if n % 2:
        raise ValueError(
            f"the Haar transform pairs neighbouring columns and needs an even row length, got {n}; "
            "use weight_quant='absmean' for this layer (or exclude it from conversion)"
        )


def haar_transform_1d_row(w: torch.Tensor) -> torch.Tensor:
    """One-level orthonormal Haar transform of each row: (..., n) -> (..., n) = [a | d].

    a_i = (w_2i + w_2i+1)/√2, d_i = (w_2i - w_2i+1)/√2 (Mallat 1989, one analysis step with the
    Haar filters h = [1, 1]/√2, g = [1, -1]/√2).
    """
    _check_even(w.shape[-1])
    even, odd = w[..., 0::2], w[..., 1::2]  # (..., n/2) each
    return torch.cat(((even + odd) * _SQRT1_2, (even - odd) * _SQRT1_2), dim=-1)


def inverse_haar_transform_1d_row(c: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`haar_transform_1d_row`: w_2i = (a_i + d_i)/√2, w_2i+1 = (a_i - d_i)/√2."""
    _check_even(c.shape[-1])
    a, d = c.chunk(2, dim=-1)  # (..., n/2) each
    even, odd = (a + d) * _SQRT1_2, (a - d) * _SQRT1_2
    return torch.stack((even, odd), dim=-1).flatten(-2)  # interleave back: (..., n)


def haar_weight_quantization_no_scale(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary codes of the Haar coefficients and their two scales.

    Returns ``codes`` (out, n) int8 in {-1, 0, 1}, laid out [approximation | detail], and
    ``scales`` (2,) float32 = [gamma_a, gamma_d], each the absmean of its half (BitNet b1.58,
    arXiv 2402.17764, Eq. 1-3, applied per half).
    """
    c = haar_transform_1d_row(w.float())
    a, d = c.chunk(2, dim=-1)
    scales = torch.stack((absmean_scale(a), absmean_scale(d)))  # (2,)
    codes = torch.cat((ternary_codes(a, scales[0]), ternary_codes(d, scales[1])), dim=-1)
    return codes, scales


def haar_weight_quantization(w: torch.Tensor) -> torch.Tensor:
    """Fake-quantized weight: inverse Haar of the ternary coefficients, in ``w``'s dtype and shape.

    Used through :func:`wrinklefree.quant.ste_mix` (straight-through estimator), so the
    gradient with respect to ``w`` is the identity.
    """
    codes, scales = haar_weight_quantization_no_scale(w)
    half = codes.shape[-1] // 2
    c = codes.float() * scales.repeat_interleave(half)  # (out, n): gamma_a | gamma_d halves
    return inverse_haar_transform_1d_row(c).to(w.dtype)
