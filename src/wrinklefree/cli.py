"""The ``wf`` command line: one sub-command per stage of the pipeline.

Each sub-command is a small ``cmd_<name>(args)`` function plus its parser in :func:`build_parser`;
the work itself lives in the library modules, so everything the CLI does is also a Python call.
``wf train`` is the exception: it hands its arguments to Hydra (override syntax ``key=value``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from wrinklefree.allocator import keep_freed_memory
from wrinklefree.errors import UserInputError

if TYPE_CHECKING:  # torch loads only in the commands that need it
    import torch
    import torch.nn as nn

    from wrinklefree.generate import DecodeStats

EMBEDDED_HELP = (
    "'smollm2' (the embedded SmolLM2-135M-Instruct), a .gguf file, a HF folder or hub id"
)
REPETITION_HELP = (
    "lower the logits of tokens already in the prompt or the reply (CTRL's penalty; 1 = off). "
    "Default: the model's generation_config.json (a `wf train` student: its "
    "training.sample_repetition_penalty, 1.2 for training=demo), else 1; a .gguf file: 1. 1.2 "
    "stops the greedy loops of briefly trained students (docs/generate.md); llama.cpp applies "
    "it to the last 64 tokens only"
)


def at_least(low: int):
    """An argparse type: an integer >= ``low``; anything else is refused at parse time, naming
    the argument (``--seq-len 1`` would divide by zero only after the model loaded)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small; use an integer >= {low}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def add_sampling_flags(p: argparse.ArgumentParser, temperature_help: str) -> None:
    """--temperature, --top-p, --seed, --repetition-penalty: one definition for `wf generate` and
    `wf chat`, checked by one :class:`~wrinklefree.llamacpp.Sampling` (:func:`sampling_of`)."""
    p.add_argument("--temperature", type=float, default=0.0, help=temperature_help)
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--repetition-penalty", type=float, default=None, metavar="THETA",
                   help=REPETITION_HELP)


def sampling_of(args: argparse.Namespace):
    """The sampling flags as one :class:`~wrinklefree.llamacpp.Sampling`, every flag checked by
    its name before a model loads (both backends); an unset --repetition-penalty is 1 (off),
    what a .gguf file runs with (:func:`_repetition_penalty` gives a PyTorch model's own)."""
    from wrinklefree.llamacpp import Sampling

    penalty = 1.0 if args.repetition_penalty is None else args.repetition_penalty
    return Sampling(args.max_new_tokens, args.temperature, args.top_p, args.seed, penalty)


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
    _print_info(model, _gguf_options(args), tokenizer_dir=folder)


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


def cmd_generate(args: argparse.Namespace) -> None:
    import time

    from wrinklefree.generate import (
        DecodeStats,
        encode_prompt,
        eos_token_ids,
        load_for_generation,
        stream_text,
    )
    from wrinklefree.models import check_context

    sampling = sampling_of(args)
    if args.repetition_penalty not in (None, 1.0) and args.mode == "dlm":
        raise ValueError("--repetition-penalty applies to --mode ar and speculative (block "
                         "diffusion commits several tokens at once); drop it for --mode dlm")
    if args.compile and args.mode != "ar":
        raise ValueError("--compile applies to --mode ar (a static-shape decode step); drop "
                         f"--compile for --mode {args.mode}")
    if args.mode == "speculative" and (args.temperature != 0.0 or args.top_p != 1.0):
        raise ValueError("--mode speculative reproduces greedy decoding (temperature 0); drop "
                         "--temperature / --top-p, or sample with --mode ar")
    if _runs_in_llamacpp(args):
        _generate_llamacpp(args, sampling)
        return
    _no_lora(args)
    # oneDNN's pre-packed weights are opaque to torch.compile: compile packs for torch._int_mm
    model, tokenizer = load_for_generation(args.src, packed=args.packed,
                                           onednn=not args.compile)
    prompt = sys.stdin.read() if args.prompt is None else args.prompt
    ids = encode_prompt(tokenizer, prompt, chat=args.chat)
    check_context(model, ids.shape[1] + args.max_new_tokens,
                  f"the prompt ({ids.shape[1]}) + --max-new-tokens ({args.max_new_tokens})",
                  "shorten the prompt or lower --max-new-tokens")
    stats = DecodeStats()
    chunks = _decoder(args, model, ids, eos_token_ids(model, tokenizer),
                      tokenizer=tokenizer, stats=stats)
    start = time.perf_counter()
    for piece in stream_text(tokenizer, chunks):
        print(piece, end="", flush=True)
    seconds = time.perf_counter() - start
    print()
    compiled = " and the compilation" if args.compile else ""
    # the prompt pass yields the first token: AR reads exactly 1.00 new token per forward
    per_forward = stats.new_tokens / (stats.model_calls + 1)
    print(f"[{stats.new_tokens} tokens in {seconds:.2f} s ({stats.new_tokens / seconds:.1f} tok/s "
          f"incl. the prompt{compiled}), {stats.model_calls} decoding forward passes, "
          f"{per_forward:.2f} new tokens per forward]", file=sys.stderr)


