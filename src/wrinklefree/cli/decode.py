"""``wf generate``, ``wf chat``, ``wf serve``: decode with PyTorch or llama.cpp, one set of
sampling flags (:func:`add_sampling_flags`) checked by one ``Sampling`` for both backends."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from wrinklefree.cli.common import EMBEDDED_HELP, at_least
from wrinklefree.errors import UserInputError

if TYPE_CHECKING:  # torch loads only in the commands that need it
    import torch
    import torch.nn as nn

    from wrinklefree.generate import DecodeStats


REPETITION_HELP = (
    "lower the logits of tokens already in the prompt or the reply (CTRL's penalty; 1 = off). "
    "Default: the model's generation_config.json (a `wf train` student: its "
    "training.sample_repetition_penalty, 1.2 for training=demo), else 1; a .gguf file: 1. 1.2 "
    "stops the greedy loops of briefly trained students (docs/generate.md); llama.cpp applies "
    "it to the last 64 tokens only"
)


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
    prompt = sys.stdin.read() if args.prompt is None else args.prompt
    n_ctx = llamacpp.context_for(args.src, prompt, args.max_new_tokens, chat=args.chat)
    llm = llamacpp.load(args.src, n_ctx=n_ctx, n_threads=args.threads, seed=args.seed,
                        lora=_adapter(args))
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
