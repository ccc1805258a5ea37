"""What a (converted) model holds: parameter counts, quantized modules, ternary statistics."""

from __future__ import annotations

import math
import re
from collections import Counter

import torch
import torch.nn as nn

from wrinklefree.nn import BitLinear
from wrinklefree.objectives.forward import decoder_layers
from wrinklefree.quant import WEIGHT_QUANTIZERS

TERNARY_BITS = math.log2(3)  # information content of one {-1, 0, 1} weight


@torch.no_grad()
def model_report(model: nn.Module, full_precision_bits: int = 16) -> dict:
    """A summary dict plus a count of quantized modules per name pattern (layer index folded).

    ``effective bits/param`` counts ternary weights at log2(3) bits and every other parameter at
    ``full_precision_bits`` (what a 16-bit export stores), per-tensor scales ignored.
    """
    total = sum(p.numel() for p in model.parameters())
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BitLinear)]
    ternary = sum(m.weight.numel() for _, m in layers)
    zeros = 0
    for _, m in layers:
        w_q = WEIGHT_QUANTIZERS[m.weight_quant](m.weight)
        zeros += int((w_q == 0).sum())
    lambdas = sorted({m.quant_lambda for _, m in layers})
    bits = (ternary * TERNARY_BITS + (total - ternary) * full_precision_bits) / max(total, 1)
    summary = {
        "model": type(model).__name__,
        "parameters": f"{total:,}",
        "ternary weights": f"{ternary:,} ({100 * ternary / max(total, 1):.1f}% of parameters)",
        "ternary zeros": f"{100 * zeros / ternary:.1f}%" if ternary else "n/a",
        "quantization lambda": ", ".join(f"{x:g}" for x in lambdas) if lambdas else "n/a",
        "SubLN layers": str(sum(m.sub_norm is not None for _, m in layers)),
        "full-precision decoder layers": _fp_layers(model),
        "effective bits/param": f"{bits:.2f} (ternary at {TERNARY_BITS:.2f}, "
        f"the rest at {full_precision_bits})",
    }
    patterns = Counter(re.sub(r"\.\d+\.", ".N.", name) for name, _ in layers)
    return {"summary": summary, "quantized_modules": dict(sorted(patterns.items()))}


def _fp_layers(model: nn.Module) -> str:
    """The decoder layers with no BitLinear (``fp_layers`` at conversion), or "none"."""
    try:
        layers = decoder_layers(model)
    except TypeError:  # not a Llama-style decoder: nothing to name
        return "n/a"
    kept = [str(i) for i, layer in enumerate(layers)
            if not any(isinstance(m, BitLinear) for m in layer.modules())]
    return ", ".join(kept) if kept else "none"
