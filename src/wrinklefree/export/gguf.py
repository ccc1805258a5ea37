"""Write a converted ternary model as a GGUF file that llama.cpp loads and runs.

Architecture mapping (see docs/export.md for the research behind it):

- With SubLN (the default conversion) the model is written as llama.cpp's ``bitnet``
  architecture (``LLM_ARCH_BITNET``, built for microsoft/bitnet-b1.58): a Llama block plus an
  RMSNorm ``attn_sub_norm`` on the attention output before ``wo`` and ``ffn_sub_norm`` on
  ``act(gate) * up`` before ``ffn_down`` -- exactly where our SubLN sits (the input of o_proj and
  down_proj). It uses NeoX-style RoPE (rotate-half, like transformers), so q/k are written as they
  are; it ties the output head to ``token_embd``; and it multiplies each matmul output by an
  optional per-tensor ``<name>.scale`` (f32), which holds our absmean scale.
- Without SubLN the model is a plain Llama with ternary weights: ``llama`` architecture, q/k rows
  permuted for llama.cpp's interleaved RoPE, scales folded into the quantized blocks.

A SubLN cannot be folded away (it divides by a data-dependent RMS), so other architectures with
SubLN (Qwen2's biases, Qwen3's q/k norms) have no llama.cpp architecture and are refused.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
import torch.nn as nn

from wrinklefree.export.pack import (
    PER_CHANNEL_QUANTS,
    check_exportable,
    ternary_state,
    warn_subln_eps,
)
from wrinklefree.export.vocab import add_tokenizer
from wrinklefree.nn import BitLinear

Q = gguf.GGMLQuantizationType
T = gguf.MODEL_TENSOR

WEIGHT_TYPES = {"tq2_0": Q.TQ2_0, "tq1_0": Q.TQ1_0, "f16": Q.F16}
EMBED_TYPES = {"f16": Q.F16, "q8_0": Q.Q8_0}
FILE_TYPES = {
    "tq2_0": gguf.LlamaFileType.MOSTLY_TQ2_0,
    "tq1_0": gguf.LlamaFileType.MOSTLY_TQ1_0,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
}

# Module paths inside a decoder layer -> GGUF tensors.
LAYER_LINEARS = {
    "self_attn.q_proj": T.ATTN_Q,
    "self_attn.k_proj": T.ATTN_K,
    "self_attn.v_proj": T.ATTN_V,
    "self_attn.o_proj": T.ATTN_OUT,
    "mlp.gate_proj": T.FFN_GATE,
    "mlp.up_proj": T.FFN_UP,
    "mlp.down_proj": T.FFN_DOWN,
}
LAYER_NORMS = {
    "input_layernorm": T.ATTN_NORM,
    "post_attention_layernorm": T.FFN_NORM,
    "self_attn.o_proj.sub_norm": T.ATTN_SUB_NORM,
    "mlp.down_proj.sub_norm": T.FFN_SUB_NORM,
}
SUBLN_LINEARS = ("self_attn.o_proj", "mlp.down_proj")


def _name(tensor: gguf.MODEL_TENSOR, bid: int | None = None) -> str:
    return gguf.TENSOR_NAMES[tensor].format(bid=bid)


def ternary_tensor_type(weight_type: str, in_features: int) -> gguf.GGMLQuantizationType:
    """The GGML type of one ternary matrix whose rows hold ``in_features`` weights.

    TQ1_0/TQ2_0 pack whole rows in blocks of 256 (llama.cpp refuses other row lengths), so a
    matrix with rows of e.g. 576 (SmolLM2) falls back to Q8_0: blocks of 32 int8 with one f16
    scale represent {-s, 0, s} exactly up to that scale. Rows not a multiple of 32 fall back to F16.
    """
    qtype = WEIGHT_TYPES[weight_type]
    if qtype in (Q.TQ1_0, Q.TQ2_0) and in_features % 256:
        qtype = Q.Q8_0
    if qtype == Q.Q8_0 and in_features % 32:
        qtype = Q.F16
    return qtype


def _encode(values: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """float32 (out, in) -> the array GGUFWriter stores for ``qtype`` (bytes for block types)."""
    if qtype == Q.F32:
        return values.astype(np.float32)
    if qtype == Q.F16:
        return values.astype(np.float16)
    return gguf.quants.quantize(values.astype(np.float32), qtype)


def _unit(qtype: gguf.GGMLQuantizationType) -> float:
    """What the code 1 decodes to in ``qtype`` (Q8_0 stores 1 as 127 * f16(1/127) = 0.99994)."""
    block = np.ones((1, gguf.GGML_QUANT_SIZES[qtype][0]), dtype=np.float32)
    return float(gguf.quants.dequantize(_encode(block, qtype), qtype).reshape(-1)[0])


def _permute_for_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from rotate-half pairs (i, i + d/2) to llama.cpp's interleaved
    pairs (2i, 2i + 1), as convert_hf_to_gguf's LlamaModel.permute does."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape
    )


def gguf_architecture(model: nn.Module) -> str:
    """``bitnet`` (SubLN model) or ``llama`` (no SubLN); raises ValueError when neither fits."""
    cfg = model.config
    if cfg.model_type != "llama":
        raise ValueError(
            f"GGUF export supports Llama-architecture models (SmolLM2, Llama 3, ...); got "
            f"model_type '{cfg.model_type}'. Use --format hf for other architectures."
        )
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ValueError("GGUF export does not support attention_bias / mlp_bias Llama variants")
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(
            f"GGUF export supports plain RoPE only, got rope_type '{rope['rope_type']}'"
        )
    layers = model.model.layers
    has_subln = [
        _submodule_or_none(layer, f"{path}.sub_norm") is not None
        for layer in layers
        for path in SUBLN_LINEARS
    ]
    others = [
        name for name, m in model.named_modules()
        if isinstance(m, BitLinear) and m.sub_norm is not None
        and not name.endswith(tuple(SUBLN_LINEARS))
    ]
    if others or (any(has_subln) and not all(has_subln)):
        raise ValueError(
            "llama.cpp's bitnet architecture has SubLN exactly before o_proj and down_proj of "
            f"every layer; this model has a different set (extra: {others[:3]})"
        )
    if not all(has_subln):
        return "llama"
    heads, head_dim = cfg.num_attention_heads, _head_dim(cfg)
    if heads * head_dim != cfg.hidden_size:
        raise ValueError(
            f"llama.cpp's bitnet architecture needs heads * head_dim == hidden_size, got "
            f"{heads} * {head_dim} != {cfg.hidden_size}"
        )
    if not _tied(model):
        raise ValueError(
            "llama.cpp's bitnet architecture uses the token embedding as the output head; this "
            "model has a separate lm_head. Use --format hf, or a model with tied embeddings."
        )
    return "bitnet"


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _tied(model: nn.Module) -> bool:
    out = model.get_output_embeddings()
    return out is None or out.weight is model.get_input_embeddings().weight


def _fp_tensor(values: np.ndarray, qtype: gguf.GGMLQuantizationType):
    """A full-precision matrix at ``qtype`` (Q8_0 needs rows of whole 32-blocks, else F16)."""
    if qtype == Q.Q8_0 and values.shape[-1] % 32:
        qtype = Q.F16
    return _encode(values, qtype), qtype


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy()


def _linear_tensors(layer: nn.Linear, tensor, bid: int, arch: str, weight_type: str,
                    embed_type: str, n_rope_heads: int | None):
    """(name, array, qtype) of one projection: ternary codes (+ scale) or a full-precision one."""
    name = _name(tensor, bid)
    if not isinstance(layer, BitLinear):  # excluded from conversion: kept at embed precision
        values = _numpy(layer.weight)
        if n_rope_heads:
            values = _permute_for_rope(values, n_rope_heads)
        array, qtype = _fp_tensor(values, EMBED_TYPES[embed_type])
        return [(f"{name}.weight", array, qtype)]
    codes, scale = ternary_state(layer)  # (out, in) int8, () or (out, 1)
    qtype = ternary_tensor_type(weight_type, layer.in_features)
    separate_scale = arch == "bitnet" and layer.weight_quant not in PER_CHANNEL_QUANTS
    values = _numpy(codes if separate_scale else codes.float() * scale)
    if n_rope_heads:
        values = _permute_for_rope(values, n_rope_heads)
    out = [(f"{name}.weight", _encode(values, qtype), qtype)]
    if separate_scale:  # divided by the code's decoded unit so codes * scale is the exact weight
        s = np.array([float(scale) / _unit(qtype)], dtype=np.float32)
        out.append((f"{name}.scale", s, Q.F32))
    return out


def _model_tensors(model: nn.Module, arch: str, weight_type: str, embed_type: str):
    cfg = model.config
    embed_q = EMBED_TYPES[embed_type]
    embed = _numpy(model.get_input_embeddings().weight)
    yield (_name(T.TOKEN_EMBD) + ".weight", *_fp_tensor(embed, embed_q))
    yield _name(T.OUTPUT_NORM) + ".weight", _numpy(model.model.norm.weight), Q.F32
    if not _tied(model):
        head = model.get_output_embeddings()
        if isinstance(head, BitLinear):
            raise ValueError("a ternary lm_head is not supported by the GGUF export")
        yield (_name(T.OUTPUT) + ".weight", *_fp_tensor(_numpy(head.weight), embed_q))
    rope_heads = {
        "self_attn.q_proj": cfg.num_attention_heads,
        "self_attn.k_proj": cfg.num_key_value_heads,
    } if arch == "llama" else {}
    for bid, layer in enumerate(model.model.layers):
        for path, tensor in LAYER_NORMS.items():
            norm = _submodule_or_none(layer, path)
            if norm is not None:
                yield f"{_name(tensor, bid)}.weight", _numpy(norm.weight), Q.F32
        for path, tensor in LAYER_LINEARS.items():
            yield from _linear_tensors(layer.get_submodule(path), tensor, bid, arch, weight_type,
                                       embed_type, rope_heads.get(path))


def _submodule_or_none(module: nn.Module, path: str) -> nn.Module | None:
    """The submodule at ``path``, or None where an attribute on the way is None (no SubLN)."""
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _add_hparams(writer: gguf.GGUFWriter, model: nn.Module, weight_type: str, name: str) -> None:
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    writer.add_name(name)
    writer.add_file_type(FILE_TYPES[weight_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_rope_dimension_count(_head_dim(cfg))
    if _head_dim(cfg) * cfg.num_attention_heads != cfg.hidden_size:
        writer.add_key_length(_head_dim(cfg))
        writer.add_value_length(_head_dim(cfg))
    writer.add_vocab_size(cfg.vocab_size)


def export_gguf(
    model: nn.Module,
    out: str | Path,
    tokenizer_dir: str | Path,
    *,
    weight_type: str = "tq2_0",
    embed_type: str = "f16",
    name: str | None = None,
) -> dict[str, tuple[str, int]]:
    """Write ``model`` (a converted, fully ternary Llama) to ``out`` as GGUF.

    Args:
        weight_type: ``tq2_0`` (2.06 bits/weight), ``tq1_0`` (1.69) or ``f16`` for the ternary
            projections; rows that are not whole 256-blocks fall back per tensor (see
            :func:`ternary_tensor_type`).
        embed_type: ``f16`` or ``q8_0`` for the embedding, an untied output head and any
            projection kept in full precision. Norms are always f32.
        tokenizer_dir: folder with ``tokenizer.json`` (byte-level BPE), written into the metadata.

    Returns:
        GGUF tensor name -> (GGML type name, bytes), for size reports.
    """
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"unknown GGUF weight type '{weight_type}'; choose {sorted(WEIGHT_TYPES)}")
    if embed_type not in EMBED_TYPES:
        raise ValueError(f"unknown embedding type '{embed_type}'; choose {sorted(EMBED_TYPES)}")
    check_exportable(model)
    arch = gguf_architecture(model)
    if arch == "bitnet":
        warn_subln_eps(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out, arch)
    _add_hparams(writer, model, weight_type, name or out.stem)
    add_tokenizer(writer, tokenizer_dir, model.config.vocab_size,
                  mask_token_id=getattr(model.config, "mask_token_id", None))
    sizes = {}
    for tensor_name, array, qtype in _model_tensors(model, arch, weight_type, embed_type):
        writer.add_tensor(tensor_name, array, raw_dtype=qtype if array.dtype == np.uint8 else None)
        sizes[tensor_name] = (qtype.name, int(array.nbytes))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sizes
