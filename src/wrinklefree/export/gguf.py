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

from wrinklefree.export.blocks import (
    GGML_TYPES,
    GGMLType,
    encode_q2_0_ternary,
    encode_q4_0_ternary,
    encode_q6_k,
    encode_q8_0_ternary,
)
from wrinklefree.export.vocab import add_tokenizer
from wrinklefree.nn import BitLinear
from wrinklefree.nn.ternary import (
    PER_CHANNEL_QUANTS,
    check_exportable,
    ternary_state,
    warn_subln_eps,
)

Q = gguf.GGMLQuantizationType
T = gguf.MODEL_TENSOR

# Types that store ternary codes exactly (code * d with an fp16 d, or f16 values), by the row
# width they need. TQ1_0/TQ2_0 pack whole rows of 256 (llama.cpp refuses other widths), Q2_0 rows
# of 64, Q4_0 rows of 32; F16 any width (exact, but 16 bits per weight: only when asked for).
WEIGHT_TYPES = ("tq2_0", "tq1_0", "q2_0", "q4_0", "f16")
FALLBACK_TYPES = ("q4_0", "q2_0", "q8_0")  # rows that are not whole 256-blocks; q8_0: 8.5 bits
DEFAULT_FALLBACK = "q4_0"  # SIMD dot product on x86; Q2_0's is generic C (docs/export.md)
EMBED_TYPES = ("f16", "q8_0", "q6_k", "q5_0")
# llama.h `enum llama_ftype` (MOSTLY_Q2_0 = 41 is not in gguf-py 0.19)
FILE_TYPES = {"tq2_0": 37, "tq1_0": 36, "q2_0": 41, "q4_0": 2, "f16": 1}


def _gguf_type(name: str) -> GGMLType:
    return GGML_TYPES[name.upper()]


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


def ternary_tensor_type(weight_type: str, in_features: int, *,
                        fallback: str = DEFAULT_FALLBACK, tensor: str = "a projection") -> str:
    """The GGML type (name) that stores one ternary matrix with rows of ``in_features`` exactly.

    ``weight_type`` where the row width allows it (TQ1_0/TQ2_0: multiples of 256, Q2_0: 64,
    Q4_0 and Q8_0: 32), else ``fallback`` (Q4_0, Q2_0 or Q8_0), else Q2_0, else Q4_0. Never a
    silent float: raises ValueError naming the tensor when no exact quantized type fits.
    """
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"unknown GGUF weight type '{weight_type}'; choose one of {WEIGHT_TYPES}")
    if fallback not in FALLBACK_TYPES:
        raise ValueError(f"unknown fallback type '{fallback}'; choose one of {FALLBACK_TYPES}")
    chain = [weight_type] if weight_type == "f16" else [weight_type, fallback, "q2_0", "q4_0"]
    for name in chain:
        if in_features % _gguf_type(name).block == 0:
            return name.upper()
    raise ValueError(
        f"{tensor}: rows of {in_features} weights fit no exact llama.cpp ternary type "
        f"(TQ1_0/TQ2_0 need multiples of 256, Q2_0 of 64, Q4_0 of 32); export with --type f16 "
        "(exact, 16 bits per weight)"
    )


def _encode_ternary(codes: np.ndarray, d: np.ndarray, type_name: str) -> np.ndarray:
    """int8 codes (out, in) with scale d ((out, 1) float32) -> what the writer stores: exact
    code * f16(d) blocks (d = 1 keeps the codes themselves), or f16 values."""
    if type_name == "F16":
        return (codes * d).astype(np.float16)
    if type_name == "Q4_0":
        return encode_q4_0_ternary(codes, d)
    if type_name == "Q2_0":
        return encode_q2_0_ternary(codes, d)
    if type_name == "Q8_0":
        return encode_q8_0_ternary(codes, d)
    # gguf's TQ quantizers take d = max|x| per block: exactly d where a block has a non-zero code
    return gguf.quants.quantize((codes * d).astype(np.float32), Q[type_name])


