"""Pack ternary weight codes {-1, 0, 1} into bytes, and unpack them exactly.

Two layouts, both along the input dimension (each output row packed on its own, padded with
zero codes to a whole byte):

- 2-bit: 4 codes per byte, code + 1 in {0, 1, 2} stored little-end first, element j of a row in
  bits 2*(j % 4) of byte j // 4. Unpacking is a shift and a mask, so it is the fast path.
- base-3: 5 codes per byte, byte = sum_k (code_k + 1) * 3^k for k = 0..4 (max 242), element j in
  digit j % 5 of byte j // 5. log2(3) = 1.585 bits is the entropy of a ternary weight; 5 codes
  in 8 bits is 1.6 bits per weight (the idea behind llama.cpp's TQ1_0).

Pure byte layouts, below both their users: the packed inference layers
(:mod:`wrinklefree.nn.packed`) and the exporters (:mod:`wrinklefree.export`). The codes and scale
of a trained layer come from :func:`wrinklefree.nn.ternary.ternary_state`.
"""

from __future__ import annotations

import torch

_POW3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int16)  # 3^k, k = 0..4


def _check_codes(codes: torch.Tensor) -> None:
    if codes.dim() != 2:
        raise ValueError(f"ternary codes must be 2-d (out, in), got shape {tuple(codes.shape)}")
    if codes.numel() and (codes.min() < -1 or codes.max() > 1):
        raise ValueError(
            f"codes must be in {{-1, 0, 1}}, got values in [{int(codes.min())}, "
            f"{int(codes.max())}]; compute them with wrinklefree.quant.ternary_codes"
        )


def _padded(codes: torch.Tensor, group: int) -> torch.Tensor:
    """codes + 1 as int16, zero-code padded so the row length is a multiple of ``group``."""
    out_f, in_f = codes.shape
    pad = -in_f % group
    shifted = codes.to(torch.int16) + 1  # (out, in) in {0, 1, 2}
    if pad:
        shifted = torch.cat([shifted, shifted.new_ones(out_f, pad)], dim=1)  # pad with code 0
    return shifted.view(out_f, -1, group)  # (out, in_padded / group, group)


def _check_packed(packed: torch.Tensor, in_features: int, group: int) -> None:
    need = -(-in_features // group)
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != need:
        raise ValueError(
            f"packed weights must be uint8 of shape (out, {need}) for in_features={in_features} "
            f"({group} codes per byte); got {packed.dtype} {tuple(packed.shape)}"
        )


def pack_ternary_2bit(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes (out, in) in {-1, 0, 1} -> uint8 (out, ceil(in / 4)), 4 codes per byte."""
    _check_codes(codes)
    groups = _padded(codes, 4)  # (out, n, 4)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.int16)
    return (groups << shifts).sum(-1).to(torch.uint8)  # (out, n)


def unpack_ternary_2bit(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary_2bit`: uint8 (out, ceil(in / 4)) -> int8 (out, in)."""
    _check_packed(packed, in_features, 4)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
    digits = (packed.unsqueeze(-1) >> shifts) & 3  # (out, n, 4)
    return (digits.to(torch.int8) - 1).flatten(1)[:, :in_features]


def pack_ternary_base3(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes (out, in) in {-1, 0, 1} -> uint8 (out, ceil(in / 5)), 5 codes per byte."""
    _check_codes(codes)
    groups = _padded(codes, 5)  # (out, n, 5)
    return (groups * _POW3).sum(-1).to(torch.uint8)  # (out, n), values <= 242


def unpack_ternary_base3(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary_base3`: uint8 (out, ceil(in / 5)) -> int8 (out, in)."""
    _check_packed(packed, in_features, 5)
    digits = (packed.to(torch.int16).unsqueeze(-1) // _POW3) % 3  # (out, n, 5)
    return (digits.to(torch.int8) - 1).flatten(1)[:, :in_features]
