"""Parity through llama.cpp (optional ``llama-cpp-python``, see requirements-llamacpp.txt).

llama.cpp quantizes activations per block (Q8_K: 256 values, Q8_0: 32) where our BitLinear
quantizes per token, so ternary GGUF logits are close, not bit-exact. The F16 GGUF against the
PyTorch model with activation quantization off isolates the architecture mapping (SubLN, RoPE,
scales, tied head), which must agree to f16 precision.
"""

from __future__ import annotations

import pytest
import torch
from llamacpp_probe import require_llamacpp
from tiny_bitnet import TEXT, save_tiny
from transformers import AutoTokenizer

from wrinklefree.export.gguf import export_gguf
from wrinklefree.export.parity import compare_logits, llamacpp_logits, torch_logits
from wrinklefree.models import load_model
from wrinklefree.nn import BitLinear

llama_cpp = require_llamacpp()  # skips, with the reason, where it is missing or crashes
pytestmark = pytest.mark.llamacpp


def _tokens(folder, n: int = 64) -> list[int]:
    return AutoTokenizer.from_pretrained(folder).encode(TEXT)[:n]


@pytest.mark.parametrize("weight_type", ["tq2_0", "tq1_0", "q2_0", "q4_0", "f16"])
def test_ternary_gguf_logits_match_pytorch(tiny_dir, tmp_path, weight_type):
    model = load_model(str(tiny_dir))
    path = tmp_path / "m.gguf"
    export_gguf(model, path, tiny_dir, weight_type=weight_type)
    tokens = _tokens(tiny_dir)
    stats = compare_logits(torch_logits(model, tokens), llamacpp_logits(path, tokens))
    assert stats["cosine"] > 0.999 and stats["top1"] >= 0.9, stats


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory):
    """Widths 320 / 640: not whole 256-blocks (like SmolLM2's 576), whole 64-blocks."""
    return save_tiny(tmp_path_factory.mktemp("odd") / "model", hidden_size=320,
                     intermediate_size=640, num_attention_heads=5, num_key_value_heads=5)


@pytest.mark.parametrize("fallback", ["q4_0", "q2_0", "q8_0"])
@pytest.mark.parametrize("embed_type", ["f16", "q8_0"])
def test_fallback_types_match_pytorch(odd_dir, tmp_path, fallback, embed_type):
    model = load_model(str(odd_dir))
    path = tmp_path / "m.gguf"
    sizes = export_gguf(model, path, odd_dir, fallback_type=fallback, embed_type=embed_type)
    assert sizes["blk.1.attn_q.weight"][0] == fallback.upper()
    tokens = _tokens(odd_dir)
    stats = compare_logits(torch_logits(model, tokens), llamacpp_logits(path, tokens))
    assert stats["cosine"] > 0.99 and stats["top1"] >= 0.9, stats


@pytest.mark.parametrize("embed_type, min_top1", [("q6_k", 0.9), ("q5_0", 0.6)])
def test_quantized_embedding_matches_pytorch(tiny_dir, tmp_path, embed_type, min_top1):
    """The tiny random model's logits are nearly flat, so the tied head's quantization noise
    moves argmaxes easily: Q5_0 (5.5 bits) keeps cosine 0.995 but ~72 % top-1 here."""
    model = load_model(str(tiny_dir))
    path = tmp_path / "m.gguf"
    sizes = export_gguf(model, path, tiny_dir, embed_type=embed_type)
    assert sizes["token_embd.weight"][0] == embed_type.upper()
    tokens = _tokens(tiny_dir)
    stats = compare_logits(torch_logits(model, tokens), llamacpp_logits(path, tokens))
    assert stats["cosine"] > 0.99 and stats["top1"] >= min_top1, stats


def test_architecture_mapping_is_exact_without_activation_quantization(tiny_dir, tmp_path):
    model = load_model(str(tiny_dir))
    path = tmp_path / "m.gguf"
    export_gguf(model, path, tiny_dir, weight_type="f16", embed_type="f16")
    for layer in model.modules():
        if isinstance(layer, BitLinear):
            layer.quantize_activations = False
    tokens = _tokens(tiny_dir)
    stats = compare_logits(torch_logits(model, tokens), llamacpp_logits(path, tokens))
    assert stats["cosine"] > 0.99999 and stats["top1"] == 1.0 and stats["max_abs_diff"] < 0.01


def test_plain_ternary_llama_arch_matches(tmp_path):
    folder = save_tiny(tmp_path / "plain", insert_subln=False, tie_word_embeddings=False)
    model = load_model(str(folder))
    path = tmp_path / "m.gguf"
    export_gguf(model, path, folder)
    tokens = _tokens(folder)
    stats = compare_logits(torch_logits(model, tokens), llamacpp_logits(path, tokens))
    assert stats["cosine"] > 0.999 and stats["top1"] >= 0.9, stats


