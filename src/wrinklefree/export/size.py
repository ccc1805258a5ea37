"""What a model stores, counted once: bits per decoder-linear weight and the GGUF export's bytes.

``wf info``, the ``wf train`` report and ``wf bench quality`` all print :func:`storage_report`.

- **Stored** counts the model as trained: each ternary weight at log2(3) bits (its information
  content) and every full-precision parameter that belongs to the decoder's linear layers at
  16 bits (per-tensor / per-channel scales, the LRC factors U and V, linears kept in full
  precision), per decoder-linear weight.
- **Exported** counts what :func:`wrinklefree.export.gguf.export_gguf` writes for the same
  weights (ternary blocks, fallback blocks, full-precision layers, the LoRA adapter), from the
  exporter's own plan (:func:`~wrinklefree.export.gguf.plan_gguf`), per decoder-linear weight.
  The file sizes add the embeddings, norms and metadata (header, tokenizer), with GGUF's 32-byte
  alignment, byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import torch.nn as nn

from wrinklefree.export.gguf import (
    PARTS,
    GGUFOptions,
    GGUFPlan,
    PlannedTensor,
    adapter_metadata_bytes,
    model_metadata_bytes,
    plan_gguf,
    recorded_gguf_types,
)
from wrinklefree.nn import BitLinear, BitLinearLRC
from wrinklefree.nn.ternary import PER_CHANNEL_QUANTS
from wrinklefree.objectives.forward import decoder_layers

TERNARY_BITS = math.log2(3)  # information content of one {-1, 0, 1} weight
FP_BITS = 16  # a full-precision parameter as a 16-bit export would store it
ALIGNMENT = 32  # GGUF's general.alignment default (gguf-py GGUF_DEFAULT_ALIGNMENT)
# the parts of the export that hold decoder-linear weights (bits per linear weight)
LINEAR_PARTS = ("ternary", "fallback", "fp_layers", "correction")


def _pad(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _tensor_info_bytes(t: PlannedTensor) -> int:
    """One GGUF tensor-info record: name (u64 length + UTF-8), n_dims (u32), dims (u64 each),
    type (u32), offset (u64) (GGUF spec, gguf_tensor_info)."""
    return 8 + len(t.name.encode()) + 4 + 8 * len(t.shape) + 4 + 8


def gguf_file_bytes(tensors: list[PlannedTensor], metadata: int) -> int:
    """Bytes of a GGUF file: header + metadata + tensor infos, padded to the alignment, then
    each tensor's data padded to the alignment."""
    header = metadata + sum(_tensor_info_bytes(t) for t in tensors)
    return _pad(header) + sum(_pad(t.nbytes) for t in tensors)


def _linear_counts(model: nn.Module) -> dict[str, int]:
    """Decoder-linear weights and the full-precision parameters stored with them."""
    counts = dict.fromkeys(("linear_weights", "ternary", "fp_layers", "lrc", "scales"), 0)
    for layer in decoder_layers(model):
        for m in layer.modules():
            if not isinstance(m, nn.Linear):
                continue
            n = m.weight.numel()
            counts["linear_weights"] += n
            if isinstance(m, BitLinear):
                counts["ternary"] += n
                counts["scales"] += m.out_features if m.weight_quant in PER_CHANNEL_QUANTS else 1
            else:
                counts["fp_layers"] += n
            if isinstance(m, BitLinearLRC):
                counts["lrc"] += m.lrc_U.numel() + m.lrc_V.numel()
    return counts


def _other_fp(model: nn.Module, counts: dict[str, int]) -> dict[str, int]:
    """Full-precision parameters outside the decoder's linears: embeddings (an untied head
    included) and norms (SubLN gains included), each tensor counted once."""
    seen, embeddings, total = set(), 0, 0
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None and id(module.weight) not in seen:
            seen.add(id(module.weight))
            embeddings += module.weight.numel()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    in_linears = counts["linear_weights"] + counts["lrc"]
    biases = sum(m.bias.numel() for layer in decoder_layers(model) for m in layer.modules()
                 if isinstance(m, nn.Linear) and m.bias is not None)
    return {"embeddings": embeddings, "norms": total - in_linears - biases}


