"""GGML block encodings written by hand where gguf-py cannot write them exactly (or at all).

gguf-py's own Q4_0 quantizer picks ``d = -max / 8`` and so cannot store {-1, 0, 1} exactly; it
does not know llama.cpp's Q2_0 (ggml type 42) and has no Q6_K quantizer. The layouts below are
llama.cpp's (``ggml/src/ggml-common.h``, ``ggml/src/ggml-quants.c`` of the version vendored by
llama-cpp-python 0.3.36); every function has a hand-computed test in tests/export/test_blocks.py.

All encoders take a 2-d array (rows, in_features) and return uint8 (rows, bytes per row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GGMLType:
    """One GGML storage type: its enum value in ggml.h, weights per block, bytes per block."""

    name: str
    type_id: int
    block: int
    block_bytes: int

    def row_bytes(self, in_features: int) -> int:
        return in_features // self.block * self.block_bytes

    def bits_per_weight(self) -> float:
        return 8 * self.block_bytes / self.block


# ggml.h `enum ggml_type` values and ggml-common.h block structs (sizeof of each block_*).
GGML_TYPES = {
    t.name: t
    for t in (
        GGMLType("F32", 0, 1, 4),
        GGMLType("F16", 1, 1, 2),
        GGMLType("Q4_0", 2, 32, 18),  # ggml_half d; uint8_t qs[16]
        GGMLType("Q5_0", 6, 32, 22),  # ggml_half d; uint8_t qh[4]; uint8_t qs[16]
        GGMLType("Q8_0", 8, 32, 34),  # ggml_half d; int8_t qs[32]
        GGMLType("Q6_K", 14, 256, 210),  # ql[128], qh[64], int8 scales[16], ggml_half d
        GGMLType("TQ1_0", 34, 256, 54),
        GGMLType("TQ2_0", 35, 256, 66),
        GGMLType("Q2_0", 42, 64, 18),  # ggml_half d; uint8_t qs[16] (not in gguf-py 0.19)
    )
}


def _blocks(x: np.ndarray, block: int) -> np.ndarray:
    """(rows, in) -> (rows, in / block, block); refuses rows that are not whole blocks."""
    rows, in_f = x.shape
    if in_f % block:
        raise ValueError(f"rows of {in_f} values are not whole blocks of {block}")
    return x.reshape(rows, in_f // block, block)


def _with_scale(d: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Prefix each block's bytes with its fp16 scale: (rows, n, k) uint8 -> (rows, n * (2 + k))."""
    d16 = np.ascontiguousarray(d.astype(np.float16)).view(np.uint8).reshape(*qs.shape[:2], 2)
    return np.concatenate([d16, qs], axis=-1).reshape(qs.shape[0], -1)


def _row_scale(d: np.ndarray | float, rows: int, n_blocks: int) -> np.ndarray:
    """A scalar or (rows, 1) scale broadcast to one value per block (rows, n_blocks)."""
    return np.broadcast_to(np.asarray(d, dtype=np.float32).reshape(-1, 1), (rows, n_blocks))


def encode_q4_0_ternary(codes: np.ndarray, d: np.ndarray | float = 1.0) -> np.ndarray:
    """Ternary codes (rows, in) int8 -> Q4_0 blocks with scale ``d`` (scalar or (rows, 1)).

    block_q4_0 = {fp16 d; qs[16]}, value j = (nibble - 8) * d with nibble j in the low half of
    qs[j] for j < 16 and the high half of qs[j - 16] otherwise (quantize_row_q4_0_ref). So
    nibble = code + 8 stores {-d, 0, d} exactly.
    """
    q = _blocks(codes.astype(np.int16) + 8, 32).astype(np.uint8)  # (rows, n, 32) in {7, 8, 9}
    qs = q[..., :16] | (q[..., 16:] << 4)
    return _with_scale(_row_scale(d, *q.shape[:2]), qs)


def encode_q2_0_ternary(codes: np.ndarray, d: np.ndarray | float = 1.0) -> np.ndarray:
    """Ternary codes (rows, in) int8 -> Q2_0 blocks with scale ``d`` (scalar or (rows, 1)).

    block_q2_0 = {fp16 d; qs[16]}, value j = (((qs[j / 4] >> 2 (j % 4)) & 3) - 1) * d
    (dequantize_row_q2_0: 00 = -1, 01 = 0, 10 = +1, 11 = +2): code + 1 in bits 2 (j % 4).
    """
    q = _blocks(codes.astype(np.int16) + 1, 64).astype(np.uint8)  # (rows, n, 64) in {0, 1, 2}
    q = q.reshape(*q.shape[:2], 16, 4) << np.array([0, 2, 4, 6], dtype=np.uint8)
    return _with_scale(_row_scale(d, *q.shape[:2]), np.bitwise_or.reduce(q, axis=-1))


