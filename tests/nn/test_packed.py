import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from wrinklefree.convert import convert_model_to_bitnet
from wrinklefree.nn import BitLinear
from wrinklefree.nn.packed import PackedBitLinear, pack_model, weight_bytes
from wrinklefree.quant import set_quant_lambda


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).eval()


def test_packed_layer_matches_hand_computed_values():
    layer = BitLinear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.5, 0.0, 0.1], [1.0, 1.0, -1.0, 0.0]]))
    packed = PackedBitLinear.from_bitlinear(layer)
    # absmean = (0.5 + 0.5 + 0 + 0.1 + 1 + 1 + 1 + 0) / 8 = 0.5125;
    # codes = RoundClip(W / 0.5125) = [[1, -1, 0, 0], [1, 1, -1, 0]]
    # x * 127 / max|x| = [127, 63.5, 31.75, -127] -> round (half to even) [127, 64, 32, -127]
    x = torch.tensor([[1.0, 0.5, 0.25, -1.0]])
    expected = torch.tensor([[0.5125 * (127 - 64) / 127, 0.5125 * (127 + 64 - 32) / 127]])
    torch.testing.assert_close(packed(x), expected, rtol=1e-6, atol=1e-7)
    assert packed.packed.dtype == torch.uint8 and packed.packed.shape == (2, 1)
    # stored as the exporter packs them: codes + 1 in bits 0-1, 2-3, 4-5, 6-7 of one byte per row:
    # (1, -1, 0, 0) -> 2 + 0*4 + 1*16 + 1*64 = 82; (1, 1, -1, 0) -> 2 + 2*4 + 0*16 + 1*64 = 74
    assert packed.packed.flatten().tolist() == [82, 74]


@pytest.mark.parametrize("weight_quant", ["absmean", "absmean_channel"])
@pytest.mark.parametrize("subln", [True, False])
def test_packed_model_logits_equal_fake_quant_model(weight_quant, subln):
    model = convert_model_to_bitnet(tiny_llama(), weight_quant=weight_quant, insert_subln=subln)
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids).logits
        pack_model(model)
        got = model(ids).logits
    assert not any(isinstance(m, BitLinear) for m in model.modules())
    assert sum(isinstance(m, PackedBitLinear) for m in model.modules()) == 14  # 7 per layer
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_bias_and_widths_not_multiple_of_four():
    layer = BitLinear(10, 3, bias=True)  # 10 inputs: the last byte holds 2 codes + 2 padding
    x = torch.randn(2, 5, 10)
    with torch.no_grad():
        torch.testing.assert_close(PackedBitLinear.from_bitlinear(layer)(x), layer(x),
                                   rtol=1e-5, atol=1e-6)


def test_weight_bytes_drop_to_two_bits_per_linear_weight():
    model = convert_model_to_bitnet(tiny_llama())
    before = weight_bytes(model)
    n_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, BitLinear))
    assert before["linear"] == 4 * n_linear  # fp32
    pack_model(model)
    after = weight_bytes(model)
    assert after["linear"] == n_linear // 4 + 14 * 4  # 2 bits per weight + one fp32 scale each
    assert before["total"] - after["total"] == before["linear"] - after["linear"]


def test_refuses_partial_lambda_and_unconverted_models():
    model = convert_model_to_bitnet(tiny_llama())
    set_quant_lambda(model, 0.5)
    with pytest.raises(ValueError, match="lambda=0.5"):
        pack_model(model)
    with pytest.raises(ValueError, match="lambda=0.5"):
        PackedBitLinear.from_bitlinear(model.model.layers[0].mlp.up_proj)
    with pytest.raises(ValueError, match="convert it first"):
        pack_model(tiny_llama())