def _decoder(args: argparse.Namespace, model: nn.Module, ids: torch.Tensor, eos: set[int], *,
             tokenizer, stats: DecodeStats) -> Iterator[list[int]]:
    """The token-chunk generator ``wf generate`` streams: AR (eager, or with --compile a static
    KV cache and a compiled decode step), block diffusion, all with the same sampling flags, or
    self-speculation (greedy AR's text, several tokens per forward)."""
    from wrinklefree.block_diffusion import block_size_of
    from wrinklefree.generate import generate_ar, generate_block_diffusion, mask_token_id_of

    block_size = args.block_size or block_size_of(model) or 32
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "seed": args.seed,
                "eos_token_id": eos, "stats": stats}
    if args.mode == "dlm":  # cmd_generate refused --repetition-penalty here
        return generate_block_diffusion(
            model, ids, mask_token_id=mask_token_id_of(model, tokenizer),
            max_new_tokens=args.max_new_tokens, block_size=block_size,
            threshold=args.threshold, max_steps=args.max_steps, **sampling)
    sampling["repetition_penalty"] = _repetition_penalty(args, model)
    if args.mode == "speculative":  # cmd_generate refused sampling here
        from wrinklefree.speculative import generate_speculative

        return generate_speculative(
            model, ids, mask_token_id=mask_token_id_of(model, tokenizer),
            max_new_tokens=args.max_new_tokens, block_size=block_size,
            eos_token_id=eos, stats=stats, repetition_penalty=sampling["repetition_penalty"])
    if args.compile:
        from wrinklefree.compiled import generate_ar_compiled

        return generate_ar_compiled(model, ids, max_new_tokens=args.max_new_tokens, **sampling)
    return generate_ar(model, ids, max_new_tokens=args.max_new_tokens, **sampling)


def _repetition_penalty(args: argparse.Namespace, model: nn.Module) -> float:
    """--repetition-penalty, else the one the model recommends (generation_config.json), which
    is said on stderr so that a penalised greedy text is never mistaken for plain greedy."""
    from wrinklefree.generate import model_repetition_penalty

    if args.repetition_penalty is not None:
        return args.repetition_penalty
    theta = model_repetition_penalty(model)
    if theta != 1.0:
        print(f"[repetition penalty {theta:g} from the model's generation_config.json; "
              "--repetition-penalty 1 turns it off]", file=sys.stderr)
    return theta