def _encode_float(values: np.ndarray, type_name: str) -> np.ndarray:
    """float32 (out, in) -> the array the writer stores for a full-precision tensor."""
    if type_name == "F32":
        return values.astype(np.float32)
    if type_name == "F16":
        return values.astype(np.float16)
    if type_name == "Q6_K":
        return encode_q6_k(values)
    return gguf.quants.quantize(values.astype(np.float32), Q[type_name])


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
            f"every layer; this model has a different set (extra: {others[:3]}). Layers kept in "
            "full precision (convert option fp_layers / exclude) have none: convert without them "
            "to export; the wrinklefree checkpoint (load_bitnet) runs them as they are"
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


def fp_tensor_type(embed_type: str, in_features: int, tensor: str = "a tensor") -> str:
    """The GGML type of a full-precision matrix stored at ``embed_type``.

    Q6_K packs rows of 256 and Q8_0 rows of 32; narrower rows take the next type up, as
    llama.cpp's own quantizer does (llama-quant.cpp: Q6_K -> Q8_0), with a warning.
    """
    import warnings

    if embed_type not in EMBED_TYPES:
        raise ValueError(f"unknown embedding type '{embed_type}'; choose one of {EMBED_TYPES}")
    chosen = embed_type.upper()
    for wanted, fallback in (("Q6_K", "Q8_0"), ("Q8_0", "F16"), ("Q5_0", "F16")):
        if chosen == wanted and in_features % _gguf_type(wanted).block:
            warnings.warn(f"{tensor}: rows of {in_features} are not whole {wanted} blocks of "
                          f"{_gguf_type(wanted).block}; stored as {fallback}", stacklevel=3)
            chosen = fallback
    return chosen


def _fp_tensor(values: np.ndarray, embed_type: str, tensor: str):
    """(array, type name) of a full-precision matrix at ``embed_type`` (see fp_tensor_type)."""
    type_name = fp_tensor_type(embed_type, values.shape[-1], tensor)
    return _encode_float(values, type_name), type_name


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy()


def _linear_tensors(layer: nn.Linear, tensor, bid: int, arch: str, weight_type: str,
                    embed_type: str, fallback: str, n_rope_heads: int | None):
    """(name, array, type name) of one projection: ternary codes (+ scale) or a full-precision
    one (a layer excluded from conversion is stored like the embedding)."""
    name = _name(tensor, bid)
    if not isinstance(layer, BitLinear):
        values = _numpy(layer.weight)
        if n_rope_heads:
            values = _permute_for_rope(values, n_rope_heads)
        return [(f"{name}.weight", *_fp_tensor(values, embed_type, f"{name}.weight"))]
    codes, scale = ternary_state(layer)  # (out, in) int8, () or (out, 1)
    type_name = ternary_tensor_type(weight_type, layer.in_features, fallback=fallback,
                                    tensor=f"{name}.weight")
    # bitnet multiplies each matmul by an f32 {1}-shaped `.scale`: blocks hold the codes (d = 1)
    separate_scale = arch == "bitnet" and layer.weight_quant not in PER_CHANNEL_QUANTS
    d = np.ones((codes.shape[0], 1), np.float32)
    if not separate_scale:  # folded into each block's fp16 d (per row for per-channel scales)
        d = d * _numpy(scale).reshape(-1, 1)
    codes_np = codes.numpy()
    if n_rope_heads:
        codes_np, d = (_permute_for_rope(a, n_rope_heads) for a in (codes_np, d))
    out = [(f"{name}.weight", _encode_ternary(codes_np, d, type_name), type_name)]
    if separate_scale:
        out.append((f"{name}.scale", np.array([float(scale)], dtype=np.float32), "F32"))
    return out


