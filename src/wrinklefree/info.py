"""What a (converted) model holds: parameter counts, quantized modules, ternary statistics, and
what it stores and exports (:mod:`wrinklefree.export.size`)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn

from wrinklefree.export.gguf import GGUFOptions
from wrinklefree.export.size import storage_report
from wrinklefree.nn import BitLinear
from wrinklefree.objectives.forward import decoder_layers
from wrinklefree.quant import WEIGHT_QUANTIZERS


@torch.no_grad()
def model_report(model: nn.Module, options: GGUFOptions | None = None,
                 tokenizer_dir: str | Path | None = None) -> dict:
    """A summary dict, a count of quantized modules per name pattern (layer index folded), and
    the storage report (bits per decoder-linear weight stored and exported with ``options``,
    the GGUF sizes by part; ``tokenizer_dir`` adds the metadata bytes)."""
    total = sum(p.numel() for p in model.parameters())
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BitLinear)]
    ternary = sum(m.weight.numel() for _, m in layers)
    zeros = 0
    for _, m in layers:
        w_q = WEIGHT_QUANTIZERS[m.weight_quant](m.weight)
        zeros += int((w_q == 0).sum())
    lambdas = sorted({m.quant_lambda for _, m in layers})
    summary = {
        "model": type(model).__name__,
        "parameters": f"{total:,}",
        "ternary weights": f"{ternary:,} ({100 * ternary / max(total, 1):.1f}% of parameters)",
        "ternary zeros": f"{100 * zeros / ternary:.1f}%" if ternary else "n/a",
        "quantization lambda": ", ".join(f"{x:g}" for x in lambdas) if lambdas else "n/a",
        "SubLN layers": str(sum(getattr(m, "sub_norm", None) is not None
                                for m in model.modules())),
        "full-precision decoder layers": _fp_layers(model),
    }
    patterns = Counter(re.sub(r"\.\d+\.", ".N.", name) for name, _ in layers)
    try:
        storage = storage_report(model, options, tokenizer_dir=tokenizer_dir)
    except TypeError:  # not a Llama-style decoder: no decoder linears to count
        storage = None
    return {"summary": summary, "quantized_modules": dict(sorted(patterns.items())),
            "storage": storage}


def _fp_layers(model: nn.Module) -> str:
    """The decoder layers with no BitLinear (``fp_layers`` at conversion), or "none"."""
    try:
        layers = decoder_layers(model)
    except TypeError:  # not a Llama-style decoder: nothing to name
        return "n/a"
    kept = [str(i) for i, layer in enumerate(layers)
            if not any(isinstance(m, BitLinear) for m in layer.modules())]
    return ", ".join(kept) if kept else "none"