def _runs_in_llamacpp(args: argparse.Namespace) -> bool:
    """--backend auto: a .gguf file runs in llama.cpp unless it needs a PyTorch-only feature
    (block diffusion, --packed, --compile)."""
    from wrinklefree.llamacpp import is_gguf

    torch_only = args.mode != "ar" or args.packed or args.compile
    if args.backend == "llamacpp":
        if torch_only:
            raise ValueError("--backend llamacpp runs eager autoregressive decoding only; drop "
                             "--mode dlm / speculative, --packed, --compile, or use --backend "
                             "torch")
        return True
    return args.backend == "auto" and not torch_only and is_gguf(args.src)


def _generate_llamacpp(args: argparse.Namespace, sampling) -> None:
    """`wf generate x.gguf`: stream from llama.cpp with the same sampling flags."""
    import time

    from wrinklefree import llamacpp

    if not llamacpp.available():
        raise ValueError(f"{args.src}: {llamacpp.INSTALL_HINT}; or pass --backend torch to "
                         "dequantize a llama-architecture GGUF into PyTorch (slow)")
    llm = llamacpp.load(args.src, n_threads=args.threads, seed=args.seed,
                        lora=_adapter(args))
    prompt = sys.stdin.read() if args.prompt is None else args.prompt
    if args.chat:
        pieces = llamacpp.chat_reply(llm, [{"role": "user", "content": prompt}], sampling)
    else:
        pieces = llamacpp.generate(llm, prompt, sampling)
    start, text = time.perf_counter(), ""
    for piece in pieces:
        text += piece
        print(piece, end="", flush=True)
    seconds = time.perf_counter() - start
    print()
    n = len(llm.tokenize(text.encode(), add_bos=False, special=True)) if text else 0
    print(f"[{n} tokens in {seconds:.2f} s ({n / seconds:.1f} tok/s incl. the prompt), "
          "llama.cpp]", file=sys.stderr)
    llm.close()


def generate_parser(sub) -> None:
    """The ``wf generate`` arguments."""
    p = sub.add_parser("generate", help="generate text (autoregressive or block diffusion)",
                       description="Stream text from a model: autoregressive decoding with a KV "
                       "cache, Fast-dLLM v2 block diffusion for models trained with the DLM "
                       "objective, or self-speculation (their greedy AR text, drafted by the "
                       "diffusion view). SRC may also be a trainer run folder (its final/ model).")
    p.add_argument("src", help=f"model: a run folder, {EMBEDDED_HELP}")
    p.add_argument("--prompt", help="prompt text (default: read stdin)")
    p.add_argument("--max-new-tokens", type=at_least(1), default=128, metavar="N")
    p.add_argument("--mode", choices=["ar", "dlm", "speculative"], default="ar",
                   help="ar: autoregressive; dlm: block diffusion (DLM-trained models only); "
                   "speculative: greedy AR's exact text, drafted by the diffusion view and "
                   "verified by the causal view in one forward (DLM-trained models)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--packed", action="store_true",
                   help="converted models: ternary weights as int8 codes multiplied with int8 "
                   "activations (oneDNN, else torch._int_mm): faster than fp32, 4x less weight "
                   "memory")
    p.add_argument("--compile", action="store_true",
                   help="ar, PyTorch: static KV cache + torch.compile of the decode step; the "
                   "compile costs minutes once per run (100-250 s on 2 CPU cores) and pays for "
                   "long generations (SmolLM2-135M --packed: ~3x the eager tok/s)")
    add_sampling_flags(p, "0 = greedy (default); dlm: per masked position")
    p.add_argument("--block-size", type=int, default=None,
                   help="dlm, speculative: tokens per block (default: the block size the student "
                   "trained with, recorded in its config.json; else 32)")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="dlm: unmask positions whose confidence exceeds this (>1: one per step)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="dlm: denoising steps per block (default: block size)")
    p.add_argument("--backend", choices=["auto", "llamacpp", "torch"], default="auto",
                   help="auto: a .gguf file runs in llama.cpp (llama-cpp-python), the rest in "
                   "PyTorch")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: its own)")
    p.add_argument("--lora", metavar="PATH",
                   help="a .gguf: the LoRA adapter to apply (default: the LRC adapter `wf export` "
                   "wrote beside it, X.lora.gguf, if there is one; 'none': the base alone)")
    p.set_defaults(func=cmd_generate)