def _model_tensors(model: nn.Module, arch: str, weight_type: str, embed_type: str,
                   fallback: str):
    """(GGUF name, array, GGML type name) of every tensor, in llama.cpp's order."""
    cfg = model.config
    embed = _numpy(model.get_input_embeddings().weight)
    embed_name = _name(T.TOKEN_EMBD) + ".weight"
    yield (embed_name, *_fp_tensor(embed, embed_type, embed_name))
    yield _name(T.OUTPUT_NORM) + ".weight", _numpy(model.model.norm.weight), "F32"
    if not _tied(model):
        head = model.get_output_embeddings()
        if isinstance(head, BitLinear):
            raise ValueError("a ternary lm_head is not supported by the GGUF export")
        head_name = _name(T.OUTPUT) + ".weight"
        yield (head_name, *_fp_tensor(_numpy(head.weight), embed_type, head_name))
    rope_heads = {
        "self_attn.q_proj": cfg.num_attention_heads,
        "self_attn.k_proj": cfg.num_key_value_heads,
    } if arch == "llama" else {}
    for bid, layer in enumerate(model.model.layers):
        for path, tensor in LAYER_NORMS.items():
            norm = _submodule_or_none(layer, path)
            if norm is not None:
                yield f"{_name(tensor, bid)}.weight", _numpy(norm.weight), "F32"
        for path, tensor in LAYER_LINEARS.items():
            yield from _linear_tensors(layer.get_submodule(path), tensor, bid, arch, weight_type,
                                       embed_type, fallback, rope_heads.get(path))


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
    fallback_type: str = DEFAULT_FALLBACK,
    name: str | None = None,
) -> dict[str, tuple[str, int]]:
    """Write ``model`` (a converted, fully ternary Llama) to ``out`` as GGUF.

    Args:
        weight_type: type of the ternary projections: ``tq2_0`` (2.06 bits/weight), ``tq1_0``
            (1.69), ``q2_0`` (2.25), ``q4_0`` (4.5) or ``f16``; all exact. Rows that are not
            whole blocks of it take ``fallback_type`` per tensor (:func:`ternary_tensor_type`).
        embed_type: ``f16``, ``q8_0``, ``q6_k`` or ``q5_0`` for the embedding, an untied output
            head and any projection kept in full precision. Norms and scales are always f32.
        fallback_type: ``q4_0`` or ``q2_0``, for rows that are not whole 256-blocks.
        tokenizer_dir: folder with ``tokenizer.json`` (byte-level BPE), written into the metadata.

    Returns:
        GGUF tensor name -> (GGML type name, bytes), for size reports.
    """
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"unknown GGUF weight type '{weight_type}'; choose one of {WEIGHT_TYPES}")
    if embed_type not in EMBED_TYPES:
        raise ValueError(f"unknown embedding type '{embed_type}'; choose one of {EMBED_TYPES}")
    if fallback_type not in FALLBACK_TYPES:
        raise ValueError(f"unknown fallback type '{fallback_type}'; choose one of {FALLBACK_TYPES}")
    check_exportable(model)
    arch = gguf_architecture(model)
    if arch == "bitnet":
        warn_subln_eps(model)
    # every tensor is encoded before the file is opened: a refused tensor leaves no partial file
    tensors = list(_model_tensors(model, arch, weight_type, embed_type, fallback_type))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out, arch)
    _add_hparams(writer, model, weight_type, name or out.stem)
    add_tokenizer(writer, tokenizer_dir, model.config.vocab_size,
                  mask_token_id=getattr(model.config, "mask_token_id", None))
    sizes = {}
    for tensor_name, array, type_name in tensors:
        _add_tensor(writer, tensor_name, array, type_name)
        sizes[tensor_name] = (type_name, int(array.nbytes))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sizes


def _add_tensor(writer: gguf.GGUFWriter, name: str, array: np.ndarray, type_name: str) -> None:
    """Add one tensor; block types gguf-py does not know (Q2_0) go in by their raw type id."""
    if array.dtype != np.uint8:
        writer.add_tensor(name, array)
    elif type_name in Q.__members__:
        writer.add_tensor(name, array, raw_dtype=Q[type_name])
    else:  # raw_shape in elements; an int8 view keeps gguf-py from looking the type up
        t = _gguf_type(type_name)
        shape = (*array.shape[:-1], array.shape[-1] // t.block_bytes * t.block)
        writer.add_tensor(name, array.view(np.int8), raw_shape=shape, raw_dtype=t.type_id)