def test_llamacpp_tokenizes_like_transformers(tiny_dir, tmp_path):
    path = tmp_path / "m.gguf"
    export_gguf(load_model(str(tiny_dir)), path, tiny_dir)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        ids = llm.tokenize(TEXT.encode(), add_bos=False, special=False)
    finally:
        llm.close()
    assert ids == AutoTokenizer.from_pretrained(tiny_dir).encode(TEXT)


@pytest.mark.slow
def test_smollm2_exports_with_q4_0_fallback_and_exact_mapping(tmp_path):
    """SmolLM2-135M: hidden 576 is not whole 256-blocks, so only ffn_down is TQ2_0 (Q4_0 else).

    A converted but untrained SmolLM2 is numerically chaotic (the same PyTorch model in fp32 vs
    fp64 agrees only to cosine ~0.9), so its ternary logits cannot be compared meaningfully;
    the architecture mapping is checked with activation quantization off against the F16 file.
    """
    import gguf

    from wrinklefree.assets import asv_text
    from wrinklefree.convert import convert_model_to_bitnet
    from wrinklefree.models import load_tokenizer

    model, tokenizer = load_model("smollm2"), load_tokenizer("smollm2")
    convert_model_to_bitnet(model, calibrate=False)
    folder = tmp_path / "smol"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    sizes = export_gguf(model, tmp_path / "tq2.gguf", folder, embed_type="q8_0")
    assert sizes["blk.0.ffn_down.weight"][0] == "TQ2_0"
    assert sizes["blk.0.attn_q.weight"][0] == "Q4_0"
    assert (tmp_path / "tq2.gguf").stat().st_size < 85e6  # 150 MB with the old Q8_0 fallback
    reader = gguf.GGUFReader(tmp_path / "tq2.gguf")
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    text = asv_text()[10000:14000]
    llm = llama_cpp.Llama(model_path=str(tmp_path / "tq2.gguf"), vocab_only=True, verbose=False)
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer.encode(text)
    finally:
        llm.close()
    export_gguf(model, tmp_path / "f16.gguf", folder, weight_type="f16",
                embed_type="f16")
    for layer in model.modules():
        if isinstance(layer, BitLinear):
            layer.quantize_activations = False
    tokens = tokenizer.encode(text)[:128]
    stats = compare_logits(torch_logits(model, tokens), llamacpp_logits(tmp_path / "f16.gguf",
                                                                        tokens))
    assert stats["cosine"] > 0.9999 and stats["top1"] > 0.95, stats


@pytest.fixture(scope="module")
def hybrid_dir(tmp_path_factory):
    """What training=demo makes, in small: layer 0 full precision with a calibrated-like SubLN
    (fp_layers_subln), layers 1-2 ternary with a low-rank correction (LRC) of rank 16."""
    return save_tiny(tmp_path_factory.mktemp("hybrid") / "model", num_hidden_layers=3,
                     fp_layers=[0], fp_layers_subln=True, lrc_rank=16)


@pytest.mark.parametrize("fp_type, lora_type, min_top1", [("q8_0", "f16", 0.9),
                                                          ("f16", "q8_0", 0.9),
                                                          ("q8_0", "q4_0", 0.8)])
def test_hybrid_model_with_lora_adapter_matches_pytorch(hybrid_dir, tmp_path, fp_type,
                                                        lora_type, min_top1):
    """The random model's logits are nearly flat, so the Q4_0 adapter's rounding moves a few
    argmaxes (~92 % top-1 measured) while the cosine stays > 0.998."""
    from wrinklefree.llamacpp import adapter_path

    model = load_model(str(hybrid_dir))
    path = tmp_path / "m.gguf"
    export_gguf(model, path, hybrid_dir, fp_type=fp_type, lora_type=lora_type)
    tokens = _tokens(hybrid_dir)
    stats = compare_logits(torch_logits(model, tokens),
                           llamacpp_logits(path, tokens, lora=adapter_path(path)))
    assert stats["cosine"] > 0.99 and stats["top1"] >= min_top1, stats


def test_adapter_reads_the_sub_normed_input_like_bitlinear_lrc(hybrid_dir, tmp_path):
    """A correction large enough to move the logits far from the base (o_proj / down_proj
    included, whose input llama.cpp normalises first): llama.cpp with the adapter follows the
    PyTorch model, the base file alone does not."""
    from wrinklefree.llamacpp import adapter_path
    from wrinklefree.nn import BitLinearLRC

    model = load_model(str(hybrid_dir))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BitLinearLRC):
                m.lrc_U.mul_(20.0)
    path = tmp_path / "m.gguf"
    export_gguf(model, path, hybrid_dir, fp_type="f16")
    tokens = _tokens(hybrid_dir)
    ref = torch_logits(model, tokens)
    corrected = compare_logits(ref, llamacpp_logits(path, tokens, lora=adapter_path(path)))
    base = compare_logits(ref, llamacpp_logits(path, tokens))
    assert corrected["cosine"] > 0.99 and corrected["top1"] >= 0.9, corrected
    assert base["cosine"] < 0.95, base  # the correction matters, and llama.cpp applies it