def cmd_chat(args: argparse.Namespace) -> None:
    from wrinklefree import llamacpp
    from wrinklefree.chat import llamacpp_reply, run_chat, torch_reply

    sampling = sampling_of(args)
    if llamacpp.is_gguf(args.src):
        reply = llamacpp_reply(llamacpp.load(args.src, n_ctx=args.n_ctx, n_threads=args.threads,
                                             seed=args.seed, lora=_adapter(args)), sampling)
    else:
        from wrinklefree.generate import load_for_generation

        _no_lora(args)
        model, tokenizer = load_for_generation(args.src, packed=args.packed)
        sampling = replace(sampling, repetition_penalty=_repetition_penalty(args, model))
        reply = torch_reply(model, tokenizer, sampling)
    run_chat(reply, system=args.system)


def chat_parser(sub) -> None:
    """The ``wf chat`` arguments."""
    p = sub.add_parser("chat", help="multi-turn chat with an instruct model (a turn per line)",
                       description="Chat with an instruct model: each stdin line is a user turn, "
                       "the reply streams to stdout; EOF or /exit ends. A .gguf file runs in "
                       "llama.cpp with its stored chat template, other models in PyTorch with the "
                       "tokenizer's chat template.")
    p.add_argument("src", help=f"model: a .gguf export, a run folder, {EMBEDDED_HELP}")
    p.add_argument("--system", help="system message for the conversation")
    p.add_argument("--max-new-tokens", type=at_least(1), default=256, metavar="N",
                   help="per reply (default 256)")
    add_sampling_flags(p, "0 = greedy (default)")
    p.add_argument("--packed", action="store_true", help="PyTorch: 2-bit packed BitLinear weights")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    p.add_argument("--n-ctx", type=int, default=2048, help="llama.cpp context length")
    p.add_argument("--lora", metavar="PATH",
                   help="a .gguf: the LoRA adapter to apply (default: the LRC adapter `wf export` "
                   "wrote beside it, X.lora.gguf, if there is one; 'none': the base alone)")
    p.set_defaults(func=cmd_chat)


def _adapter(args: argparse.Namespace) -> Path | None:
    """The LoRA adapter to run with the .gguf in ``args.src`` (``--lora``, else the one beside
    it), said on stderr in one line when there is one."""
    from wrinklefree.llamacpp import adapter_note, find_adapter

    adapter = find_adapter(args.src, args.lora)
    if adapter is not None:
        print(adapter_note(adapter), file=sys.stderr, flush=True)
    return adapter


def _no_lora(args: argparse.Namespace) -> None:
    """Refuse --lora where PyTorch runs the model (its LRC is part of the checkpoint)."""
    if args.lora is not None:
        raise UserInputError(f"--lora applies to .gguf files run by llama.cpp; {args.src} runs "
                             "in PyTorch with its correction inside the checkpoint: drop --lora")


def cmd_serve(args: argparse.Namespace) -> None:
    from wrinklefree.llamacpp import serve

    lora = _adapter(args)
    print(f"serving {args.src} on http://{args.host}:{args.port}/v1 (OpenAI API; Ctrl-C stops)",
          file=sys.stderr, flush=True)
    serve(args.src, host=args.host, port=args.port, n_ctx=args.n_ctx, n_threads=args.threads,
          lora=lora)


