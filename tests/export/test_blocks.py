"""Hand-written GGML blocks (llama.cpp ggml-common.h / ggml-quants.c), checked by hand."""

from __future__ import annotations

import gguf
import numpy as np

from wrinklefree.export.blocks import (
    GGML_TYPES,
    decode_q2_0,
    decode_q4_0,
    encode_q2_0_ternary,
    encode_q4_0_ternary,
    encode_q6_k,
    encode_q8_0_ternary,
)

Q = gguf.GGMLQuantizationType
F16_ONE = [0x00, 0x3C]  # fp16 1.0 = 0x3C00, little-endian


def test_block_sizes_match_gguf_py_where_it_knows_the_type():
    for name, t in GGML_TYPES.items():
        if name in Q.__members__ and t.block > 1:
            assert gguf.GGML_QUANT_SIZES[Q[name]] == (t.block, t.block_bytes)
    assert GGML_TYPES["Q2_0"].bits_per_weight() == 2.25  # 18 bytes per 64 weights
    assert GGML_TYPES["Q4_0"].bits_per_weight() == 4.5


def test_q4_0_block_by_hand():
    codes = np.zeros((1, 32), np.int8)
    codes[0, 0], codes[0, 1], codes[0, 16] = 1, -1, -1
    block = encode_q4_0_ternary(codes)[0]
    # nibble = code + 8: qs[0] = 9 | (7 << 4) = 0x79; qs[1] = 7 | (8 << 4) = 0x87; rest 0x88
    assert block.tolist() == F16_ONE + [0x79, 0x87] + [0x88] * 14
    assert np.array_equal(gguf.quants.dequantize(block[None], Q.Q4_0), codes.astype(np.float32))


def test_q2_0_block_by_hand():
    codes = np.zeros((1, 64), np.int8)
    codes[0, :4] = [1, -1, 0, 1]
    block = encode_q2_0_ternary(codes, np.float32(0.5))[0]
    # code + 1 in bits 2k: 2 | 0 << 2 | 1 << 4 | 2 << 6 = 0x92; zero codes -> 0b01010101 = 0x55
    assert block.tolist() == [0x00, 0x38] + [0x92] + [0x55] * 15  # fp16 0.5 = 0x3800
    assert decode_q2_0(block[None], 64)[0, :4].tolist() == [0.5, -0.5, 0.0, 0.5]


def test_round_trips_with_per_row_scales():
    rng = np.random.default_rng(0)
    codes = rng.integers(-1, 2, (3, 192)).astype(np.int8)
    d = np.array([[1.0], [0.25], [3.0]], np.float32)  # exact in fp16
    assert np.array_equal(decode_q4_0(encode_q4_0_ternary(codes, d), 192), codes * d)
    assert np.array_equal(decode_q2_0(encode_q2_0_ternary(codes, d), 192), codes * d)


def test_q6_k_block_by_hand_and_against_gguf_dequantize():
    x = np.zeros((1, 256), np.float32)
    x[0, 0], x[0, 1], x[0, 200] = 4.0, -2.0, 1.0
    block = encode_q6_k(x)[0]
    assert block.shape == (210,)
    # sub-block 0: max 4 -> scale -4/32 = -0.125; max_scale -0.125 -> iscale 1024, d = 1/1024,
    # scales[0] = round(1024 * -0.125) = -128 -> min(127, .) stays -128 (int8);
    # q = round(4 / (d * -128)) = -32 -> stored 0; -2 -> 16 -> stored 48; zeros -> 32
    assert block[192:208].view(np.int8)[0] == -128
    assert block[208:210].view(np.float16)[0] == np.float16(1 / 1024)
    # sub-block 12 (value 1.0 at 200): scale -1/32 -> round(1024 * -1/32) = -32; q = -32 -> 0
    assert block[192 + 12].view(np.int8) == -32
    decoded = gguf.quants.dequantize(block[None], Q.Q6_K)
    assert np.array_equal(decoded, x)  # every value is a multiple of its sub-block step


def test_q6_k_error_is_about_a_step_at_most():
    """Half a step of rounding; up to ~one step where the int8 sub-block scale rounds down and
    the extreme value clips at -32 (as in llama.cpp's reference quantizer)."""
    x = np.random.default_rng(1).standard_normal((4, 512)).astype(np.float32)
    err = np.abs(gguf.quants.dequantize(encode_q6_k(x), Q.Q6_K) - x)
    step = np.abs(x).reshape(4, 2, 16, 16).max(-1, keepdims=True) / 32  # per sub-block
    assert (err.reshape(4, 2, 16, 16) <= 1.1 * step).all()
    assert err.mean() < 0.3 * step.mean()


def test_q8_0_block_by_hand():
    codes = np.zeros((1, 32), np.int8)
    codes[0, :3] = [1, -1, 1]
    block = encode_q8_0_ternary(codes)[0]
    assert block.tolist() == F16_ONE + [1, 255, 1] + [0] * 29  # int8 -1 is byte 255
    assert np.array_equal(gguf.quants.dequantize(block[None], Q.Q8_0), codes.astype(np.float32))
