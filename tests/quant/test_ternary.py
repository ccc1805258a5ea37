import math

import torch

from wrinklefree.quant import (
    LambdaWarmup,
    absmax_activation_quant,
    absmean_scale,
    ste_mix,
    ternary_codes,
    ternary_weight_quant,
)


def test_absmean_ternary_hand_values():
    w = torch.tensor([[0.4, -1.2], [0.05, 2.0]])
    # mean|W| = (0.4 + 1.2 + 0.05 + 2.0) / 4 = 0.9125
    assert torch.isclose(absmean_scale(w), torch.tensor(0.9125))
    # W / 0.9125 = [[0.438, -1.315], [0.0548, 2.19]] -> round/clip -> [[0, -1], [0, 1]]
    assert ternary_codes(w, absmean_scale(w)).tolist() == [[0, -1], [0, 1]]
    expected = torch.tensor([[0.0, -0.9125], [0.0, 0.9125]])
    assert torch.allclose(ternary_weight_quant(w), expected)


def test_absmean_per_channel_hand_values():
    w = torch.tensor([[0.4, -1.2], [0.05, 2.0]])
    # row scales: (0.4 + 1.2) / 2 = 0.8 ; (0.05 + 2.0) / 2 = 1.025
    scale = absmean_scale(w, per_channel=True)
    assert torch.allclose(scale, torch.tensor([[0.8], [1.025]]))
    # row 0: [0.5, -1.5] -> round half to even [0, -2] -> clip [0, -1]
    # row 1: [0.049, 1.95] -> [0, 1]
    expected = torch.tensor([[0.0, -0.8], [0.0, 1.025]])
    assert torch.allclose(ternary_weight_quant(w, per_channel=True), expected)


def test_activation_quant_hand_values():
    x = torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0]])
    # row 0: scale = 127 / 1.0; 0.25 * 127 = 31.75 -> 32 -> 32 / 127
    q = absmax_activation_quant(x)
    assert torch.allclose(q[0], torch.tensor([1.0, -64 / 127, 32 / 127]))
    # -0.5 * 127 = -63.5 -> rounds half to even -> -64
    assert torch.equal(q[1], torch.zeros(3)), "all-zero token must give zeros, not NaN"
    assert not torch.isnan(q).any()


def test_ste_mix_forward_and_gradient():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    q = torch.tensor([0.0, 4.0])
    y = ste_mix(x, q, 0.25)  # 0.75 * x + 0.25 * q
    assert torch.allclose(y, torch.tensor([0.75, 2.5]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(2)), "straight-through: identity gradient"


def test_ste_mix_without_autograd_gives_the_same_value():
    x, q = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    assert torch.allclose(ste_mix(x, q, 0.25), torch.tensor([0.75, 2.5]))  # one fused lerp
    with torch.no_grad():
        x_grad = x.clone().requires_grad_()
        assert torch.allclose(ste_mix(x_grad, q, 0.25), torch.tensor([0.75, 2.5]))
    assert ste_mix(x, q, 1.0) is q, "lambda 1 is Q(x) itself: no pass at all"


def test_lambda_warmup_shapes():
    lin = LambdaWarmup(warmup_steps=10, shape="linear")
    assert [lin(s) for s in (0, 5, 10, 20)] == [0.0, 0.5, 1.0, 1.0]
    cos = LambdaWarmup(warmup_steps=10, shape="cosine")
    assert math.isclose(cos(5), 0.5) and math.isclose(cos(0), 0.0) and math.isclose(cos(10), 1.0)
    # cosine at 1/4: 0.5 * (1 - cos(pi/4)) = 0.5 * (1 - 0.70711) = 0.146447
    assert math.isclose(cos(2.5), 0.1464466, rel_tol=1e-5)
    sig = LambdaWarmup(warmup_steps=10, shape="sigmoid")
    assert math.isclose(sig(0), 0.0, abs_tol=1e-12) and math.isclose(sig(10), 1.0)
    assert math.isclose(sig(5), 0.5)
    assert sig(2) < lin(2) and sig(8) > lin(8), "sigmoid is slower at the ends"
    assert LambdaWarmup(warmup_steps=10, shape="constant")(0) == 1.0


def test_lambda_warmup_rejects_bad_shape():
    try:
        LambdaWarmup(warmup_steps=3, shape="exp")
    except ValueError as err:
        assert "exp" in str(err) and "linear" in str(err)
    else:
        raise AssertionError("expected ValueError")


def test_set_quant_lambda(llama):
    from wrinklefree.convert import convert_model_to_bitnet
    from wrinklefree.nn import BitLinear, set_quant_lambda

    convert_model_to_bitnet(llama, insert_subln=False)
    n = set_quant_lambda(llama, 0.3)
    layers = [m for m in llama.modules() if isinstance(m, BitLinear)]
    assert n == len(layers) == 2 * 7
    assert all(m.quant_lambda == 0.3 for m in layers)