def serve_parser(sub) -> None:
    """The ``wf serve`` arguments."""
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server for a GGUF (llama.cpp)",
                       description="Serve a .gguf export over HTTP with llama-cpp-python's "
                       "OpenAI-compatible server (/v1/completions, /v1/chat/completions, "
                       "/v1/models; stream=true for server-sent events). Loopback addresses only.")
    p.add_argument("src", help="a .gguf file written by `wf export`")
    p.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--n-ctx", type=int, default=2048, help="context length (default 2048)")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    p.add_argument("--lora", metavar="PATH",
                   help="a .gguf: the LoRA adapter to apply (default: the LRC adapter `wf export` "
                   "wrote beside it, X.lora.gguf, if there is one; 'none': the base alone)")
    p.set_defaults(func=cmd_serve)


def cmd_export(args: argparse.Namespace) -> None:
    from wrinklefree.export import export_model
    from wrinklefree.export.size import format_storage
    from wrinklefree.llamacpp import adapter_path

    result = export_model(args.src, args.out, args.format, _gguf_options(args))
    print(f"exported {args.src} -> {args.out} ({args.format})")
    if args.format == "gguf" and adapter_path(args.out).is_file():
        print(f"LRC correction -> {adapter_path(args.out)} (llama.cpp LoRA adapter; wf generate, "
              "chat and serve load it from beside the model)")
    print(format_type_table(result["tensors"]))
    if result["storage"] is not None:
        print(format_storage(result["storage"]))


def _gguf_options(args: argparse.Namespace):
    """The GGUF storage types named by the flags of :func:`add_gguf_flags`."""
    from wrinklefree.export.gguf import GGUFOptions

    return GGUFOptions(weight_type=args.type, fallback_type=args.fallback_type,
                       embed_type=args.embed_type, fp_type=args.fp_type,
                       lora_type=args.lora_type)


def add_gguf_flags(p: argparse.ArgumentParser) -> None:
    """The GGUF storage types (wrinklefree.export.gguf.GGUFOptions): one definition for
    `wf export` and `wf info`."""
    from wrinklefree.export.gguf import (
        EMBED_TYPES,
        FALLBACK_TYPES,
        FP_TYPES,
        LORA_TYPES,
        WEIGHT_TYPES,
        GGUFOptions,
    )

    default = GGUFOptions()
    g = p.add_argument_group("GGUF storage types (docs/export.md)")
    g.add_argument("--type", choices=WEIGHT_TYPES, default=default.weight_type,
                   help="ternary projections, all exact (rows that are not whole blocks of it "
                   "take --fallback-type; none fits: refused)")
    g.add_argument("--fallback-type", choices=FALLBACK_TYPES, default=default.fallback_type,
                   help="exact type for rows that are not whole 256-blocks (q4_0: 4.5 "
                   "bits/weight, SIMD kernels; q2_0: 2.25 bits/weight, generic C on x86)")
    g.add_argument("--embed-type", choices=EMBED_TYPES, default=default.embed_type,
                   help="token embedding (the tied output head) and an untied head (q6_k needs "
                   "rows of 256, else q8_0; the others rows of 32, else f16)")
    g.add_argument("--fp-type", choices=FP_TYPES, default=default.fp_type,
                   help="decoder layers kept in full precision (fp_layers), quantized as "
                   "llama.cpp's quantizer does")
    g.add_argument("--lora-type", choices=LORA_TYPES, default=default.lora_type,
                   help="the LRC correction's LoRA adapter (q8_0 / q4_0 pad each rank to a "
                   "multiple of 32)")


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


def cmd_eval(args: argparse.Namespace) -> None:
    import json

    from wrinklefree.eval.compare import (
        COLUMNS,
        evaluate_models,
        format_table,
        likelihood_columns,
        mismatched_windows,
    )

    common = {"batch_size": args.batch_size, "seed": args.seed, "progress": sys.stderr.isatty()}
    if args.task in ("perplexity", "elbo"):
        options = {"seq_len": args.seq_len, "num_windows": args.windows, "text": args.text,
                   "domains": _eval_domains(args), "reference": args.reference}
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
    likelihood_task = args.task in ("perplexity", "elbo")
    print(format_table(rows, likelihood_columns(args.task, rows) if likelihood_task
                       else COLUMNS[args.task]))
    if mismatched_windows(rows):
        print("note: the models tokenize the text differently (windows differ); per-token "
              "numbers compare only within one tokenizer", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"task": args.task, "options": options,
                                               "results": rows}, indent=2, default=str))


