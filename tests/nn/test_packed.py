import pytest
import torch
from exact_ternary import make_weights_exactly_ternary
from transformers import LlamaConfig, LlamaForCausalLM

from wrinklefree.convert import convert_model_to_bitnet
from wrinklefree.nn import BitLinear, set_quant_lambda
from wrinklefree.nn.packed import (
    PackedBitLinear,
    int8_activation,
    onednn_prepack,
    pack_model,
    weight_bytes,
)


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
    """Same codes and scales, summed in another order: compared in float64 with exactly
    representable scales so that no activation lands on the other side of an int8 rounding tie
    (in float32 some seeds differ by 7e-3 with AVX2 / AVX-512 kernels)."""
    model = convert_model_to_bitnet(tiny_llama(), weight_quant=weight_quant, insert_subln=subln,
                                    calibrate=False)
    make_weights_exactly_ternary(model)
    model.double()
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids).logits
        pack_model(model, kernel="2bit")
        got = model(ids).logits
    assert not any(isinstance(m, BitLinear) for m in model.modules())
    assert sum(isinstance(m, PackedBitLinear) for m in model.modules()) == 14  # 7 per layer
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def test_bias_and_widths_not_multiple_of_four():
    layer = BitLinear(10, 3, bias=True)  # 10 inputs: the last byte holds 2 codes + 2 padding
    x = torch.randn(2, 5, 10)
    with torch.no_grad():
        torch.testing.assert_close(PackedBitLinear.from_bitlinear(layer)(x), layer(x),
                                   rtol=1e-5, atol=1e-6)


def test_weight_bytes_drop_to_two_bits_per_linear_weight():
    model = convert_model_to_bitnet(tiny_llama(), calibrate=False)
    before = weight_bytes(model)
    n_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, BitLinear))
    assert before["linear"] == 4 * n_linear  # fp32
    pack_model(model, kernel="2bit")
    after = weight_bytes(model)
    assert after["linear"] == n_linear // 4 + 14 * 4  # 2 bits per weight + one fp32 scale each
    assert before["total"] - after["total"] == before["linear"] - after["linear"]


def test_refuses_partial_lambda_and_unconverted_models():
    model = convert_model_to_bitnet(tiny_llama(), calibrate=False)
    set_quant_lambda(model, 0.5)
    with pytest.raises(ValueError, match="lambda=0.5"):
        pack_model(model)
    with pytest.raises(ValueError, match="lambda=0.5"):
        PackedBitLinear.from_bitlinear(model.model.layers[0].mlp.up_proj)
    with pytest.raises(ValueError, match="convert it first"):
        pack_model(tiny_llama())


# ----------------------------------------------------------------------------- int8 kernel


def test_int8_activation_by_hand():
    # s = 127 / max|x| = 127; x * s = [127, 63.5, 31.75, -127] -> round half to even -> [127, 64,
    # 32, -127]: the codes absmax_activation_quant divides back by s
    q, s = int8_activation(torch.tensor([[1.0, 0.5, 0.25, -1.0]]))
    assert q.dtype == torch.int8 and q.tolist() == [[127, 64, 32, -127]]
    assert s.tolist() == [[127.0]]


def test_int8_layer_by_hand(int8_backend):
    layer = BitLinear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.5, 0.0, 0.1], [1.0, 1.0, -1.0, 0.0]]))
    packed = PackedBitLinear.from_bitlinear(layer, kernel="int8")
    assert (packed.onednn is not None) == (int8_backend == "onednn")
    # codes [[1, -1, 0, 0], [1, 1, -1, 0]] (see the 2-bit test); int8 x = [127, 64, 32, -127]:
    # row 0: 127 - 64 = 63; row 1: 127 + 64 - 32 = 159; y = 0.5125 * acc / 127
    y = packed(torch.tensor([[1.0, 0.5, 0.25, -1.0]]))
    torch.testing.assert_close(y, torch.tensor([[0.5125 * 63 / 127, 0.5125 * 159 / 127]]),
                               rtol=1e-6, atol=0)
    if packed.onednn is None:  # torch._int_mm reads int8 codes laid out (in, out)
        assert packed.packed.dtype == torch.int8 and packed.packed.shape == (4, 2)


def _float64_replay(model, recorded: dict[str, list]) -> None:
    """Make ``model`` (a fake-quant BitLinear model) a float64 reference that multiplies each
    BitLinear by the int8 activations the packed model recorded for it: the fake-quant formula
    (q / s_x) @ (codes * s_w)^T + b with the same quantized activations, so a rounding tie that
    the two float orders break differently cannot make the comparison flaky on any CPU."""
    from wrinklefree.nn.ternary import ternary_state

    for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, BitLinear)]:
        codes, scale = ternary_state(layer)
        weight = codes.double() * scale.double()
        inputs = iter(recorded[name])

        def forward(x, weight=weight, inputs=inputs, bias=layer.bias):
            q, s_x = next(inputs)
            y = (q.double() / s_x.double()) @ weight.t()
            return y if bias is None else y + bias.double()

        layer.forward = forward
    model.double()


