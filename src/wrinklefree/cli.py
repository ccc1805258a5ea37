"""The ``wf`` command line: one sub-command per stage of the pipeline.

Each sub-command is a small ``cmd_<name>(args)`` function plus its parser in :func:`build_parser`;
the work itself lives in the library modules, so everything the CLI does is also a Python call.
``wf train`` is the exception: it hands its arguments to Hydra (override syntax ``key=value``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EMBEDDED_HELP = (
    "'smollm2' (the embedded SmolLM2-135M-Instruct), a .gguf file, a HF folder or hub id"
)


def cmd_convert(args: argparse.Namespace) -> None:
    from wrinklefree.convert import convert_model_to_bitnet
    from wrinklefree.data.heldout import calibration_batches
    from wrinklefree.models import load_model, load_tokenizer

    model = load_model(args.src)
    tokenizer = load_tokenizer(args.src)
    overrides = {"insert_subln": not args.no_subln}
    if args.exclude:
        overrides["exclude"] = list(args.exclude)
    batches = None
    if overrides["insert_subln"] and args.calibration_batches > 0:
        batches = calibration_batches(tokenizer, num_batches=args.calibration_batches)
    convert_model_to_bitnet(model, calibration_batches=batches, **overrides)
    out = Path(args.out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"converted {args.src} -> {out}")
    _print_info(model)


def cmd_info(args: argparse.Namespace) -> None:
    from wrinklefree.models import load_model

    _print_info(load_model(args.path))


def cmd_generate(args: argparse.Namespace) -> None:
    import time

    from wrinklefree.generate import (
        DecodeStats,
        encode_prompt,
        eos_token_ids,
        generate_ar,
        generate_block_diffusion,
        load_for_generation,
        mask_token_id_of,
        stream_text,
    )

    if args.mode == "dlm" and (args.temperature != 0.0 or args.top_p != 1.0):
        raise ValueError("--temperature/--top-p apply to --mode ar; block diffusion commits the "
                         "most confident (greedy) tokens")
    model, tokenizer = load_for_generation(args.src, packed=args.packed)
    prompt = sys.stdin.read() if args.prompt is None else args.prompt
    ids = encode_prompt(tokenizer, prompt, chat=args.chat)
    stats, eos = DecodeStats(), eos_token_ids(model, tokenizer)
    if args.mode == "ar":
        chunks = generate_ar(model, ids, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                             eos_token_id=eos, stats=stats)
    else:
        chunks = generate_block_diffusion(
            model, ids, mask_token_id=mask_token_id_of(model, tokenizer),
            max_new_tokens=args.max_new_tokens, block_size=args.block_size,
            threshold=args.threshold, max_steps=args.max_steps, eos_token_id=eos, stats=stats,
        )
    start = time.perf_counter()
    for piece in stream_text(tokenizer, chunks):
        print(piece, end="", flush=True)
    seconds = time.perf_counter() - start
    print()
    print(f"[{stats.new_tokens} tokens in {seconds:.2f} s ({stats.new_tokens / seconds:.1f} tok/s "
          f"incl. the prompt), {stats.model_calls} decoding forward passes]", file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> None:
    from collections import Counter

    from wrinklefree.export import export_model

    sizes = export_model(args.src, args.out, args.format, weight_type=args.type,
                         embed_type=args.embed_type)
    by_type: Counter[str] = Counter()
    for kind, nbytes in sizes.values():
        by_type[kind] += nbytes
    print(f"exported {args.src} -> {args.out} ({args.format})")
    for kind, nbytes in sorted(by_type.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<8} {nbytes / 2**20:9.2f} MiB")
    print(f"  {'total':<8} {sum(by_type.values()) / 2**20:9.2f} MiB of weights")


def cmd_eval(args: argparse.Namespace) -> None:
    import json

    from wrinklefree.eval.compare import COLUMNS, evaluate_models, format_table, mismatched_windows

    common = {"batch_size": args.batch_size, "seed": args.seed, "progress": sys.stderr.isatty()}
    if args.task in ("perplexity", "elbo"):
        options = {"seq_len": args.seq_len, "num_windows": args.windows, "text": args.text}
        if args.task == "elbo":
            options |= {"num_samples": args.samples, "eps": args.eps}
    else:
        if args.task == "classification":
            if args.train is None:
                raise ValueError("--task classification needs --train (a .jsonl file or glue/sst2, "
                                 "glue/qnli, glue/mnli)")
            options = {"train": args.train, "evaluation": args.eval, "max_length": args.max_length}
        else:
            if args.eval is None and args.train is None:
                raise ValueError("--task summarization needs --eval (a .jsonl file with "
                                 "article/summary, or cnn_dailymail)")
            options = {"evaluation": args.eval or args.train, "train": args.train,
                       "max_new_tokens": args.max_new_tokens}
        options |= {"steps": args.steps, "lr": args.lr, "limit_train": args.limit_train,
                    "limit_eval": args.limit_eval}
    options = {k: v for k, v in {**common, **options}.items() if v is not None}  # None: default
    rows = evaluate_models(args.models, args.task, **options)
    print(format_table(rows, COLUMNS[args.task]))
    if mismatched_windows(rows):
        print("note: the models tokenize the text differently (windows differ); per-token "
              "numbers compare only within one tokenizer", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"task": args.task, "options": options,
                                               "results": rows}, indent=2, default=str))


def _print_info(model) -> None:
    from wrinklefree.info import model_report

    report = model_report(model)
    width = max(len(k) for k in report["summary"])
    for key, value in report["summary"].items():
        print(f"{key:<{width}}  {value}")
    if report["quantized_modules"]:
        print("quantized modules:")
        for pattern, count in report["quantized_modules"].items():
            print(f"  {count:>4} x {pattern}")


def config_dir() -> Path:
    """The Hydra config folder (``configs/`` of the source checkout)."""
    path = Path(__file__).resolve().parents[2] / "configs"
    if not (path / "train.yaml").is_file():
        raise FileNotFoundError(f"Hydra configs not found at {path}; install wrinklefree from a "
                                "source checkout with `pip install -e .`")
    return path


def compose_train_config(overrides: list[str]):
    """The training config composed by Hydra from ``configs/train.yaml`` and ``overrides``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from wrinklefree.train.config import TrainConfig

    # the typed schema is the base of train.yaml: every key exists (overridable without '+')
    # and a mistyped key or a wrong type fails at composition, naming the key
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="wf"):
            config = compose("train.yaml", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(f"bad config override: {err}") from err
    from omegaconf import open_dict

    with open_dict(config):
        if config.name is None:  # default run name = the training preset
            config.name = config.hydra.runtime.choices.training
        del config["hydra"]
    return config


def cmd_train(args: argparse.Namespace) -> None:
    from wrinklefree.train.run import train

    config = compose_train_config(args.overrides)
    if args.print_config:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(config))
        return
    train(config)


