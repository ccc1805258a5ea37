"""Modules that hold state: BitLinear and SubLN."""

from wrinklefree.nn.bitlinear import BitLinear
from wrinklefree.nn.subln import SubLN

__all__ = ["BitLinear", "SubLN"]
