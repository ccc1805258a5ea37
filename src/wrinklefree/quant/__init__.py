"""Quantization math: pure functions, no module state."""

from wrinklefree.quant.schedule import LambdaWarmup, set_quant_lambda
from wrinklefree.quant.ternary import (
    absmax_activation_quant,
    absmean_scale,
    ste_mix,
    ternary_codes,
    ternary_weight_quant,
)

from functools import partial
from typing import Callable

import torch

# Weight quantizers selectable by name (BitLinear's ``weight_quant``); each maps a weight to its
# fake-quantized value in the same dtype and shape.
WEIGHT_QUANTIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "absmean": partial(ternary_weight_quant, per_channel=False),
    "absmean_channel": partial(ternary_weight_quant, per_channel=True),
}

__all__ = [
    "WEIGHT_QUANTIZERS",
    "LambdaWarmup",
    "absmax_activation_quant",
    "absmean_scale",
    "set_quant_lambda",
    "ste_mix",
    "ternary_codes",
    "ternary_weight_quant",
]
