"""``wf convert``, ``wf info``, ``wf export``: make a BitNet model, look at it, ship it."""

from __future__ import annotations

import argparse
from pathlib import Path

from wrinklefree.cli.common import EMBEDDED_HELP, at_least


def cmd_convert(args: argparse.Namespace) -> None:
    from wrinklefree.convert import convert_model_to_bitnet
    from wrinklefree.models import load_model, load_tokenizer

    model = load_model(args.src)
    tokenizer = load_tokenizer(args.src)
    overrides = {"insert_subln": not args.no_subln}
    if args.exclude:
        overrides["exclude"] = list(args.exclude)
    if args.fp_layers:
        overrides["fp_layers"] = list(args.fp_layers)
    if args.fp_layers_subln:
        overrides["fp_layers_subln"] = True
    convert_model_to_bitnet(model, tokenizer=tokenizer, calibrate=args.calibration_batches > 0,
                            num_calibration_batches=args.calibration_batches, **overrides)
    out = Path(args.out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"converted {args.src} -> {out}")
    _print_info(model, tokenizer_dir=out)


def convert_parser(sub) -> None:
    """The ``wf convert`` arguments."""
    p = sub.add_parser("convert", help="convert a model to BitNet b1.58 (BitLinear + SubLN)",
                       description="Replace the decoder's nn.Linear layers with ternary BitLinear "
                       "layers, optionally insert calibrated SubLN norms, and save a checkpoint "
                       "that `wf info`, `wf train`, `wf export` and `load_bitnet` read.")
    p.add_argument("src", help=f"source model: {EMBEDDED_HELP}")
    p.add_argument("out", help="output folder (model + tokenizer)")
    p.add_argument("--no-subln", action="store_true",
                   help="do not insert SubLN before o_proj/down_proj")
    p.add_argument("--exclude", nargs="+", metavar="PATTERN",
                   help="regexes of module names to keep full precision (replaces the default: "
                   "lm_head, score, classifier)")
    p.add_argument("--fp-layers", nargs="+", type=int, metavar="I",
                   help="decoder layers kept whole in full precision, by index (negative counts "
                   "from the end; `--fp-layers 0 1 11 -1` as training=demo). Better quality; "
                   "exports need --fp-layers-subln")
    p.add_argument("--fp-layers-subln", action="store_true",
                   help="give the --fp-layers a calibrated SubLN before o_proj/down_proj too, as "
                   "llama.cpp's bitnet graph and transformers' BitNet need to run them")
    p.add_argument("--calibration-batches", type=at_least(0), default=4, metavar="N",
                   help="batches of ASV training text used to calibrate SubLN gains "
                   "(0 = gains of 1)")
    p.set_defaults(func=cmd_convert)


def cmd_info(args: argparse.Namespace) -> None:
    from wrinklefree.export import resolve_model_dir
    from wrinklefree.models import load_model

    model = load_model(args.path)
    folder = resolve_model_dir(args.path) if Path(args.path).is_dir() else None
    _print_info(model, _gguf_options(args, folder), tokenizer_dir=folder)


def info_parser(sub) -> None:
    """The ``wf info`` arguments."""
    p = sub.add_parser("info", help="parameter counts, ternary sparsity, bits per weight",
                       description="Print what a model folder holds: parameters, which modules are "
                       "quantized, the fraction of zero ternary weights, and what it stores: bits "
                       "per decoder-linear weight as stored (ternary at log2 3, full precision at "
                       "16) and as `wf export` writes it with the GGUF flags given, and the file "
                       "sizes by part.")
    p.add_argument("path", help=f"model: {EMBEDDED_HELP}")
    add_gguf_flags(p)
    p.set_defaults(func=cmd_info)


def cmd_export(args: argparse.Namespace) -> None:
    from wrinklefree.export import export_model, resolve_model_dir
    from wrinklefree.export.size import format_storage
    from wrinklefree.llamacpp import adapter_path

    folder = resolve_model_dir(args.src) if Path(args.src).is_dir() else None
    result = export_model(args.src, args.out, args.format, _gguf_options(args, folder),
                          overwrite=args.overwrite)
    print(f"exported {args.src} -> {args.out} ({args.format})")
    if args.format == "gguf" and adapter_path(args.out).is_file():
        print(f"LRC correction -> {adapter_path(args.out)} (llama.cpp LoRA adapter; wf generate, "
              "chat and serve load it from beside the model)")
    print(format_type_table(result["tensors"]))
    if result["storage"] is not None:
        print(format_storage(result["storage"]))