def storage_report(model: nn.Module, options: GGUFOptions | None = None, *,
                   tokenizer_dir: str | Path | None = None, name: str = "model") -> dict:
    """Bits per decoder-linear weight as stored and as exported, full-precision parameters by
    kind, and the GGUF export's bytes by part (JSON-ready).

    ``tokenizer_dir`` (a folder with tokenizer.json) adds the metadata bytes, so the file sizes
    are exact; without it they count tensors and tensor infos only. ``name`` is the file's
    ``general.name`` (``wf export`` uses the output's stem). A model the exporter refuses is
    still counted as it would be written once fixed, with the refusal in ``gguf.refused``.
    ``options`` default to the types the model was rounded to (:func:`recorded_gguf_types`),
    else :class:`GGUFOptions`' defaults: what ``wf export`` writes without flags.
    """
    options = options or recorded_gguf_types(model) or GGUFOptions()
    counts = _linear_counts(model)
    n = counts["linear_weights"]
    fp = counts["fp_layers"] + counts["lrc"] + counts["scales"]
    report = {
        "decoder_linear_weights": n,
        "ternary_weights": counts["ternary"],
        "full_precision_parameters": {
            "fp_layers": counts["fp_layers"], "lrc": counts["lrc"], "scales": counts["scales"],
            **_other_fp(model, counts)},
        "bits_per_linear_weight": {
            # ternary at log2(3) and the full-precision parts at 16 bits, per linear weight
            "stored": (counts["ternary"] * TERNARY_BITS + fp * FP_BITS) / max(n, 1),
            "exported": None},
        "gguf": _gguf_sizes(model, options, tokenizer_dir, name),
    }
    parts = report["gguf"].get("bytes")
    if parts is not None:
        report["bits_per_linear_weight"]["exported"] = (
            8 * sum(parts[p] for p in LINEAR_PARTS) / max(n, 1))
    return report


def _gguf_sizes(model: nn.Module, options: GGUFOptions, tokenizer_dir: str | Path | None,
                name: str) -> dict:
    """The export's bytes by part and per file, or only the reason it cannot be planned."""
    refused = None
    try:
        plan = plan_gguf(model, options)
    except ValueError as err:
        refused = str(err)
        try:
            plan = plan_gguf(model, options, strict=False)
        except ValueError:  # no llama.cpp architecture at all: nothing to count
            return {"options": asdict(options), "refused": refused}
    parts = _bytes_by_part(plan)
    metadata = None
    if tokenizer_dir is not None and (Path(tokenizer_dir) / "tokenizer.json").is_file():
        metadata = model_metadata_bytes(model, plan, tokenizer_dir, options, name)
    adapter = (gguf_file_bytes(plan.adapter, adapter_metadata_bytes(plan, name))
               if plan.adapter else 0)
    return {
        "options": asdict(options),
        "architecture": plan.arch,
        "bytes": parts,
        "metadata_bytes": metadata,
        "model_file_bytes": gguf_file_bytes(plan.tensors, metadata or 0),
        "adapter_file_bytes": adapter,
        "refused": refused,
    }


def _bytes_by_part(plan: GGUFPlan) -> dict[str, int]:
    """Tensor data bytes of both files per part (padding excluded)."""
    parts = dict.fromkeys(PARTS, 0)
    for t in [*plan.tensors, *plan.adapter]:
        parts[t.part] += t.nbytes
    return parts


def _millions(n: int) -> str:
    """A parameter count as the reports print it: 92.0 M, 0.13 M, 4,608."""
    if n < 10_000:
        return f"{n:,}"
    return f"{n / 1e6:.2f} M" if n < 1e7 else f"{n / 1e6:.1f} M"


def format_storage(report: dict) -> str:
    """Two or three lines: stored bits, exported bits and file sizes by part (MB = 1e6 bytes)."""
    fp = report["full_precision_parameters"]
    bits = report["bits_per_linear_weight"]
    kept = [f"{_millions(fp[k])} {label}" for k, label in
            (("fp_layers", "in full-precision linears"), ("lrc", "LRC"), ("scales", "scales"))
            if fp[k]]
    lines = [f"stored: {bits['stored']:.2f} bits per decoder-linear weight "
             f"({_millions(report['decoder_linear_weights'])}: "
             f"{_millions(report['ternary_weights'])} ternary at {TERNARY_BITS:.2f} bits"
             + (f"; at {FP_BITS} bits {', '.join(kept)}" if kept else "") + ")"]
    gguf = report["gguf"]
    types = ", ".join(f"{k.removesuffix('_type')} {v}" for k, v in gguf["options"].items())
    if "bytes" not in gguf:
        lines.append(f"GGUF ({types}): not exportable: {gguf['refused']}")
        return "\n".join(lines)
    labels = {"fp_layers": "fp layers", "correction": None}
    parts = ", ".join(f"{labels.get(k, k)} {v / 1e6:.1f}" for k, v in gguf["bytes"].items()
                      if v and labels.get(k, k) is not None)
    if gguf["metadata_bytes"] is not None:
        parts += f", metadata {gguf['metadata_bytes'] / 1e6:.1f}"
    line = (f"GGUF ({types}): {bits['exported']:.2f} bits per decoder-linear weight; "
            f"{gguf['model_file_bytes'] / 1e6:.1f} MB ({parts})")
    if gguf["adapter_file_bytes"]:
        line += f" + LoRA adapter (LRC) {gguf['adapter_file_bytes'] / 1e6:.1f} MB"
    lines.append(line)
    if gguf["refused"]:
        lines.append(f"  (sizes once exportable; wf export refuses now: {gguf['refused']})")
    return "\n".join(lines)
