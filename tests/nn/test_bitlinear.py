import pytest
import torch
import torch.nn as nn

from wrinklefree.nn import BitLinear, SubLN


def test_subln_hand_values():
    norm = SubLN(2, eps=0.0)
    x = torch.tensor([[3.0, 4.0]])
    # rms = sqrt((9 + 16) / 2) = sqrt(12.5) = 3.5355
    assert torch.allclose(norm(x), torch.tensor([[3 / 12.5**0.5, 4 / 12.5**0.5]]))


def test_bitlinear_lambda0_equals_linear():
    torch.manual_seed(0)
    linear = nn.Linear(8, 4)
    layer = BitLinear.from_linear(linear, quant_lambda=0.0)
    x = torch.randn(3, 8)
    assert torch.equal(layer(x), linear(x))
    assert layer.weight is linear.weight, "conversion shares tensors, no copy"


def test_bitlinear_ternary_forward_hand_values():
    layer = BitLinear(2, 1, bias=False, quantize_activations=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -1.5]]))
    # scale = 1.0; codes = round([0.5, -1.5]) = [0, -2] -> clip -> [0, -1]; y = -x1
    y = layer(torch.tensor([[2.0, 3.0]]))
    assert torch.allclose(y, torch.tensor([[-3.0]]))


def test_bitlinear_gradient_flows_through_ste():
    torch.manual_seed(0)
    layer = BitLinear(8, 4)
    x = torch.randn(2, 8, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bitlinear_rejects_unknown_weight_quant():
    with pytest.raises(ValueError, match="nope"):
        BitLinear(4, 4, weight_quant="nope")