def bench_dir() -> Path:
    """The benchmark scripts (``bench/`` of the source checkout)."""
    return Path(__file__).resolve().parents[2] / "bench"


def cmd_bench(args: argparse.Namespace) -> None:
    import runpy

    available = sorted(p.stem for p in bench_dir().glob("*.py"))
    if args.name is None:
        print("benchmarks: " + ", ".join(available))
        return
    if args.name not in available:
        raise ValueError(f"unknown benchmark '{args.name}'; available: {', '.join(available)}")
    sys.argv = [f"wf bench {args.name}", *args.bench_args]
    runpy.run_path(str(bench_dir() / f"{args.name}.py"), run_name="__main__")


def cmd_plot(args: argparse.Namespace) -> None:
    from wrinklefree.train.plot import plot_run

    print(plot_run(args.run_dir, args.out))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wf",
        description="wrinklefree: turn a Hugging Face causal LM into a 1.58-bit BitNet model, "
        "train it, export it, run it.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    p.add_argument("--calibration-batches", type=int, default=4, metavar="N",
                   help="batches of ASV training text used to calibrate SubLN gains "
                   "(0 = gains of 1)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="parameter counts, ternary sparsity, bits per weight",
                       description="Print what a model folder holds: parameters, which modules are "
                       "quantized, the fraction of zero ternary weights, effective bits per "
                       "weight.")
    p.add_argument("path", help=f"model: {EMBEDDED_HELP}")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "train", help="train a converted model (Hydra config; `wf train --help`)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train with Hydra-composed configs from configs/. Choose presets with "
        "GROUP=NAME and change values with KEY=VALUE.\n\n"
        "groups: training (demo, stage1_subln, stage2_pretrain, stage3_distill, dlm_distill, tcs,\n"
        "        lrc_calibration, lrc_dlm_influence), model (smollm2_local, smollm2_135m,\n"
        "        qwen3_0.6b, ...), data (asv, local_files, ...), objectives, trainer (cpu,\n"
        "        single_gpu, ddp, fsdp)\n\n"
        "examples:\n"
        "  wf train                                   # the demo (~10 CPU minutes)\n"
        "  wf train training=stage3_distill training.max_steps=200\n"
        "  wf train run_dir=runs/a resume=auto          # continue after a crash\n"
        "  wf train --print-config training=dlm_distill")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides")
    p.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", help="run a benchmark from bench/ (prints a table and JSON)",
                       description="Run bench/NAME.py; arguments after NAME go to the benchmark "
                       "(e.g. `wf bench train_speed --model smollm2`, "
                       "`wf bench inference --help`). Without NAME, list the benchmarks.")
    p.add_argument("name", nargs="?", help="benchmark name (file stem in bench/)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("plot", help="plot a run's loss curves, weights and perplexity to a PNG")
    p.add_argument("run_dir", help="a `wf train` run folder")
    p.add_argument("--out", help="output PNG (default RUN_DIR/loss.png)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("generate", help="generate text (autoregressive or block diffusion)",
                       description="Stream text from a model: autoregressive decoding with a KV "
                       "cache, or Fast-dLLM v2 block diffusion for models trained with the DLM "
                       "objective. SRC may also be a trainer run folder (its final/ model).")
    p.add_argument("src", help=f"model: a run folder, {EMBEDDED_HELP}")
    p.add_argument("--prompt", help="prompt text (default: read stdin)")
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N")
    p.add_argument("--mode", choices=["ar", "dlm"], default="ar",
                   help="ar: autoregressive; dlm: block diffusion (DLM-trained models only)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--packed", action="store_true",
                   help="keep BitLinear weights 2-bit packed in memory (converted models)")
    p.add_argument("--temperature", type=float, default=0.0, help="ar: 0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="ar: nucleus sampling mass")
    p.add_argument("--seed", type=int, default=None, help="ar: sampling seed")
    p.add_argument("--block-size", type=int, default=32, help="dlm: tokens per block")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="dlm: unmask positions whose confidence exceeds this (>1: one per step)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="dlm: denoising steps per block (default: block size)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="export a converted model to GGUF (llama.cpp) or packed HF",
                       description="Write a converted, fully ternary model as a GGUF file that "
                       "llama.cpp runs (TQ2_0 / TQ1_0 ternary types) or as a packed safetensors "
                       "checkpoint that transformers' AutoModelForCausalLM loads. See "
                       "docs/export.md.")
    p.add_argument("src", help="model folder written by `wf convert`, or a run folder (final/)")
    p.add_argument("out", help="output: a .gguf file (--format gguf) or a folder (--format hf)")
    p.add_argument("--format", choices=["gguf", "hf"], default="gguf")
    p.add_argument("--type", choices=["tq2_0", "tq1_0", "f16"], default="tq2_0",
                   help="gguf: type of the ternary projections (rows not a multiple of 256 fall "
                   "back to q8_0, exact for ternary)")
    p.add_argument("--embed-type", choices=["f16", "q8_0"], default="f16",
                   help="gguf: type of the embeddings, output head and full-precision layers")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "eval", help="perplexity, diffusion ELBO, task fine-tuning (classification, summarization)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate one or more models and print one table (see docs/eval.md).\n\n"
        "tasks:\n"
        "  perplexity      clean next-token perplexity on identical held-out windows\n"
        "  elbo            DLM students: masked-diffusion ELBO; AR models: NLL\n"
        "  classification  fine-tune with a new head (--train/--eval: jsonl, or glue/sst2,\n"
        "                  glue/qnli, glue/mnli), report accuracy\n"
        "  summarization   optional fine-tuning, greedy summaries, ROUGE\n"
        "                  (jsonl with article/summary, or cnn_dailymail)\n\n"
        "examples:\n"
        "  wf eval smollm2 converted/ runs/demo --task perplexity --windows 16\n"
        "  wf eval runs/dlm smollm2 --task elbo --samples 16\n"
        "  wf eval runs/demo --task classification --train train.jsonl --eval dev.jsonl")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help=f"models: run folders, {EMBEDDED_HELP}")
    p.add_argument("--task", choices=["perplexity", "elbo", "classification", "summarization"],
                   default="perplexity")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--batch-size", type=int, help="default: 4 (8 for classification)")
    p.add_argument("--seed", type=int, default=0, help="masks (elbo), head init and data order")
    g = p.add_argument_group("perplexity / elbo")
    g.add_argument("--seq-len", type=int, default=256, help="tokens per window (default 256)")
    g.add_argument("--windows", type=int, default=16, help="number of windows (default 16)")
    g.add_argument("--text", metavar="FILE",
                   help="UTF-8 text file (documents split on blank lines) instead of held-out ASV")
    g.add_argument("--samples", type=int, default=16,
                   help="elbo: mask rates per window (default 16)")
    g.add_argument("--eps", type=float, default=1e-3, help="elbo: smallest mask rate (1e-3)")
    g = p.add_argument_group("classification / summarization")
    g.add_argument("--train", metavar="DATA", help="training data: .jsonl or a hub task name")
    g.add_argument("--eval", metavar="DATA", help="evaluation data (default: the hub task's "
                   "validation split)")
    g.add_argument("--steps", type=int,
                   help="fine-tuning steps (default 200 classification, 0 summarization)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (default 5e-5)")
    g.add_argument("--limit-train", type=int, metavar="N", help="use the first N examples")
    g.add_argument("--limit-eval", type=int, metavar="N", help="use the first N examples")
    g.add_argument("--max-length", type=int, help="classification: tokens per text (default 256)")
    g.add_argument("--max-new-tokens", type=int, help="summarization: summary tokens (default 64)")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"wf {args.command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