@pytest.fixture(params=["onednn", "int_mm"])
def int8_backend(request, monkeypatch):
    """Both int8 matmuls: oneDNN's pre-packed GEMM, and torch._int_mm (its fallback)."""
    if request.param == "int_mm":
        monkeypatch.setattr("wrinklefree.nn.packed.onednn_prepack", lambda codes: None)
    elif onednn_prepack(torch.ones(8, 64, dtype=torch.int8)) is None:
        pytest.skip("this torch build / CPU has no working oneDNN int8 linear")
    return request.param


@pytest.mark.parametrize("weight_quant", ["absmean", "absmean_channel"])
def test_int8_kernel_logits_equal_fake_quant_reference(weight_quant, int8_backend):
    """Logits within 1e-4 of the logit scale of a float64 fake-quant reference fed the same int8
    activations (the integer matmul is exact; the rest is float32 vs float64 rounding)."""
    import copy

    model = convert_model_to_bitnet(tiny_llama(), weight_quant=weight_quant, calibrate=False)
    reference = copy.deepcopy(model)
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(1))
    pack_model(model, kernel="int8")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, PackedBitLinear)}
    assert len(layers) == 14 and all(m.kernel == "int8" for m in layers.values())
    assert all((m.onednn is not None) == (int8_backend == "onednn") for m in layers.values())
    for layer in layers.values():
        layer.record = []
    with torch.no_grad():
        got = model(ids).logits.double()
        _float64_replay(reference, {n: m.record for n, m in layers.items()})
        expected = reference(ids).logits
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-4 * scale


def test_int8_kernel_is_close_to_the_fake_quant_model_end_to_end():
    model = convert_model_to_bitnet(tiny_llama(), calibrate=False)
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(ids).logits
        got = pack_model(model, kernel="int8")(ids).logits
    cos = torch.nn.functional.cosine_similarity(got, expected, dim=-1)
    assert cos.min() > 0.999


def test_int8_weight_bytes_and_refusals(int8_backend):
    model = convert_model_to_bitnet(tiny_llama(), calibrate=False)
    n_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, BitLinear))
    pack_model(model, kernel="int8")
    assert weight_bytes(model)["linear"] == n_linear + 14 * 4  # 1 byte per weight + scales
    with pytest.raises(ValueError, match="'int4'"):
        PackedBitLinear.from_bitlinear(BitLinear(4, 2), kernel="int4")
    layer = BitLinear(4, 2)
    layer.quantize_activations = False
    with pytest.raises(ValueError, match="kernel='2bit'"):
        PackedBitLinear.from_bitlinear(layer, kernel="int8")


def test_uint8_activation_is_the_int8_codes_plus_128_and_is_reused_only_for_the_same_tensor():
    from wrinklefree.nn.packed import _uint8_activation

    x = torch.randn(3, 40)
    q, s = int8_activation(x)
    xu, su = _uint8_activation(x)
    assert torch.equal(xu.to(torch.int16) - 128, q.to(torch.int16)) and torch.equal(s, su)
    assert _uint8_activation(x)[0] is xu  # q/k/v share one quantization
    x.mul_(2)  # changed in place: the version counter moves, so it is quantized afresh
    assert _uint8_activation(x)[0] is not xu


def test_compiled_static_decoding_gives_the_eager_tokens():
    """The plumbing of wrinklefree.compiled (static cache, positions, sampling) with the eager
    backend: inductor itself costs minutes of compile time, measured in docs/benchmarks.md."""
    from wrinklefree.compiled import generate_ar_compiled
    from wrinklefree.generate import generate_ar

    model = pack_model(convert_model_to_bitnet(tiny_llama(), calibrate=False), onednn=False)
    assert all(m.onednn is None for m in model.modules() if isinstance(m, PackedBitLinear))
    ids = torch.randint(0, 128, (1, 7), generator=torch.Generator().manual_seed(3))
    for kwargs in ({}, {"temperature": 1.0, "top_p": 0.9, "seed": 4}):
        eager = [t for c in generate_ar(model, ids, max_new_tokens=6, **kwargs) for t in c]
        static = [t for c in generate_ar_compiled(model, ids, max_new_tokens=6, backend="eager",
                                                  **kwargs) for t in c]
        assert static == eager
