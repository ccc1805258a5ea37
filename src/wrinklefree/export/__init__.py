"""Export converted ternary models: packed weights, GGUF for llama.cpp, packed HF safetensors.

:func:`export_model` is what ``wf export`` runs; the formats live in :mod:`.gguf` and :mod:`.hf`,
the logit comparison in :mod:`.parity`; the byte packing in :mod:`wrinklefree.quant.packing` and
the ternary codes and scales in :mod:`wrinklefree.nn.ternary`. See docs/export.md.
"""

from __future__ import annotations

from pathlib import Path

from wrinklefree.errors import UserInputError
from wrinklefree.export.gguf import GGUFOptions
from wrinklefree.nn.ternary import check_exportable, ternary_state
from wrinklefree.quant.packing import (
    pack_ternary_2bit,
    pack_ternary_base3,
    unpack_ternary_2bit,
    unpack_ternary_base3,
)

FORMATS = ("gguf", "hf")


def resolve_model_dir(src: str | Path) -> Path:
    """A model folder saved after convert, or a trainer run folder (its ``final/`` model)."""
    from wrinklefree.models import resolve_source

    path = Path(resolve_source(str(src)))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{src} is neither a model folder (config.json) nor a run folder (final/config.json); "
            "pass the folder written by `wf convert` or by training"
        )
    return path


def check_output(out: str | Path, overwrite: bool) -> None:
    """Refuse to replace an earlier export (a file, or a folder with files) unless asked to:
    ``wf export`` used to overwrite one silently."""
    path = Path(out)
    if overwrite or not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    raise UserInputError(f"{out} already exists; choose another output path, or replace it with "
                         "--overwrite (overwrite=True in Python; the old export stays until the "
                         "new one is complete)")


def export_model(src: str | Path, out: str | Path, fmt: str = "gguf",
                 options: GGUFOptions | None = None, *, overwrite: bool = False) -> dict:
    """Load a converted model folder (or run folder) and write it as ``fmt`` to ``out``.

    Returns ``{"tensors": {name: (storage type, bytes)}, "storage": report}``: the written
    tensors of every file and, for GGUF, :func:`wrinklefree.export.size.storage_report` of the
    export (bits per decoder-linear weight, bytes by part). ``options`` (GGUF storage types)
    apply to GGUF (None: the types the model was rounded to, else the defaults). An existing
    ``out`` is replaced only with ``overwrite``, and only once the new export is whole.
    """
    from dataclasses import asdict

    from wrinklefree.models import load_model

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}'; choose one of {FORMATS}")
    check_output(out, overwrite)
    folder = resolve_model_dir(src)
    model = load_model(str(folder))
    if fmt == "gguf":
        from wrinklefree.export.gguf import export_gguf, recorded_gguf_types
        from wrinklefree.export.size import storage_report

        options = options or recorded_gguf_types(model) or GGUFOptions()
        tensors = export_gguf(model, out, folder, **asdict(options))
        return {"tensors": tensors, "storage": storage_report(
            model, options, tokenizer_dir=folder, name=Path(out).stem)}
    from wrinklefree.export.hf import export_hf

    return {"tensors": export_hf(model, out, folder), "storage": None}


__all__ = [
    "FORMATS",
    "GGUFOptions",
    "check_exportable",
    "export_model",
    "pack_ternary_2bit",
    "pack_ternary_base3",
    "resolve_model_dir",
    "ternary_state",
    "unpack_ternary_2bit",
    "unpack_ternary_base3",
]
