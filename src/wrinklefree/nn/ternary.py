"""The exact ternary state of trained BitLinear layers, and which layers have one.

A BitLinear at lambda = 1 with a plain absmean quantizer multiplies by W_q = codes * scale
(BitNet b1.58, arXiv 2402.17764, Eq. 1-3). :func:`ternary_state` computes codes and scale with the
same functions the forward pass uses, so ``codes * scale`` is the exact weight the trained model
multiplies by; the packed inference layers (:mod:`wrinklefree.nn.packed`) and the exporters
(:mod:`wrinklefree.export`) both start from it.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from wrinklefree.nn.bitlinear import BitLinear
from wrinklefree.nn.lrc import BitLinearLRC
from wrinklefree.nn.surgery import bitnet_config_of
from wrinklefree.quant import absmean_scale, ternary_codes

PER_CHANNEL_QUANTS = {"absmean_channel"}
EXPORTABLE_QUANTS = {"absmean", *PER_CHANNEL_QUANTS}  # weight = codes * scale exactly


def ternary_state(layer: BitLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """The integer codes and scale of a BitLinear's ternary weight: W_q = codes * scale.

    codes: int8 (out, in); scale: float32, 0-d (per tensor, ``weight_quant='absmean'``) or
    (out, 1) (per output channel, ``'absmean_channel'``). Same absmean scale and RoundClip as the
    forward pass (BitNet b1.58, arXiv 2402.17764, Eq. 1-3).
    """
    if not isinstance(layer, BitLinear):
        raise TypeError(f"ternary_state needs a BitLinear, got {type(layer).__name__}")
    _check_layer(layer, lrc=True)  # an LRC layer's base weight is codes * scale too
    with torch.no_grad():
        weight = layer.weight.detach()
        scale = absmean_scale(weight, per_channel=layer.weight_quant in PER_CHANNEL_QUANTS)
        return ternary_codes(weight, scale), scale


def _check_layer(layer: BitLinear, name: str = "layer", lrc: bool = False) -> None:
    if layer.weight_quant not in EXPORTABLE_QUANTS:
        raise ValueError(
            f"{name}: weight_quant '{layer.weight_quant}' is not plain ternary codes * scale; "
            f"only {sorted(EXPORTABLE_QUANTS)} can be packed and exported"
        )
    if getattr(layer, "hadamard", False):
        raise ValueError(
            f"{name}: Hadamard layers have no packed / llama.cpp equivalent; export a model "
            "converted without hadamard"
        )
    if isinstance(layer, BitLinearLRC) and not lrc:
        raise ValueError(
            f"{name}: the low-rank correction (LRC) has no packed PyTorch equivalent; run the "
            "model unpacked, or export it to GGUF (the LRC becomes a llama.cpp LoRA adapter)"
        )


def check_exportable(model: nn.Module, lrc: bool = False) -> list[tuple[str, BitLinear]]:
    """The model's BitLinear layers, after checking each is fully ternary codes * scale.

    Raises ValueError for an unconverted model, a lambda warm-up that has not reached 1, or a
    variant whose weight is not codes * scale (Haar, Hadamard); for LRC layers unless ``lrc``
    (the GGUF export writes their correction as a LoRA adapter).
    """
    if bitnet_config_of(model) is None:
        raise ValueError("not a wrinklefree BitNet model; convert it first with `wf convert`")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BitLinear)]
    for name, layer in layers:
        _check_layer(layer, name, lrc)
        if layer.quant_lambda != 1.0:
            raise ValueError(
                f"{name} is not fully ternary (quant_lambda={layer.quant_lambda:g}); export a "
                "model whose lambda warm-up has finished"
            )
    return layers


def warn_subln_eps(model: nn.Module) -> None:
    """Warn when a SubLN epsilon differs from the decoder's: llama.cpp's and transformers' BitNet
    architectures use ``rms_norm_eps`` for every norm (conversion sets it so since this check)."""
    eps = {m.sub_norm.eps for m in model.modules() if isinstance(m, BitLinear) and m.sub_norm}
    if eps and eps != {float(model.config.rms_norm_eps)}:
        warnings.warn(
            f"SubLN epsilon {sorted(eps)} differs from the model's rms_norm_eps "
            f"{model.config.rms_norm_eps}; the exported model uses rms_norm_eps for every norm, "
            "so its logits will differ from the PyTorch model",
            stacklevel=3,
        )
