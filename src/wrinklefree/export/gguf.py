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
- Decoder layers kept in full precision (``fp_layers``) are written at ``fp_type``; in the
  ``bitnet`` graph they need the SubLN it applies in every layer (``fp_layers_subln``).
- A low-rank correction (LRC, y += U·(Vᵀ·h)) becomes a llama.cpp LoRA adapter written beside
  the model (:func:`wrinklefree.llamacpp.adapter_path`): llama.cpp adds B·(A·h) to the same
  float input its base matmul reads, after the SubLN, which is where our LRC reads h.

A SubLN cannot be folded away (it divides by a data-dependent RMS), so other architectures with
SubLN (Qwen2's biases, Qwen3's q/k norms) have no llama.cpp architecture and are refused.

Every tensor is first *planned* (:func:`plan_gguf`: name, shape, type, part of the model, and a
function that encodes it), so the size report (:mod:`wrinklefree.export.size`) and the writer
read the same plan.
"""

from __future__ import annotations

import contextlib
import functools
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch
import torch.nn as nn

from wrinklefree.errors import UserInputError
from wrinklefree.export.blocks import (
    GGML_TYPES,
    GGMLType,
    encode_q2_0_ternary,
    encode_q4_0_ternary,
    encode_q6_k,
    encode_q8_0_ternary,
)
from wrinklefree.export.vocab import add_tokenizer
from wrinklefree.files import staged_file
from wrinklefree.llamacpp import adapter_path
from wrinklefree.nn import BitLinear, BitLinearLRC
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
EMBED_TYPES = ("q8_0", "q6_k", "q5_0", "q4_0", "f16")
FP_TYPES = ("q8_0", "q4_0", "f16")  # full-precision decoder layers (llama.cpp's quantizers)
LORA_TYPES = ("q8_0", "f16", "q4_0")  # the LRC adapter's factors
# llama.h `enum llama_ftype` (MOSTLY_Q2_0 = 41 is not in gguf-py 0.19)
FILE_TYPES = {"tq2_0": 37, "tq1_0": 36, "q2_0": 41, "q4_0": 2, "f16": 1}
# What each tensor of the file is, for the size report (wrinklefree.export.size)
PARTS = ("ternary", "fallback", "fp_layers", "embeddings", "norms", "correction")


@dataclass
class GGUFOptions:
    """The storage types of one GGUF export (the ``wf export`` flags of the same names).

    Attributes:
        weight_type: ternary projections whose rows are whole blocks of it (all types exact).
        fallback_type: ternary projections whose rows are not (SmolLM2's 576-wide rows).
        embed_type: ``token_embd`` and an untied ``output``. Q8_0 is the default (docs/export.md:
            llama.cpp's own quantizer keeps SmolLM2's tied embedding at Q8_0 too).
        fp_type: linears kept in full precision (``fp_layers``, ``exclude``), quantized the way
            llama.cpp's quantizer does.
        lora_type: the factors of the LRC adapter. Q8_0 by default: on the tiny hybrid the same
            agreement with PyTorch as F16, and on SmolLM2 0.60x its bytes and faster decoding
            (docs/export.md). Block types pad the rank to whole blocks of 32 with zeros
            (exact): llama.cpp multiplies B's rows of r.
    """

    weight_type: str = "tq2_0"
    fallback_type: str = "q4_0"
    embed_type: str = "q8_0"
    fp_type: str = "q8_0"
    lora_type: str = "q8_0"

    def __post_init__(self) -> None:
        for flag, value, choices in (("--type", self.weight_type, WEIGHT_TYPES),
                                     ("--fallback-type", self.fallback_type, FALLBACK_TYPES),
                                     ("--embed-type", self.embed_type, EMBED_TYPES),
                                     ("--fp-type", self.fp_type, FP_TYPES),
                                     ("--lora-type", self.lora_type, LORA_TYPES)):
            if value not in choices:
                raise UserInputError(f"{flag} '{value}' is not a GGUF type the exporter writes "
                                     f"there; choose one of {choices}")

    def describe(self) -> str:
        """One line naming every type, as the reports print it."""
        return ", ".join(f"{k.removesuffix('_type')} {v}" for k, v in asdict(self).items())


GGUF_TYPES_KEY = "gguf_types"  # config.json: the types a model ships as (rounded to, or its run's)


def record_gguf_types(model: nn.Module, options: GGUFOptions) -> None:
    """Record ``options`` on the model's config (saved in config.json): ``wf export`` and the
    size reports default to them, so a student rounded to them exports what it was scored as."""
    setattr(model.config, GGUF_TYPES_KEY, asdict(options))


def recorded_gguf_types(model_or_config) -> GGUFOptions | None:
    """The types recorded by :func:`record_gguf_types` on a model or its config, else None."""
    config = getattr(model_or_config, "config", model_or_config)
    data = getattr(config, GGUF_TYPES_KEY, None)
    return GGUFOptions(**data) if data else None


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the export: what it is called, its numpy shape (rows, in) or (n,), its GGML
    type, which part of the model it stores, and how to encode it (called once, when writing)."""

    name: str
    shape: tuple[int, ...]
    type_name: str
    part: str
    encode: Callable[[], np.ndarray] = field(repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        rows = math.prod(self.shape[:-1])
        return rows * _gguf_type(self.type_name).row_bytes(self.shape[-1])


@dataclass(frozen=True)
class GGUFPlan:
    """The model file's tensors (llama.cpp's order) and the LoRA adapter's (empty without LRC)."""

    arch: str
    tensors: list[PlannedTensor]
    adapter: list[PlannedTensor]


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
                        fallback: str = "q4_0", tensor: str = "a projection") -> str:
    """The GGML type (name) that stores one ternary matrix with rows of ``in_features`` exactly.

    ``weight_type`` where the row width allows it (TQ1_0/TQ2_0: multiples of 256, Q2_0: 64,
    Q4_0 and Q8_0: 32), else ``fallback`` (Q4_0, Q2_0 or Q8_0), else Q2_0, else Q4_0. Never a
    silent float: raises ValueError naming the tensor when no exact quantized type fits.
    """
    GGUFOptions(weight_type=weight_type, fallback_type=fallback)  # names a bad type
    chain = [weight_type] if weight_type == "f16" else [weight_type, fallback, "q2_0", "q4_0"]
    for name in chain:
        if in_features % _gguf_type(name).block == 0:
            return name.upper()
    raise ValueError(
        f"{tensor}: rows of {in_features} weights fit no exact llama.cpp ternary type "
        f"(TQ1_0/TQ2_0 need multiples of 256, Q2_0 of 64, Q4_0 of 32); export with --type f16 "
        "(exact, 16 bits per weight)"
    )


def fp_tensor_type(type_name: str, in_features: int, tensor: str = "a tensor") -> str:
    """The GGML type of a full-precision matrix with rows of ``in_features`` stored at
    ``type_name``: Q6_K packs rows of 256, the other block types rows of 32; narrower rows take
    the next type up, as llama.cpp's own quantizer does (llama-quant.cpp: Q6_K -> Q8_0), with a
    warning."""
    import warnings

    chosen = type_name.upper()
    for wanted, fallback in (("Q6_K", "Q8_0"), ("Q8_0", "F16"), ("Q5_0", "F16"), ("Q4_0", "F16")):
        if chosen == wanted and in_features % _gguf_type(wanted).block:
            warnings.warn(f"{tensor}: rows of {in_features} are not whole {wanted} blocks of "
                          f"{_gguf_type(wanted).block}; stored as {fallback}", stacklevel=3)
            chosen = fallback
    return chosen


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
    """float32 (out, in) -> the array the writer stores for a full-precision tensor (Q4_0 / Q5_0
    / Q8_0 by gguf-py's ports of llama.cpp's reference quantizers)."""
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


def gguf_architecture(model: nn.Module, strict: bool = True) -> str:
    """``bitnet`` (SubLN model) or ``llama`` (no SubLN); raises ValueError when neither fits.

    ``strict=False`` names the architecture the model would export as once its SubLNs are
    complete (the size report of a model with full-precision layers and no SubLN there)."""
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
    has_subln = [
        _submodule_or_none(layer, f"{path}.sub_norm") is not None
        for layer in model.model.layers
        for path in SUBLN_LINEARS
    ]
    others = [
        name for name, m in model.named_modules()
        if getattr(m, "sub_norm", None) is not None and not name.endswith(SUBLN_LINEARS)
    ]
    if others:
        raise ValueError(
            "llama.cpp's bitnet architecture has SubLN exactly before o_proj and down_proj of "
            f"every layer; this model has others ({others[:3]}): convert with the default "
            "subln_targets to export"
        )
    if strict and any(has_subln) and not all(has_subln):
        raise ValueError(
            "llama.cpp's bitnet graph normalises the input of o_proj and down_proj in every "
            "layer, and this model's full-precision layers (fp_layers / exclude) have no SubLN "
            "there: train with model.convert.fp_layers_subln=true (or fp_layers=[]) to export"
        )
    if not any(has_subln):
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


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy()


def _float_tensor(name: str, weight: torch.Tensor, type_name: str, part: str,
                  n_rope_heads: int | None = None) -> PlannedTensor:
    """A full-precision matrix (rows, in) at ``type_name`` (falling back as fp_tensor_type)."""
    chosen = fp_tensor_type(type_name, weight.shape[-1], name)

    def encode() -> np.ndarray:
        values = _numpy(weight)
        if n_rope_heads:
            values = _permute_for_rope(values, n_rope_heads)
        return _encode_float(values, chosen)

    return PlannedTensor(name, tuple(weight.shape), chosen, part, encode)


def _ternary_tensors(layer: BitLinear, name: str, arch: str, options: GGUFOptions,
                     n_rope_heads: int | None) -> list[PlannedTensor]:
    """The codes (+ the f32 ``.scale`` in bitnet) of one ternary projection."""
    type_name = ternary_tensor_type(options.weight_type, layer.in_features,
                                    fallback=options.fallback_type, tensor=f"{name}.weight")
    part = "ternary" if type_name == options.weight_type.upper() else "fallback"
    # bitnet multiplies each matmul by an f32 {1}-shaped `.scale`: blocks hold the codes (d = 1).
    # Not under an adapter: llama.cpp's build_ffn multiplies up / gate by `.scale` after adding
    # the LoRA term (llama-graph.cpp), so an LRC layer folds its scale into the blocks' fp16 d.
    separate_scale = (arch == "bitnet" and layer.weight_quant not in PER_CHANNEL_QUANTS
                      and not isinstance(layer, BitLinearLRC))

    def encode_weight() -> np.ndarray:
        codes, scale = ternary_state(layer)  # (out, in) int8, () or (out, 1)
        d = np.ones((codes.shape[0], 1), np.float32)
        if not separate_scale:  # folded into each block's fp16 d (per row for per-channel)
            d = d * _numpy(scale).reshape(-1, 1)
        codes_np = codes.numpy()
        if n_rope_heads:
            codes_np, d = (_permute_for_rope(a, n_rope_heads) for a in (codes_np, d))
        return _encode_ternary(codes_np, d, type_name)

    out = [PlannedTensor(f"{name}.weight", (layer.out_features, layer.in_features), type_name,
                         part, encode_weight)]
    if separate_scale:
        def encode_scale() -> np.ndarray:
            return np.array([float(ternary_state(layer)[1])], dtype=np.float32)

        out.append(PlannedTensor(f"{name}.scale", (1,), "F32", part, encode_scale))
    return out


def lora_rank(rank: int, type_name: str) -> int:
    """The rank stored for a LoRA pair: block types (Q8_0, Q4_0) need B's rows of r in whole
    blocks of 32, so the rank is padded with zero factors (exact); F16 keeps it."""
    block = _gguf_type(type_name).block
    return -(-rank // block) * block


def _lora_tensors(layer: BitLinearLRC, name: str, options: GGUFOptions,
                  n_rope_heads: int | None) -> list[PlannedTensor]:
    """llama.cpp's LoRA pair for one LRC layer: ``lora_a`` = Vᵀ (r, in), ``lora_b`` = U (out, r)
    so that B·(A·h) = U·(Vᵀ·h), rank zero-padded for block types (:func:`lora_rank`)."""
    a_type = fp_tensor_type(options.lora_type, layer.in_features, f"{name}.weight.lora_a")
    rank = lora_rank(layer.lrc_rank, options.lora_type)
    b_type = fp_tensor_type(options.lora_type, rank, f"{name}.weight.lora_b")

    def padded(t: torch.Tensor) -> np.ndarray:  # (n, r) -> (n, rank)
        values = _numpy(t)
        return np.pad(values, ((0, 0), (0, rank - values.shape[1])))

    def encode_a() -> np.ndarray:
        return _encode_float(np.ascontiguousarray(padded(layer.lrc_V).T), a_type)

    def encode_b() -> np.ndarray:
        values = padded(layer.lrc_U)
        if n_rope_heads:  # the same row order as the base q / k
            values = _permute_for_rope(values, n_rope_heads)
        return _encode_float(values, b_type)

    return [
        PlannedTensor(f"{name}.weight.lora_a", (rank, layer.in_features), a_type, "correction",
                      encode_a),
        PlannedTensor(f"{name}.weight.lora_b", (layer.out_features, rank), b_type, "correction",
                      encode_b),
    ]


def _submodule_or_none(module: nn.Module, path: str) -> nn.Module | None:
    """The submodule at ``path``, or None where an attribute on the way is None (no SubLN)."""
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def plan_gguf(model: nn.Module, options: GGUFOptions | None = None, *,
              strict: bool = True) -> GGUFPlan:
    """Every tensor :func:`export_gguf` writes for ``model`` (and its LoRA adapter), unencoded.

    ``strict`` (the exporter) refuses what llama.cpp cannot run; ``strict=False`` (the size
    report) plans the same tensors without the refusals that leave the sizes unchanged (codes
    that are not ``codes * scale``, full-precision layers without SubLN, lambda < 1).
    """
    options = options or GGUFOptions()
    if strict:
        check_exportable(model, lrc=True)
    arch = gguf_architecture(model, strict=strict)
    cfg = model.config
    embed_name = _name(T.TOKEN_EMBD) + ".weight"
    tensors = [
        _float_tensor(embed_name, model.get_input_embeddings().weight, options.embed_type,
                      "embeddings"),
        PlannedTensor(_name(T.OUTPUT_NORM) + ".weight", tuple(model.model.norm.weight.shape),
                      "F32", "norms", functools.partial(_numpy, model.model.norm.weight)),
    ]
    if not _tied(model):
        head = model.get_output_embeddings()
        if isinstance(head, BitLinear):
            raise ValueError("a ternary lm_head is not supported by the GGUF export")
        tensors.append(_float_tensor(_name(T.OUTPUT) + ".weight", head.weight,
                                     options.embed_type, "embeddings"))
    rope_heads = {
        "self_attn.q_proj": cfg.num_attention_heads,
        "self_attn.k_proj": cfg.num_key_value_heads,
    } if arch == "llama" else {}
    adapter = []
    for bid, layer in enumerate(model.model.layers):
        for path, tensor in LAYER_NORMS.items():
            norm = _submodule_or_none(layer, path)
            if norm is not None:
                tensors.append(PlannedTensor(f"{_name(tensor, bid)}.weight",
                                             tuple(norm.weight.shape), "F32", "norms",
                                             functools.partial(_numpy, norm.weight)))
        for path, tensor in LAYER_LINEARS.items():
            linear, name = layer.get_submodule(path), _name(tensor, bid)
            heads = rope_heads.get(path)
            if isinstance(linear, BitLinear):
                tensors.extend(_ternary_tensors(linear, name, arch, options, heads))
            else:
                tensors.append(_float_tensor(f"{name}.weight", linear.weight, options.fp_type,
                                             "fp_layers", heads))
            if isinstance(linear, BitLinearLRC):
                adapter.extend(_lora_tensors(linear, name, options, heads))
    return GGUFPlan(arch, tensors, adapter)


def stored_values(values: np.ndarray, type_name: str) -> np.ndarray:
    """float32 (rows, in) -> the values llama.cpp reads back when they are stored at
    ``type_name`` (the writer's own encoding, decoded by gguf-py)."""
    if type_name == "F32":
        return values.astype(np.float32)
    if type_name == "F16":
        return values.astype(np.float16).astype(np.float32)
    return gguf.quants.dequantize(_encode_float(values, type_name), Q[type_name])


def _round_parameter(param: torch.Tensor, type_name: str, name: str) -> None:
    """Round a full-precision (rows, in) parameter in place to what ``type_name`` stores."""
    chosen = fp_tensor_type(type_name, param.shape[-1], name)
    param.copy_(torch.from_numpy(stored_values(_numpy(param), chosen)).to(param.dtype))


@torch.no_grad()
def round_to_gguf(model: nn.Module, options: GGUFOptions | None = None) -> list[str]:
    """Round the parts a GGUF export quantizes that PyTorch keeps in float -- the token
    embedding (and an untied head) at ``embed_type``, full-precision decoder linears at
    ``fp_type``, the LRC factors at ``lora_type`` -- to the values that export stores, in place.

    Afterwards PyTorch runs the numbers llama.cpp runs (ternary weights are exact already), so
    the model's own perplexity is the exported file's and parity measures arithmetic only.
    Rows are rounded exactly as :func:`plan_gguf` encodes them: the RoPE row permutation does
    not change a row's blocks, and the zero rank padding of block types is rounded with them.
    The types are recorded on the model (:func:`record_gguf_types`). Returns the parameters
    rounded, by name (what training freezes once it has rounded them).
    """
    options = options or GGUFOptions()
    rounded: dict[str, nn.Parameter] = {}
    embed = model.get_input_embeddings().weight
    _round_parameter(embed, options.embed_type, "token_embd")
    rounded["embed_tokens"] = embed
    if not _tied(model):
        head = model.get_output_embeddings().weight
        _round_parameter(head, options.embed_type, "output")
        rounded["lm_head"] = head
    for bid, layer in enumerate(model.model.layers):
        for path in LAYER_LINEARS:
            linear = layer.get_submodule(path)
            name = f"layers.{bid}.{path}"
            if not isinstance(linear, BitLinear):
                _round_parameter(linear.weight, options.fp_type, name)
                rounded[f"{name}.weight"] = linear.weight
            if isinstance(linear, BitLinearLRC):  # lora_a = Vᵀ (r, in), lora_b = U (out, r)
                rank = lora_rank(linear.lrc_rank, options.lora_type)
                v_t = linear.lrc_V.t().contiguous()  # (r, in)
                _round_parameter(v_t, options.lora_type, f"{name}.lora_a")
                linear.lrc_V.copy_(v_t.t())
                u = torch.nn.functional.pad(linear.lrc_U, (0, rank - linear.lrc_rank))
                _round_parameter(u, options.lora_type, f"{name}.lora_b")
                linear.lrc_U.copy_(u[:, : linear.lrc_rank])
                rounded[f"{name}.lrc_V"], rounded[f"{name}.lrc_U"] = linear.lrc_V, linear.lrc_U
    record_gguf_types(model, options)
    return rounded


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


def _model_writer(out: Path | None, model: nn.Module, arch: str, options: GGUFOptions, name: str,
                  tokenizer_dir: str | Path) -> gguf.GGUFWriter:
    """A writer for the model file holding its metadata (hyperparameters, tokenizer)."""
    writer = gguf.GGUFWriter(out, arch)
    _add_hparams(writer, model, options.weight_type, name)
    add_tokenizer(writer, tokenizer_dir, model.config.vocab_size,
                  mask_token_id=getattr(model.config, "mask_token_id", None))
    return writer


def _adapter_writer(out: Path | None, arch: str, model_name: str) -> gguf.GGUFWriter:
    """A writer for the LoRA adapter (llama-adapter.cpp reads these keys): alpha 0 means scale 1
    for every pair, so each LRC layer keeps its own rank."""
    writer = gguf.GGUFWriter(out, arch)
    writer.add_type("adapter")
    writer.add_name(f"{model_name} LRC")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 0.0)
    return writer


def _metadata_bytes(writer: gguf.GGUFWriter) -> int:
    """Bytes of the header and key-value section ``writer`` (made without a path) writes,
    measured by writing them to a scratch file; the writer is spent."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "header.gguf"
        writer.write_header_to_file(scratch)
        writer.write_kv_data_to_file()
        writer.close()
        return scratch.stat().st_size


def model_metadata_bytes(model: nn.Module, plan: GGUFPlan, tokenizer_dir: str | Path,
                         options: GGUFOptions, name: str) -> int:
    """Header + metadata bytes of the model file (the tokenizer is most of it)."""
    return _metadata_bytes(_model_writer(None, model, plan.arch, options, name, tokenizer_dir))


def adapter_metadata_bytes(plan: GGUFPlan, model_name: str) -> int:
    """Header + metadata bytes of the adapter file."""
    return _metadata_bytes(_adapter_writer(None, plan.arch, model_name))


def export_gguf(
    model: nn.Module,
    out: str | Path,
    tokenizer_dir: str | Path,
    *,
    name: str | None = None,
    **options,
) -> dict[str, tuple[str, int]]:
    """Write ``model`` (a converted Llama) to ``out`` as GGUF, and its LRC, if any, as a LoRA
    adapter at :func:`adapter_path` (a stale adapter there is removed when there is none).

    Args:
        tokenizer_dir: folder with ``tokenizer.json`` (byte-level BPE), written into the metadata.
        options: the fields of :class:`GGUFOptions` (``weight_type``, ``fallback_type``,
            ``embed_type``, ``fp_type``, ``lora_type``).

    Returns:
        GGUF tensor name -> (GGML type name, bytes) of both files, for size reports.
    """
    opts = GGUFOptions(**options)
    plan = plan_gguf(model, opts)
    if plan.arch == "bitnet":
        warn_subln_eps(model)
    out = Path(out)
    # every tensor is encoded before the files are opened: a refused tensor leaves no partial file
    encoded = {t.name: t.encode() for t in [*plan.tensors, *plan.adapter]}
    for t in [*plan.tensors, *plan.adapter]:
        if encoded[t.name].nbytes != t.nbytes:  # the plan is what the size report counts
            raise AssertionError(f"{t.name}: planned {t.nbytes} bytes, encoded "
                                 f"{encoded[t.name].nbytes}")
    name = name or out.stem
    lora = adapter_path(out)
    # both files written beside their targets and renamed once both are whole: a full disk
    # keeps an earlier export (model and adapter alike), never a truncated or mismatched pair
    with contextlib.ExitStack() as staging:
        staged = staging.enter_context(staged_file(out))
        _write(_model_writer(staged, model, plan.arch, opts, name, tokenizer_dir), plan.tensors,
               encoded)
        if plan.adapter:
            staged_lora = staging.enter_context(staged_file(lora))
            _write(_adapter_writer(staged_lora, plan.arch, name), plan.adapter, encoded)
    if not plan.adapter and lora.is_file():  # an older export's correction must not load
        lora.unlink()
    return {t.name: (t.type_name, t.nbytes) for t in [*plan.tensors, *plan.adapter]}


def _write(writer: gguf.GGUFWriter, tensors: list[PlannedTensor],
           encoded: dict[str, np.ndarray]) -> None:
    try:
        for t in tensors:
            _add_tensor(writer, t.name, encoded[t.name], t.type_name)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


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
