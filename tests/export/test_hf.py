"""Packed HF export: transformers' own packing layout and exact logits through stock loading."""

from __future__ import annotations

import pytest
import torch
from exact_ternary import make_weights_exactly_ternary
from tiny_bitnet import save_tiny
from transformers import AutoModelForCausalLM

from wrinklefree.export.hf import export_hf, pack_transformers_bitnet
from wrinklefree.models import load_model


@pytest.fixture(autouse=True)
def no_compile(monkeypatch):
    """transformers' BitLinear is decorated with torch.compile (~20 s per graph on CPU)."""
    monkeypatch.setattr(torch._dynamo.config, "disable", True)


def test_packing_matches_transformers():
    from transformers.integrations.bitnet import pack_weights, unpack_weights

    codes = torch.randint(-1, 2, (12, 7), dtype=torch.int8)
    ours = pack_transformers_bitnet(codes)
    assert torch.equal(ours, pack_weights(codes.clone()))
    assert torch.equal(unpack_weights(ours, dtype=torch.float32), codes.float())


def test_packing_by_hand():
    # out = 4: rows 0..3 of a column go to bits 0-1, 2-3, 4-5, 6-7 of one byte.
    # column codes [1, 0, -1, 1] -> +1 = [2, 1, 0, 2] -> 2 + 4 + 0 + 128 = 134
    codes = torch.tensor([[1], [0], [-1], [1]], dtype=torch.int8)
    assert pack_transformers_bitnet(codes).tolist() == [[134]]


def _parity(folder, out):
    """Logits through stock transformers equal ours up to float64 rounding.

    Same int8 activations and ternary weights, summed in a different order: in float32 that
    order (which depends on the CPU's instruction set) moves a product across a rounding tie of
    the next layer's int8 activation quantization at a few positions, and the difference then
    cascades. Both models are therefore compared in float64 (a tie is then ~1e-13 likely per
    value) with exactly representable weight scales (:func:`make_weights_exactly_ternary`)."""
    model = load_model(str(folder))
    make_weights_exactly_ternary(model)
    export_hf(model, out, folder)
    model.double()
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float64).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 33), generator=gen)
    with torch.no_grad():
        ref, got = model(ids).logits, loaded(ids).logits
    assert got.dtype == torch.float64
    assert torch.equal(ref.argmax(-1), got.argmax(-1))
    assert (ref - got).abs().max() < 1e-9
    return loaded


def test_subln_llama_loads_as_bitnet_for_causal_lm_with_exact_logits(tiny_dir, tmp_path):
    loaded = _parity(tiny_dir, tmp_path / "hf")
    assert type(loaded).__name__ == "BitNetForCausalLM"
    assert loaded.model.layers[0].mlp.down_proj.weight.dtype == torch.uint8


def test_plain_ternary_llama_keeps_its_class(tmp_path):
    folder = save_tiny(tmp_path / "plain", insert_subln=False, tie_word_embeddings=False)
    (folder / "generation_config.json").write_text('{"repetition_penalty": 1.2}')
    loaded = _parity(folder, tmp_path / "hf")
    assert loaded.generation_config.repetition_penalty == 1.2  # transformers' generate() uses it
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert loaded.lm_head.weight.dtype == torch.float64  # excluded layers stay full precision
    assert loaded.model.layers[0].self_attn.q_proj.weight.dtype == torch.uint8


def test_weights_are_packed_four_per_byte(tiny_dir, tmp_path):
    sizes = export_hf(load_model(str(tiny_dir)), tmp_path / "hf", tiny_dir)
    dtype, nbytes = sizes["model.layers.0.mlp.up_proj.weight"]
    assert dtype == "uint8" and nbytes == 512 * 256 // 4
    assert sizes["model.layers.0.mlp.up_proj.weight_scale"] == ("float32", 4)
    assert "lm_head.weight" not in sizes  # tied


def test_per_channel_scales_are_refused(tmp_path):
    folder = save_tiny(tmp_path / "pc", weight_quant="absmean_channel")
    with pytest.raises(ValueError, match="per-channel"):
        export_hf(load_model(str(folder)), tmp_path / "hf", folder)


def test_full_precision_layers_are_refused_with_the_fix(tmp_path):
    folder = save_tiny(tmp_path / "fp", num_hidden_layers=3, fp_layers=[-1])
    with pytest.raises(ValueError, match="fp_layers / exclude.*model.convert.fp_layers_subln=true"):
        export_hf(load_model(str(folder)), tmp_path / "hf", folder)


def test_full_precision_layers_with_subln_load_as_bitnet_for_causal_lm(tmp_path):
    folder = save_tiny(tmp_path / "fp", num_hidden_layers=3, fp_layers=[0], fp_layers_subln=True)
    loaded = _parity(folder, tmp_path / "hf")
    assert type(loaded).__name__ == "BitNetForCausalLM"
    assert loaded.model.layers[0].mlp.down_proj.weight.dtype == torch.float64  # kept
    assert loaded.model.layers[1].mlp.down_proj.weight.dtype == torch.uint8


def test_lrc_is_refused_naming_what_is_missing(tmp_path):
    folder = save_tiny(tmp_path / "lrc", lrc_rank=4)
    with pytest.raises(ValueError, match=r"low-rank correction .*peft.*--format gguf"):
        export_hf(load_model(str(folder)), tmp_path / "hf", folder)
    assert not (tmp_path / "hf").exists()