def _eval_domains(args: argparse.Namespace) -> tuple[str, ...]:
    """``--domain`` as a tuple of domains; ``--text FILE`` is its own single domain."""
    from wrinklefree.data.heldout import DOMAINS

    if args.text is not None:
        if args.domain is not None:
            raise ValueError(f"--domain {args.domain} and --text {args.text} exclude each other: "
                             "--text scores only that file")
        return ("text",)
    return DOMAINS if args.domain in (None, "all") else (args.domain,)


def eval_parser(sub) -> None:
    """The ``wf eval`` arguments."""
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
        "  wf eval smollm2 converted/ runs/demo --task perplexity --windows 64\n"
        "  wf eval runs/demo --reference smollm2 --domain all   # ratios to the teacher\n"
        "  wf eval runs/dlm smollm2 --task elbo --samples 16\n"
        "  wf eval runs/demo --task classification --train train.jsonl --eval dev.jsonl")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help=f"models: run folders, {EMBEDDED_HELP}")
    p.add_argument("--task", choices=["perplexity", "elbo", "classification", "summarization"],
                   default="perplexity")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--batch-size", type=at_least(1),
                   help="perplexity / elbo: windows per forward (default: 2048 tokens' worth, "
                   "16 x 128); classification 8, summarization 4 by default")
    p.add_argument("--seed", type=int, default=0, help="masks (elbo), head init and data order")
    g = p.add_argument_group("perplexity / elbo")
    g.add_argument("--seq-len", type=at_least(2), default=128,
                   help="tokens per window (default 128)")
    g.add_argument("--windows", type=at_least(1), default=64,
                   help="test windows per domain (default 64)")
    g.add_argument("--text", metavar="FILE",
                   help="UTF-8 text file (documents split on blank lines) instead of the domains")
    g.add_argument("--domain", choices=["asv", "english", "all"],
                   help="held-out ASV, general English (news, never trained on) or both "
                   "(default: all)")
    g.add_argument("--reference", metavar="MODEL",
                   help="the full-precision teacher (e.g. smollm2): adds a ratio column, "
                   "perplexity / the reference's on the same domain")
    g.add_argument("--samples", type=at_least(1), default=16,
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
    g.add_argument("--max-new-tokens", type=at_least(1),
                   help="summarization: summary tokens (default 64)")
    p.set_defaults(func=cmd_eval)


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


def cmd_train(args: argparse.Namespace) -> None:
    from wrinklefree.train.compose import compose_train_config
    from wrinklefree.train.run import train

    config = compose_train_config(args.overrides)
    if args.print_config:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(config))
        return
    train(config)


def train_parser(sub) -> None:
    """The ``wf train`` arguments."""
    p = sub.add_parser(
        "train", help="train a converted model (Hydra config; `wf train --help`)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train with Hydra-composed configs from configs/. Choose presets with "
        "GROUP=NAME and change values with KEY=VALUE.\n\n"
        "groups: training (demo, cpu_hour, dlm_demo, dlm_self, stage1_subln,\n"
        "        stage2_pretrain, stage3_distill, dlm_distill, tcs, lrc_calibration,\n"
        "        lrc_dlm_influence), model (smollm2_local, smollm2_135m, qwen3_0.6b, ...), data\n"
        "        (asv, asv_teacher_mix, demo, hour, dlm_self, teacher_samples, local_files,\n"
        "        fineweb_edu), objectives, trainer (cpu, single_gpu, ddp, fsdp)\n\n"
        "A run ends with a table of the teacher, the converted and the trained student:\n"
        "perplexity on two domains (held-out ASV and general English, never trained on), the\n"
        "ratio to the teacher per domain, and greedy samples with their rep-4 / distinct-2\n"
        "(also in RUN_DIR/report.json; see docs/training.md).\n\n"
        "examples:\n"
        "  wf train                                   # the demo (~12 minutes on 2 cores)\n"
        "  wf train training=cpu_hour                 # its recipe for about an hour\n"
        "  wf train training=stage3_distill training.max_steps=200\n"
        "  wf train data=asv_teacher_mix              # half ASV, half the teacher's own samples\n"
        "  wf train run_dir=runs/a resume=auto        # continue after a crash\n"
        "  wf train run_dir=runs/a overwrite=true     # replace the run already in runs/a\n"
        "  wf train --print-config training=dlm_distill")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides")
    p.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    p.set_defaults(func=cmd_train)


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