def encode_q8_0_ternary(codes: np.ndarray, d: np.ndarray | float = 1.0) -> np.ndarray:
    """Ternary codes (rows, in) int8 -> Q8_0 blocks {fp16 d; int8 qs[32]}, value = qs[j] * d
    (dequantize_row_q8_0): the codes themselves with d = the scale. Exact, 8.5 bits per weight:
    kept to compare against (the exporter's fallback before Q4_0 / Q2_0)."""
    q = _blocks(codes.astype(np.int8), 32).view(np.uint8)  # (rows, n, 32)
    return _with_scale(_row_scale(d, *q.shape[:2]), q)


def decode_q4_0(data: np.ndarray, in_features: int) -> np.ndarray:
    """Q4_0 bytes (rows, row_bytes) -> float32 (rows, in) (dequantize_row_q4_0)."""
    b = data.reshape(data.shape[0], in_features // 32, 18)
    d = b[..., :2].copy().view(np.float16).astype(np.float32)  # (rows, n, 1)
    lo, hi = (b[..., 2:] & 15).astype(np.float32), (b[..., 2:] >> 4).astype(np.float32)
    return ((np.concatenate([lo, hi], axis=-1) - 8) * d).reshape(data.shape[0], in_features)


def decode_q2_0(data: np.ndarray, in_features: int) -> np.ndarray:
    """Q2_0 bytes (rows, row_bytes) -> float32 (rows, in) (dequantize_row_q2_0)."""
    b = data.reshape(data.shape[0], in_features // 64, 18)
    d = b[..., :2].copy().view(np.float16).astype(np.float32)  # (rows, n, 1)
    q = (b[..., 2:, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3  # (rows, n, 16, 4)
    return ((q.reshape(*b.shape[:2], 64).astype(np.float32) - 1) * d).reshape(-1, in_features)


def _nearest_int(x: np.ndarray) -> np.ndarray:
    """llama.cpp's nearest_int: round half away from zero (lroundf-like), unlike np.round."""
    return np.trunc(x + np.copysign(0.5, x)).astype(np.int32)


def encode_q6_k(x: np.ndarray) -> np.ndarray:
    """float (rows, in) -> Q6_K blocks (quantize_row_q6_K_ref, without its rmse refinement).

    Per 256-block: 16 sub-blocks of 16 get scale = -max / 32 (max = the signed value of largest
    magnitude); the block's fp16 d = -max_scale / 128 and int8 scales[j] = round(scale_j / d);
    q = clamp(round(x / (d * scales[j])), -32, 31) + 32, split into 4 low bits (ql) and 2 high
    bits (qh). value = d * scales[j] * (q - 32).
    """
    xb = _blocks(np.asarray(x, dtype=np.float32), 256)  # (rows, n, 256)
    sub = xb.reshape(*xb.shape[:2], 16, 16)
    idx = np.abs(sub).argmax(-1)[..., None]
    sub_max = np.take_along_axis(sub, idx, -1)[..., 0]  # (rows, n, 16) signed
    scale = -sub_max / 32
    idx = np.abs(scale).argmax(-1)[..., None]
    max_scale = np.take_along_axis(scale, idx, -1)  # (rows, n, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(max_scale != 0, -128.0 / max_scale, 0.0)
        d = np.where(max_scale != 0, 1.0 / iscale, 0.0).astype(np.float16)
        scales = np.minimum(127, _nearest_int(iscale * scale)).astype(np.int8)  # (rows, n, 16)
        dj = d.astype(np.float32) * scales  # (rows, n, 16)
        q = np.where(dj[..., None] != 0, _nearest_int(sub / dj[..., None]), 0)
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(*xb.shape[:2], 2, 4, 32)
    # per 128-half h: ql[h, l] = q[0][l] | q[2][l] << 4, ql[h, 32 + l] = q[1][l] | q[3][l] << 4,
    # qh[h, l] = sum_k (q[k][l] >> 4) << 2k, with q[k] = the k-th 32 values of the half
    low = q & 15
    ql = np.concatenate([low[..., 0, :] | (low[..., 2, :] << 4),
                         low[..., 1, :] | (low[..., 3, :] << 4)], axis=-1)  # (rows, n, 2, 64)
    qh = np.bitwise_or.reduce((q >> 4) << np.array([0, 2, 4, 6], np.uint8)[:, None], axis=-2)
    parts = [ql.reshape(*xb.shape[:2], 128), qh.reshape(*xb.shape[:2], 64),
             scales.view(np.uint8), d.view(np.uint8).reshape(*xb.shape[:2], 2)]
    return np.concatenate(parts, axis=-1).reshape(xb.shape[0], -1)
