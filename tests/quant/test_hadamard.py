"""Fast Walsh–Hadamard transform and H-BitLinear: hand values, orthogonality, exactness."""

import math

import pytest
import torch
import torch.nn as nn

from wrinklefree.nn import BitLinear
from wrinklefree.quant import fwht, hadamard_block_size


@pytest.mark.parametrize(("n", "block"), [(1536, 512), (576, 64), (64, 64), (12, 4), (2, 2)])
def test_block_is_largest_power_of_two_divisor(n, block):
    assert hadamard_block_size(n) == block


@pytest.mark.parametrize("n", [9, 1, 0])
def test_odd_or_empty_size_is_rejected(n):
    with pytest.raises(ValueError, match=str(n)):
        hadamard_block_size(n)


def test_hand_values():
    # H_4 = [[1,1,1,1],[1,-1,1,-1],[1,1,-1,-1],[1,-1,-1,1]] / 2 applied to [1, 2, 3, 4]
    torch.testing.assert_close(fwht(torch.tensor([1.0, 2.0, 3.0, 4.0])),
                               torch.tensor([5.0, -1.0, -2.0, 0.0]))
    e0 = torch.zeros(8)
    e0[0] = 1.0
    torch.testing.assert_close(fwht(e0), torch.full((8,), 1 / math.sqrt(8)))


def test_matches_sylvester_construction():
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    h8 = torch.kron(torch.kron(h2, h2), h2) / math.sqrt(8)
    torch.testing.assert_close(fwht(torch.eye(8)), h8)


@pytest.mark.parametrize("n", [8, 12, 576])
def test_orthonormal_and_symmetric(n):
    h = fwht(torch.eye(n, dtype=torch.float64))  # rows: H·e_i = column i of H
    torch.testing.assert_close(h @ h.T, torch.eye(n, dtype=torch.float64))
    torch.testing.assert_close(h, h.T)


def test_non_power_of_two_is_block_diagonal():
    h = fwht(torch.eye(12))  # 12 = 3 blocks of 4
    for i in range(3):
        for j in range(3):
            blk = h[4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
            if i == j:
                torch.testing.assert_close(blk, fwht(torch.eye(4)))
            else:
                assert blk.abs().max() == 0


def test_involution_and_dtype():
    x = torch.randn(3, 5, 96, dtype=torch.float64)
    torch.testing.assert_close(fwht(fwht(x)), x)
    assert fwht(torch.randn(2, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_bad_block_is_rejected():
    with pytest.raises(ValueError, match="power of two dividing"):
        fwht(torch.zeros(12), block=8)
    with pytest.raises(ValueError, match="power of two dividing"):
        fwht(torch.zeros(12), block=6)


@pytest.mark.parametrize(("n_in", "subln"), [(48, False), (64, True)])
def test_rotated_bitlinear_is_exact_with_quantization_off(n_in, subln):
    torch.manual_seed(0)
    ref = nn.Linear(n_in, 16)
    layer = BitLinear(n_in, 16, quant_lambda=0.0, hadamard=True, subln=subln)
    with torch.no_grad():
        layer.weight.copy_(fwht(ref.weight))  # W' = W·Hᵀ
        layer.bias.copy_(ref.bias)
        if subln:
            layer.sub_norm.weight.uniform_(0.5, 2.0)
    x = torch.randn(4, 7, n_in)
    inner = layer.sub_norm(x) if subln else x
    torch.testing.assert_close(layer(x), ref(inner), rtol=0, atol=1e-5)


def test_hadamard_needs_an_even_input():
    with pytest.raises(ValueError, match="odd"):
        BitLinear(15, 4, hadamard=True)
