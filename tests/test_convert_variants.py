"""Conversion variants (Hadamard, Haar, LRC) on tiny Llamas: exactness and save/load round trips."""

import pytest
import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM

from wrinklefree.convert import bitnet_config_of, convert_model_to_bitnet, load_bitnet
from wrinklefree.nn import BitLinear, BitLinearLRC, convert_bitlinear_to_lrc
from wrinklefree.quant import fwht

# hidden 48 = 3·16 and intermediate 96 = 3·32 exercise the block-diagonal Hadamard
SIZES = {"pow2": (64, 128), "non_pow2": (48, 96)}


def _tiny_llama(hidden: int = 64, intermediate: int = 128) -> nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).eval()


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


IDS = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_hadamard_with_quantization_off_is_function_preserving(sizes):
    source = _tiny_llama(*sizes)
    expected = _logits(source, IDS)
    model = convert_model_to_bitnet(source, hadamard=True, insert_subln=False, quant_lambda=0.0)
    torch.testing.assert_close(_logits(model, IDS), expected, rtol=0, atol=1e-5)


def test_hadamard_after_calibrated_subln_changes_nothing_with_quantization_off():
    calibration = [{"input_ids": IDS}]
    subln = convert_model_to_bitnet(_tiny_llama(), quant_lambda=0.0,
                                    calibration_batches=calibration)
    both = convert_model_to_bitnet(_tiny_llama(), hadamard=True, quant_lambda=0.0,
                                   calibration_batches=calibration)
    torch.testing.assert_close(_logits(both, IDS), _logits(subln, IDS), rtol=0, atol=1e-5)


def test_hadamard_targets_only_output_projections_and_rotates_their_weight():
    source = _tiny_llama(*SIZES["non_pow2"])
    w_down = source.model.layers[0].mlp.down_proj.weight.detach().clone()
    model = convert_model_to_bitnet(source, hadamard=True, calibrate=False)
    layer = model.model.layers[0]
    assert layer.self_attn.o_proj.hadamard and layer.mlp.down_proj.hadamard
    assert layer.self_attn.o_proj.hadamard_block == 16 and layer.mlp.down_proj.hadamard_block == 32
    assert not layer.self_attn.q_proj.hadamard and not layer.mlp.up_proj.hadamard
    torch.testing.assert_close(layer.mlp.down_proj.weight.detach(), fwht(w_down))


def test_hadamard_without_targets_is_rejected():
    with pytest.raises(ValueError, match="hadamard_targets"):
        convert_model_to_bitnet(_tiny_llama(), hadamard=True, hadamard_targets=["nope"])


VARIANTS = {
    "hadamard": {"hadamard": True},
    "haar": {"weight_quant": "haar"},
    "lrc": {"lrc_rank": 0.25},
    "all": {"hadamard": True, "weight_quant": "haar", "lrc_rank": 3, "lrc_init": "kaiming"},
}


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_variant_round_trips_through_save_and_load(options, tmp_path):
    model = convert_model_to_bitnet(_tiny_llama(*SIZES["non_pow2"]), **options, calibrate=False)
    if options.get("lrc_init") == "kaiming":  # make U non-zero so the round trip is checked
        for m in model.modules():
            if isinstance(m, BitLinearLRC):
                nn.init.normal_(m.lrc_U, std=0.1)
    expected = _logits(model, IDS)
    model.save_pretrained(tmp_path)
    loaded = load_bitnet(tmp_path)
    torch.testing.assert_close(_logits(loaded, IDS), expected, rtol=0, atol=1e-6)
    assert bitnet_config_of(loaded) == bitnet_config_of(model)
    kinds = [type(m) for m in model.modules() if isinstance(m, BitLinear)]
    assert kinds == [type(m) for m in loaded.modules() if isinstance(m, BitLinear)]


def test_lrc_added_after_conversion_round_trips(tmp_path):
    model = convert_model_to_bitnet(_tiny_llama(), insert_subln=False)
    convert_bitlinear_to_lrc(model, rank=4)
    expected = _logits(model, IDS)
    model.save_pretrained(tmp_path)
    loaded = load_bitnet(tmp_path)
    assert bitnet_config_of(loaded).lrc_rank == 4
    assert bitnet_config_of(loaded).lrc_init == "svd_residual"
    torch.testing.assert_close(_logits(loaded, IDS), expected, rtol=0, atol=1e-6)


def test_haar_is_a_different_quantizer_than_absmean():
    plain = convert_model_to_bitnet(_tiny_llama(), insert_subln=False)
    haar = convert_model_to_bitnet(_tiny_llama(), insert_subln=False, weight_quant="haar")
    assert (_logits(plain, IDS) - _logits(haar, IDS)).abs().max() > 1e-3


def test_lrc_svd_init_moves_every_layer_toward_full_precision():
    model = convert_model_to_bitnet(_tiny_llama(), insert_subln=False, lrc_rank=0.1)
    for m in model.modules():
        if isinstance(m, BitLinearLRC):
            w = m.weight.detach()
            residual = w - m.quantized_weight().detach()
            corrected = residual - (m.lrc_U @ m.lrc_V.T).detach()
            assert torch.linalg.norm(corrected) < torch.linalg.norm(residual)