def _gguf_options(args: argparse.Namespace, folder: Path | None):
    """The GGUF storage types: the flags of :func:`add_gguf_flags` that were given, over the
    types the model was rounded to in training (``model.gguf``, recorded in config.json), over
    the defaults; None when no flag was given (the model's own types, else the defaults)."""
    from dataclasses import replace

    from transformers import AutoConfig

    from wrinklefree.export.gguf import GGUFOptions, recorded_gguf_types

    given = {field: getattr(args, flag) for flag, field in GGUF_FLAGS.items()
             if getattr(args, flag) is not None}
    if not given:
        return None
    recorded = recorded_gguf_types(AutoConfig.from_pretrained(folder)) if folder else None
    return replace(recorded or GGUFOptions(), **given)


GGUF_FLAGS = {"type": "weight_type", "fallback_type": "fallback_type",
              "embed_type": "embed_type", "fp_type": "fp_type", "lora_type": "lora_type"}


def add_gguf_flags(p: argparse.ArgumentParser) -> None:
    """The GGUF storage types (wrinklefree.export.gguf.GGUFOptions): one definition for
    `wf export` and `wf info`. A flag left out takes the type the model was rounded to in
    training (``model.gguf``), else the default shown."""
    from wrinklefree.export.gguf import (
        EMBED_TYPES,
        FALLBACK_TYPES,
        FP_TYPES,
        LORA_TYPES,
        WEIGHT_TYPES,
        GGUFOptions,
    )

    default = GGUFOptions()
    g = p.add_argument_group(
        "GGUF storage types (docs/export.md)",
        "each defaults to the type a student was rounded to in training (model.gguf, recorded "
        "in its config.json), else to the default named")
    g.add_argument("--type", choices=WEIGHT_TYPES,
                   help="ternary projections, all exact (rows that are not whole blocks of it "
                   f"take --fallback-type; none fits: refused; default {default.weight_type})")
    g.add_argument("--fallback-type", choices=FALLBACK_TYPES,
                   help="exact type for rows that are not whole 256-blocks (q4_0: 4.5 "
                   "bits/weight, SIMD kernels; q2_0: 2.25 bits/weight, generic C on x86; "
                   f"default {default.fallback_type})")
    g.add_argument("--embed-type", choices=EMBED_TYPES,
                   help="token embedding (the tied output head) and an untied head (q6_k needs "
                   f"rows of 256, else q8_0; the others rows of 32, else f16; default "
                   f"{default.embed_type})")
    g.add_argument("--fp-type", choices=FP_TYPES,
                   help="decoder layers kept in full precision (fp_layers), quantized as "
                   f"llama.cpp's quantizer does (default {default.fp_type})")
    g.add_argument("--lora-type", choices=LORA_TYPES,
                   help="the LRC correction's LoRA adapter (q8_0 / q4_0 pad each rank to a "
                   f"multiple of 32; default {default.lora_type})")


def export_parser(sub) -> None:
    """The ``wf export`` arguments."""
    p = sub.add_parser("export", help="export a converted model to GGUF (llama.cpp) or packed HF",
                       description="Write a converted model as a GGUF file that llama.cpp runs "
                       "(exact ternary types; full-precision layers at --fp-type; a low-rank "
                       "correction as a LoRA adapter OUT.lora.gguf beside it) or as a packed "
                       "safetensors checkpoint that transformers' AutoModelForCausalLM loads. "
                       "Prints the bytes per type and the bits per decoder-linear weight. See "
                       "docs/export.md.")
    p.add_argument("src", help="model folder written by `wf convert`, or a run folder (final/)")
    p.add_argument("out", help="output: a .gguf file (--format gguf) or a folder (--format hf)")
    p.add_argument("--format", choices=["gguf", "hf"], default="gguf")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUT (refused otherwise); the old export stays "
                   "until the new one is complete")
    add_gguf_flags(p)
    p.set_defaults(func=cmd_export)


def format_type_table(sizes: dict[str, tuple[str, int]]) -> str:
    """Tensors and MiB per storage type, largest first, and the total (what `wf export` prints)."""
    from collections import Counter

    nbytes: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for kind, n in sizes.values():
        nbytes[kind] += n
        count[kind] += 1
    total = sum(nbytes.values())
    lines = [f"  {'type':<8} {'tensors':>7} {'MiB':>9} {'share':>6}"]
    for kind, n in nbytes.most_common():
        lines.append(f"  {kind:<8} {count[kind]:>7} {n / 2**20:9.2f} {n / total:6.1%}")
    lines.append(f"  {'total':<8} {len(sizes):>7} {total / 2**20:9.2f} of weights")
    return "\n".join(lines)


def _print_info(model, options=None, tokenizer_dir: Path | None = None) -> None:
    from wrinklefree.export.size import format_storage
    from wrinklefree.info import model_report

    report = model_report(model, options, tokenizer_dir=tokenizer_dir)
    width = max(len(k) for k in report["summary"])
    for key, value in report["summary"].items():
        print(f"{key:<{width}}  {value}")
    if report["quantized_modules"]:
        print("quantized modules:")
        for pattern, count in report["quantized_modules"].items():
            print(f"  {count:>4} x {pattern}")
    if report["storage"] is not None:
        print(format_storage(report["storage"]))
