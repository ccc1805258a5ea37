"""Ternary packing: hand-computed bytes, exact round trips, ternary_state, exportability checks."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from wrinklefree.convert import convert_model_to_bitnet
from wrinklefree.export import (
    check_exportable,
    pack_ternary_2bit,
    pack_ternary_base3,
    ternary_state,
    unpack_ternary_2bit,
    unpack_ternary_base3,
)
from wrinklefree.nn import BitLinear


def test_2bit_bytes_by_hand():
    # codes + 1 = [2, 1, 0, 2 | 0, pad 1, 1, 1]; byte = sum (c+1) << 2k
    # byte 0: 2 + 1*4 + 0*16 + 2*64 = 134; byte 1: 0 + 1*4 + 1*16 + 1*64 = 84
    codes = torch.tensor([[1, 0, -1, 1, -1]], dtype=torch.int8)
    assert pack_ternary_2bit(codes).tolist() == [[134, 84]]


def test_base3_bytes_by_hand():
    # codes + 1 = [2, 1, 0, 2, 0 | 2, pad 1, 1, 1, 1]; byte = sum (c+1) * 3^k
    # byte 0: 2 + 3 + 0 + 2*27 + 0 = 59; byte 1: 2 + 3 + 9 + 27 + 81 = 122
    codes = torch.tensor([[1, 0, -1, 1, -1, 1]], dtype=torch.int8)
    assert pack_ternary_base3(codes).tolist() == [[59, 122]]


@pytest.mark.parametrize("in_features", [1, 2, 3, 4, 5, 6, 7, 9, 13, 255, 256, 257, 1001])
def test_round_trip_exact(in_features):
    codes = torch.randint(-1, 2, (7, in_features), dtype=torch.int8)
    two, three = pack_ternary_2bit(codes), pack_ternary_base3(codes)
    assert two.dtype == three.dtype == torch.uint8
    assert two.shape == (7, -(-in_features // 4))
    assert three.shape == (7, -(-in_features // 5))
    assert torch.equal(unpack_ternary_2bit(two, in_features), codes)
    assert torch.equal(unpack_ternary_base3(three, in_features), codes)
    assert int(three.max()) <= 242  # 3^5 - 1


def test_bad_codes_and_shapes_are_named():
    with pytest.raises(ValueError, match=r"\[-1, 2\]"):
        pack_ternary_2bit(torch.tensor([[2, -1]], dtype=torch.int8))
    with pytest.raises(ValueError, match="2-d"):
        pack_ternary_base3(torch.zeros(4, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"\(out, 3\)"):
        unpack_ternary_2bit(torch.zeros(2, 2, dtype=torch.uint8), in_features=9)


def _bitlinear(weight: list[list[float]], weight_quant: str = "absmean") -> BitLinear:
    layer = BitLinear(2, 2, bias=False, weight_quant=weight_quant)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


def test_ternary_state_per_tensor_by_hand():
    # gamma = mean|W| = (0.3 + 0.4 + 0.1 + 1.0) / 4 = 0.45; W / gamma = [0.67, -0.89, 0.22, 2.2]
    codes, scale = ternary_state(_bitlinear([[0.3, -0.4], [0.1, 1.0]]))
    assert codes.dtype == torch.int8 and codes.tolist() == [[1, -1], [0, 1]]
    assert scale.shape == () and scale.item() == pytest.approx(0.45)


def test_ternary_state_per_channel_by_hand():
    # row gammas 0.35 and 0.55; W / gamma = [0.86, -1.14] and [0.18, 1.82]
    codes, scale = ternary_state(_bitlinear([[0.3, -0.4], [0.1, 1.0]], "absmean_channel"))
    assert codes.tolist() == [[1, -1], [0, 1]]
    assert scale.flatten().tolist() == pytest.approx([0.35, 0.55])


@pytest.mark.parametrize("weight_quant", ["absmean", "absmean_channel"])
def test_codes_times_scale_is_the_forward_weight(weight_quant):
    layer = BitLinear(40, 12, weight_quant=weight_quant)
    codes, scale = ternary_state(layer)
    assert torch.equal(codes.float() * scale, layer.quantized_weight().detach())


def _tiny(**overrides):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1))
    return convert_model_to_bitnet(model, **overrides, calibrate=False)


def test_check_exportable_lists_the_bitlinears():
    names = [n for n, _ in check_exportable(_tiny())]
    assert len(names) == 7 and "model.layers.0.self_attn.q_proj" in names


@pytest.mark.parametrize("overrides, match", [
    ({"quant_lambda": 0.5}, "quant_lambda=0.5"),
    ({"weight_quant": "haar"}, "haar"),
    ({"lrc_rank": 2}, "low-rank"),
])
def test_check_exportable_refuses(overrides, match):
    with pytest.raises(ValueError, match=match):
        check_exportable(_tiny(**overrides))


def test_check_exportable_refuses_unconverted_model():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match="wf convert"):
        check_exportable(model)
