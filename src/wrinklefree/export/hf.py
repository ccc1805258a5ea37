"""Write a converted ternary model as a packed checkpoint that stock transformers loads.

transformers ships the inference side of BitNet b1.58: the ``bitnet`` quantization method
(``BitNetQuantConfig``; ``integrations/bitnet.py``) replaces each ``nn.Linear`` with a BitLinear
holding 2-bit packed uint8 weights and one ``weight_scale``, and computes
y = (W_codes · round(x · s_x)) / (s_x · weight_scale) with per-token absmax int8 activations
s_x = 127 / max|x| -- the same math as our BitLinear (BitNet b1.58, arXiv 2402.17764, Eq. 1-4)
when ``weight_scale = 1 / gamma``. The ``BitNetForCausalLM`` model is a Llama with RMSNorms
``attn_sub_norm`` (before o_proj) and ``ffn_sub_norm`` (before down_proj): our SubLN.

- SubLN Llama -> ``BitNetForCausalLM`` + ``quantization_config = bitnet``.
- No SubLN (any architecture) -> the same architecture + ``quantization_config = bitnet``.
- SubLN on a non-Llama model has no stock class and is refused (use the GGUF or the
  wrinklefree checkpoint itself).

Both load with ``AutoModelForCausalLM.from_pretrained(out)``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from wrinklefree.block_diffusion import BLOCK_SIZE_KEY
from wrinklefree.errors import UserInputError
from wrinklefree.files import staged_folder
from wrinklefree.nn import BitLinearLRC
from wrinklefree.nn.surgery import CONFIG_KEY
from wrinklefree.nn.ternary import (
    PER_CHANNEL_QUANTS,
    check_exportable,
    ternary_state,
    warn_subln_eps,
)
from wrinklefree.quant.packing import pack_ternary_2bit

# Our SubLN parameter -> BitNetForCausalLM's name for it (modeling_bitnet.py).
SUBLN_RENAMES = {
    "self_attn.o_proj.sub_norm.weight": "self_attn.attn_sub_norm.weight",
    "mlp.down_proj.sub_norm.weight": "mlp.ffn_sub_norm.weight",
}
# LlamaConfig fields that BitNetConfig shares (configuration_bitnet.py).
BITNET_CONFIG_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range",
    "rms_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings",
    "attention_bias", "attention_dropout", "rope_parameters",
)


def pack_transformers_bitnet(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes (out, in) -> transformers' packed layout, uint8 (out / 4, in).

    transformers packs along the output dimension: byte [r, c] holds rows r, r + out/4,
    r + 2·out/4, r + 3·out/4 of column c in bits 0-1, 2-3, 4-5, 6-7 (``pack_weights``). Gathering
    those four rows next to each other per column turns it into our 2-bit row packing.
    """
    out_f, in_f = codes.shape
    if out_f % 4:
        raise ValueError(f"transformers' BitNet packing needs out_features % 4 == 0, got {out_f}")
    grouped = codes.view(4, out_f // 4, in_f).permute(2, 1, 0).reshape(in_f, out_f)  # [c, 4r+i]
    return pack_ternary_2bit(grouped).T.contiguous()  # (out / 4, in)


def _uses_bitnet_class(model: nn.Module) -> bool:
    """True for a SubLN Llama (-> BitNetForCausalLM), False for a model without SubLN. The
    full-precision layers of ``fp_layers_subln`` have their SubLN too (kept unconverted)."""
    sub = {name for name, m in model.named_modules() if getattr(m, "sub_norm", None) is not None}
    if not sub:
        return False
    expected = {
        f"model.layers.{i}.{path}"
        for i in range(model.config.num_hidden_layers)
        for path in ("self_attn.o_proj", "mlp.down_proj")
    }
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if cfg.model_type != "llama" or sub != expected or getattr(cfg, "mlp_bias", False):
        raise ValueError(
            "transformers' BitNetForCausalLM is a Llama with SubLN exactly before o_proj and "
            f"down_proj; this {cfg.model_type} model's SubLNs do not map onto it (layers kept "
            "in full precision by fp_layers / exclude have none): train with "
            "model.convert.fp_layers_subln=true, or use the wrinklefree checkpoint (load_bitnet)"
        )
    if head_dim * cfg.num_attention_heads != cfg.hidden_size:
        raise ValueError("BitNetForCausalLM needs heads * head_dim == hidden_size")
    return True


def _hf_config(model: nn.Module, bitnet_class: bool, keep: list[str]):
    from transformers import BitNetConfig, BitNetQuantConfig

    cfg = model.config
    if bitnet_class:
        config = BitNetConfig(**{k: getattr(cfg, k) for k in BITNET_CONFIG_FIELDS})
        config.architectures = ["BitNetForCausalLM"]
        for key in ("mask_token_id", BLOCK_SIZE_KEY):  # a DLM student's decoding settings
            if getattr(cfg, key, None) is not None:
                setattr(config, key, getattr(cfg, key))
    else:
        config = copy.deepcopy(cfg)
        delattr(config, CONFIG_KEY)
    config.dtype = torch.float32
    config.quantization_config = BitNetQuantConfig(
        modules_to_not_convert=keep, linear_class="bitlinear", quantization_mode="offline"
    ).to_dict()
    return config


def _check_hf(layers) -> None:
    for name, layer in layers:
        if layer.weight_quant in PER_CHANNEL_QUANTS:
            raise ValueError(
                f"{name}: transformers' BitLinear has one weight_scale per layer; per-channel "
                "scales (absmean_channel, training=demo's and stage3_distill's) can only be "
                "exported to GGUF: export with --format gguf, or train with "
                "model.convert.weight_quant=absmean"
            )
        if not layer.quantize_activations:
            raise ValueError(
                f"{name}: transformers' BitLinear always quantizes activations to int8; this "
                "model was converted with quantize_activations=False"
            )


def _check_no_lrc(model: nn.Module) -> None:
    """Refuse a low-rank correction: its place would be a PEFT LoRA adapter beside the folder,
    which transformers loads only through peft (not a wrinklefree dependency)."""
    import importlib.util

    if not any(isinstance(m, BitLinearLRC) for m in model.modules()):
        return
    missing = ("peft is not installed" if importlib.util.find_spec("peft") is None
               else "wrinklefree writes no PEFT adapter for transformers' BitLinear")
    raise UserInputError(
        "the low-rank correction (LRC) has no form transformers loads beside a BitNet checkpoint "
        f"({missing}: transformers loads LoRA adapters only through peft); export it with "
        "--format gguf, where the LRC becomes a llama.cpp LoRA adapter")


def export_hf(model: nn.Module, out: str | Path, tokenizer_dir: str | Path | None = None
              ) -> dict[str, tuple[str, int]]:
    """Save ``model`` (converted, fully ternary) as packed safetensors + config in ``out``.

    Returns tensor name -> (dtype, bytes) of what was saved (uint8 = packed ternary weights).
    """
    from transformers import AutoTokenizer

    _check_no_lrc(model)
    layers = check_exportable(model)
    _check_hf(layers)
    bitnet_class = _uses_bitnet_class(model)
    if bitnet_class:
        warn_subln_eps(model)
    ternary = {f"{name}.weight": layer for name, layer in layers}
    keep = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and
            f"{n}.weight" not in ternary]
    tied = getattr(model.config, "tie_word_embeddings", False)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue
        if key in ternary:
            codes, scale = ternary_state(ternary[key])
            state[key] = pack_transformers_bitnet(codes)
            # transformers divides by weight_scale: y = W_codes·x_int / (s_x · weight_scale)
            state[key.replace(".weight", ".weight_scale")] = (1.0 / scale.float()).reshape(1)
            continue
        if bitnet_class:
            key = next((key.replace(a, b) for a, b in SUBLN_RENAMES.items() if key.endswith(a)),
                       key)
        state[key] = tensor.detach().float().contiguous()
    # written beside `out`, moved in once whole: a full disk keeps an earlier export's files
    with staged_folder(out) as staged:
        save_file(state, staged / "model.safetensors", metadata={"format": "pt"})
        _hf_config(model, bitnet_class, keep).save_pretrained(staged)
        if getattr(model, "generation_config", None) is not None:  # e.g. a trained penalty
            model.generation_config.save_pretrained(staged)
        if tokenizer_dir is not None:
            AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(staged)
    return {k: (str(v.dtype).removeprefix("torch."), v.numel() * v.element_size())
            for k, v in state.items()}
