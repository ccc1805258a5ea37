"""Modules that hold state: BitLinear, its low-rank-corrected variant, SubLN and packed layers;
module surgery and the ``config.bitnet`` record (:mod:`.surgery`)."""

from wrinklefree.nn.bitlinear import BitLinear, set_quant_lambda
from wrinklefree.nn.lrc import BitLinearLRC, convert_bitlinear_to_lrc, freeze_model_except_lrc
from wrinklefree.nn.subln import SubLN, SubLNLinear
from wrinklefree.nn.surgery import BitNetConfig, bitnet_config_of, record_bitnet, replace_modules

__all__ = [
    "BitLinear",
    "BitLinearLRC",
    "BitNetConfig",
    "SubLN",
    "SubLNLinear",
    "bitnet_config_of",
    "convert_bitlinear_to_lrc",
    "freeze_model_except_lrc",
    "record_bitnet",
    "replace_modules",
    "set_quant_lambda",
]