def bench_parser(sub) -> None:
    """The ``wf bench`` arguments."""
    p = sub.add_parser("bench", help="run a benchmark from bench/ (prints a table and JSON)",
                       description="Run bench/NAME.py; arguments after NAME go to the benchmark "
                       "(e.g. `wf bench train_speed --model smollm2`, "
                       "`wf bench inference --help`). Without NAME, list the benchmarks.")
    p.add_argument("name", nargs="?", help="benchmark name (file stem in bench/)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    p.set_defaults(func=cmd_bench)


def cmd_plot(args: argparse.Namespace) -> None:
    from wrinklefree.train.plot import plot_run

    print(plot_run(args.run_dir, args.out))


def plot_parser(sub) -> None:
    """The ``wf plot`` arguments."""
    p = sub.add_parser("plot", help="plot a run's loss curves, weights and perplexity to a PNG")
    p.add_argument("run_dir", help="a `wf train` run folder")
    p.add_argument("--out", help="output PNG (default RUN_DIR/loss.png)")
    p.set_defaults(func=cmd_plot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wf",
        description="wrinklefree: turn a Hugging Face causal LM into a 1.58-bit BitNet model, "
        "train it, export it, run it.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (convert_parser, info_parser, train_parser, bench_parser, plot_parser,
                generate_parser, chat_parser, serve_parser, export_parser, eval_parser):
        add(sub)  # in this order in `wf --help`
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        args.func(args)
    except Exception as err:
        message = expected_failure(err, args)
        if message is None:
            raise  # a bug, not a bad input: keep the traceback
        print(f"wf {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from err


def expected_failure(err: BaseException, args: argparse.Namespace) -> str | None:
    """The one-line message for a failure the user can fix, naming the input and the fix; None
    for anything else. Library code raises UserInputError for bad inputs (ValueError is the
    older convention for the same); a missing file and an unwritable or full output folder are
    recognised here, where the output the command writes is known."""
    from wrinklefree.errors import write_failure

    write = write_failure(err)
    if write is not None:
        reason, fix = write
        target = getattr(err, "filename", None) or _output_of(args)
        return f"cannot write {target}: {reason}; {fix}"
    if isinstance(err, FileNotFoundError | NotADirectoryError | IsADirectoryError):
        if err.filename is not None:  # a raw OS error: "[Errno 2] ..." says less than this
            return f"{err.filename}: {err.strerror.lower()}; check the path"
        return str(err)
    if isinstance(err, ValueError):  # UserInputError included
        return str(err)
    return None


def _output_of(args: argparse.Namespace) -> str:
    """What the command writes, to name it when a write fails without a file name."""
    if args.command == "train":
        run_dirs = [o.split("=", 1)[1] for o in args.overrides if o.startswith("run_dir=")]
        return run_dirs[-1] if run_dirs else "the run folder (run_dir)"
    if args.command == "plot":
        return args.out or f"{args.run_dir}/loss.png"
    for name in ("json", "out"):
        if getattr(args, name, None):
            return str(getattr(args, name))
    return "the output"


if __name__ == "__main__":
    main()
