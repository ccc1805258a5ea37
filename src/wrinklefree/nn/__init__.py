"""Modules that hold state: BitLinear, its low-rank-corrected variant, and SubLN."""

from wrinklefree.nn.bitlinear import BitLinear
from wrinklefree.nn.lrc import BitLinearLRC, convert_bitlinear_to_lrc, freeze_model_except_lrc
from wrinklefree.nn.subln import SubLN

__all__ = [
    "BitLinear",
    "BitLinearLRC",
    "SubLN",
    "convert_bitlinear_to_lrc",
    "freeze_model_except_lrc",
]
