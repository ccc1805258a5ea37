"""Quantization math: pure functions, no module state."""

from collections.abc import Callable
from functools import partial

import torch

from wrinklefree.quant.haar import (
    haar_transform_1d_row,
    haar_weight_quantization,
    haar_weight_quantization_no_scale,
    inverse_haar_transform_1d_row,
)
from wrinklefree.quant.hadamard import fwht, hadamard_block_size
from wrinklefree.quant.schedule import LambdaWarmup
from wrinklefree.quant.ternary import (
    absmax_activation_quant,
    absmean_scale,
    ste_linear,
    ste_mix,
    ternary_codes,
    ternary_weight_quant,
)

# Weight quantizers selectable by name (BitLinear's ``weight_quant``); each maps a weight to its
# fake-quantized value in the same dtype and shape.
WEIGHT_QUANTIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "absmean": partial(ternary_weight_quant, per_channel=False),
    "absmean_channel": partial(ternary_weight_quant, per_channel=True),
    "haar": haar_weight_quantization,
}

__all__ = [
    "WEIGHT_QUANTIZERS",
    "LambdaWarmup",
    "absmax_activation_quant",
    "absmean_scale",
    "fwht",
    "haar_transform_1d_row",
    "haar_weight_quantization",
    "haar_weight_quantization_no_scale",
    "hadamard_block_size",
    "inverse_haar_transform_1d_row",
    "ste_linear",
    "ste_mix",
    "ternary_codes",
    "ternary_weight_quant",
]
