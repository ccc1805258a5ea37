"""Model surgery: swap modules by name, and the one record of what a conversion did.

Every change of a model's layers (BitLinear conversion, LRC, packed inference layers) goes
through :func:`replace_modules`, and every read or write of the ``config.bitnet`` record (the
options :func:`wrinklefree.convert.load_bitnet` rebuilds a checkpoint from) through
:func:`record_bitnet` / :func:`bitnet_config_of`, so the record has one format and one owner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch.nn as nn

from wrinklefree.errors import UserInputError, check_ranges, unit_interval

CONFIG_KEY = "bitnet"


@dataclass
class BitNetConfig:
    """What :func:`~wrinklefree.convert.convert_model_to_bitnet` does; stored in ``config.json``
    under ``bitnet``.

    Attributes:
        exclude: regexes (``re.search`` on qualified module names) of linears kept in full
            precision. Embeddings are never ``nn.Linear``; heads are excluded by default.
        fp_layers: decoder layers kept whole in full precision, by index (negative counts from
            the end: ``[0, 1, -1]`` = the first two and the last). They keep the teacher's
            weights and no SubLN, so they can still write the massive activations the ternary
            layers cannot (docs/benchmarks.md). llama.cpp's bitnet and transformers' BitNet
            cannot hold them without a SubLN (see ``fp_layers_subln``); ``load_bitnet`` runs
            them as they are.
        fp_layers_subln: give the ``subln_targets`` of the ``fp_layers`` a calibrated SubLN too
            (:class:`~wrinklefree.nn.SubLNLinear`, still full precision). llama.cpp's bitnet
            graph and transformers' BitNet normalise the input of o_proj and down_proj in every
            layer, so only such a model exports with its full-precision layers.
        insert_subln: RMSNorm before the input of the modules named in ``subln_targets``.
        subln_targets: leaf names of the projections that get a SubLN (BitDistill stage 1).
        quant_lambda: initial quantization strength (0 = full precision, 1 = ternary).
        quantize_activations: per-token int8 activations.
        weight_quant: a key of :data:`wrinklefree.quant.WEIGHT_QUANTIZERS` (``"haar"``: ternary
            Haar-wavelet coefficients, see docs/variants.md).
        hadamard: online Hadamard rotation of the input of ``hadamard_targets`` (BitNet v2
            H-BitLinear); their weights are rotated at conversion, so the function is unchanged.
        hadamard_targets: leaf names of the projections that get the Hadamard rotation.
        lrc_rank: add a low-rank correction U·Vᵀ to every BitLinear (LRC): a float fraction of
            min(in, out) or an int rank; None = no correction.
        lrc_init: ``svd_residual`` (SVD of W - Q(W)) or ``kaiming`` (U = 0, V random).
    """

    exclude: list[str] = field(default_factory=lambda: [r"(^|\.)lm_head$", r"(^|\.)score$",
                                                        r"(^|\.)classifier$"])
    fp_layers: list[int] = field(default_factory=list)
    fp_layers_subln: bool = False
    insert_subln: bool = True
    subln_targets: list[str] = field(default_factory=lambda: ["o_proj", "down_proj"])
    quant_lambda: float = field(default=1.0,
                                metadata=unit_interval("(0 = full precision, 1 = ternary)"))
    quantize_activations: bool = True
    weight_quant: str = "absmean"
    hadamard: bool = False
    hadamard_targets: list[str] = field(default_factory=lambda: ["o_proj", "down_proj"])
    lrc_rank: float | int | None = None
    lrc_init: str = "svd_residual"

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.fp_layers_subln and self.fp_layers and not self.insert_subln:
            raise UserInputError(
                "fp_layers_subln=true needs insert_subln=true (the full-precision layers get the "
                "SubLN the ternary ones have); set insert_subln=true or fp_layers_subln=false"
            )

    @classmethod
    def from_dict(cls, data: dict) -> BitNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown BitNet option(s) {unknown}; known options: {sorted(known)}")
        return cls(**data)


def record_bitnet(model: nn.Module, options: BitNetConfig) -> None:
    """Write ``options`` to ``model.config.bitnet`` (saved in config.json); models without an
    HF config (bare modules in tests) keep no record."""
    if hasattr(model, "config"):
        setattr(model.config, CONFIG_KEY, asdict(options))


def bitnet_config_of(model_or_config) -> BitNetConfig | None:
    """The conversion options recorded on a model or HF config, or None if not converted."""
    config = getattr(model_or_config, "config", model_or_config)
    data = getattr(config, CONFIG_KEY, None)
    return BitNetConfig.from_dict(dict(data)) if data else None


def replace_modules(
    model: nn.Module,
    match: Callable[[str, nn.Module], bool],
    make: Callable[[str, nn.Module], nn.Module],
) -> int:
    """Replace, in place, every submodule ``m`` named ``name`` with ``match(name, m)`` by
    ``make(name, m)``; returns how many were replaced. The matches are collected before any
    is replaced, so a new module is never matched again."""
    targets = [(name, m) for name, m in model.named_modules() if name and match(name, m)]
    for name, module in targets:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, make(name, module))
    return len(targets)
