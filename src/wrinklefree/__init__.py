"""wrinklefree: turn a Hugging Face causal LM into a 1.58-bit BitNet model, train, export, run.

The public entry points are importable from the package root::

    import wrinklefree as wf

    model = wf.load_model("smollm2")
    wf.convert_model_to_bitnet(model)          # SubLN calibrated on built-in text
    model.save_pretrained("out/bitnet")
    model = wf.load_bitnet("out/bitnet")

They are imported lazily (on first attribute access), so ``import wrinklefree`` stays cheap and
does not pull in torch or transformers until a function is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS = {
    "BitNetConfig": "wrinklefree.nn.surgery",
    "convert_model_to_bitnet": "wrinklefree.convert",
    "calibrate_subln": "wrinklefree.convert",
    "load_bitnet": "wrinklefree.convert",
    "load_model": "wrinklefree.models",
    "load_tokenizer": "wrinklefree.models",
    "BitLinear": "wrinklefree.nn",
    "set_quant_lambda": "wrinklefree.nn",
    "create_objective_manager": "wrinklefree.objectives",
    "export_model": "wrinklefree.export",
    "UserInputError": "wrinklefree.errors",
}

__all__ = [
    "BitLinear",
    "BitNetConfig",
    "UserInputError",
    "calibrate_subln",
    "convert_model_to_bitnet",
    "create_objective_manager",
    "export_model",
    "load_bitnet",
    "load_model",
    "load_tokenizer",
    "set_quant_lambda",
]

if TYPE_CHECKING:  # static tools see the real objects
    from wrinklefree.convert import calibrate_subln, convert_model_to_bitnet, load_bitnet
    from wrinklefree.errors import UserInputError
    from wrinklefree.export import export_model
    from wrinklefree.models import load_model, load_tokenizer
    from wrinklefree.nn import BitLinear, set_quant_lambda
    from wrinklefree.nn.surgery import BitNetConfig
    from wrinklefree.objectives import create_objective_manager


def __getattr__(name: str) -> Any:
    """Import a public entry point on first use (PEP 562) and cache it on the package."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wrinklefree' has no attribute {name!r}; public names: "
                             f"{', '.join(__all__)}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
