"""Haar-wavelet ternary quantization: hand-computed transforms, codes, scales and the STE."""

import math

import pytest
import torch

from wrinklefree.nn import BitLinear
from wrinklefree.quant import (
    WEIGHT_QUANTIZERS,
    haar_transform_1d_row,
    haar_weight_quantization,
    haar_weight_quantization_no_scale,
    inverse_haar_transform_1d_row,
)

R2 = math.sqrt(2.0)


def test_forward_transform_hand_values():
    # a = (1+2, 3+4)/√2, d = (1-2, 3-4)/√2
    c = haar_transform_1d_row(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    expected = torch.tensor([[3 / R2, 7 / R2, -1 / R2, -1 / R2]])
    torch.testing.assert_close(c, expected)


def test_inverse_transform_hand_values():
    w = inverse_haar_transform_1d_row(torch.tensor([[3 / R2, 7 / R2, -1 / R2, -1 / R2]]))
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0, 3.0, 4.0]]))


def test_inverse_of_forward_is_identity_and_norm_is_kept():
    w = torch.randn(32, 64, dtype=torch.float64)
    c = haar_transform_1d_row(w)
    torch.testing.assert_close(inverse_haar_transform_1d_row(c), w, rtol=0, atol=1e-12)
    torch.testing.assert_close(c.norm(dim=-1), w.norm(dim=-1))  # orthonormal


def test_odd_length_is_rejected_with_the_length():
    with pytest.raises(ValueError, match="even row length, got 5"):
        haar_transform_1d_row(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="got 3"):
        inverse_haar_transform_1d_row(torch.zeros(3))


# Rows [1, 2, 3, 4] and [4, 0, 0, 0]:
#   a = [3, 7]/√2, [4, 0]/√2 -> gamma_a = mean(3, 7, 4, 0)/√2 = 3.5/√2
#       a/gamma_a = 6/7, 2, 8/7, 0 -> codes 1, 1, 1, 0
#   d = [-1, -1]/√2, [4, 0]/√2 -> gamma_d = mean(1, 1, 4, 0)/√2 = 1.5/√2
#       d/gamma_d = -2/3, -2/3, 8/3, 0 -> codes -1, -1, 1, 0
HAND_W = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 0.0, 0.0, 0.0]])


def test_codes_and_separate_scales_hand_values():
    codes, scales = haar_weight_quantization_no_scale(HAND_W)
    assert codes.dtype == torch.int8
    assert codes.tolist() == [[1, 1, -1, -1], [1, 0, 1, 0]]
    torch.testing.assert_close(scales, torch.tensor([3.5 / R2, 1.5 / R2]))


def test_dequantized_weight_hand_values():
    # row 0: a = 3.5/√2, d = -1.5/√2 -> (a+d)/√2 = 1, (a-d)/√2 = 2.5 for both pairs
    # row 1: pair 0 a = 3.5/√2, d = 1.5/√2 -> 2.5, 1; pair 1 all zero
    expected = torch.tensor([[1.0, 2.5, 1.0, 2.5], [2.5, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(haar_weight_quantization(HAND_W), expected)


def test_dtype_and_shape_are_kept():
    w = torch.randn(6, 8, dtype=torch.bfloat16)
    q = haar_weight_quantization(w)
    assert q.dtype == torch.bfloat16 and q.shape == w.shape


def test_selected_by_name_on_bitlinear():
    assert WEIGHT_QUANTIZERS["haar"] is haar_weight_quantization
    layer = BitLinear(8, 4, bias=False, weight_quant="haar")
    torch.testing.assert_close(layer.quantized_weight(), haar_weight_quantization(layer.weight))


def test_ste_gradient_is_identity():
    # y = x·Q(W)ᵀ summed: with the STE, dL/dW = sum_t x_t for every output row (Q's jacobian -> I)
    layer = BitLinear(4, 2, bias=False, weight_quant="haar", quantize_activations=False)
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, 1.0, -1.0]])
    layer(x).sum().backward()
    torch.testing.assert_close(layer.weight.grad, torch.tensor([[1.0, -1.0, 1.5, 2.0]] * 2))


def test_bitlinear_with_odd_input_fails_with_a_clear_error():
    layer = BitLinear(5, 2, weight_quant="haar")
    with pytest.raises(ValueError, match="weight_quant='absmean'"):
        layer(torch.randn(1, 5))
