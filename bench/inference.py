"""Inference speed and weight memory: PyTorch fp32, ternary, packed, block diffusion, llama.cpp.

    .venv/bin/python bench/inference.py [--model smollm2] [--prompt-len 64] [--new-tokens 32]
                                        [--block-size 32] [--threads 2] [--clock wall]
                                        [--json out.json]

One model, one prompt (the first ``--prompt-len`` tokens of the ASV), greedy decoding of exactly
``--new-tokens`` tokens (EOS ignored), one timed run per row after a short warm-up:

- ``fp32``: the unconverted model.
- ``ternary (fake-quant)``: converted in place with the default options (SubLN, uncalibrated) and
  given a ``<|mask|>`` token, so the same model serves the autoregressive and diffusion rows.
- ``block diffusion``: that model decoded with Fast-dLLM v2 blocks (threshold 0.9, and a fixed
  ``block/4`` steps per block = 4 tokens per step). The model was never trained with the DLM
  objective, so its text is garbage: the rows measure speed only.
- ``packed 2-bit``: the same model after ``pack_model`` (weights decoded from bytes per call).
- ``llama.cpp``: the converted model exported with ``wrinklefree.export`` to GGUF (TQ2_0, TQ1_0,
  F16), run by llama-cpp-python; skipped with the reason when either is unavailable.

Prompt tok/s is the prompt length over the time to the first new token; decode tok/s counts the
tokens after it. Diffusion rows emit whole blocks, so their decode time is the total time minus
the autoregressive prompt time of the same model. ``tok/fwd`` is new tokens per decoding forward
pass. Weights MB is every parameter and buffer (tied tensors once) or the GGUF file size; linear MB
is the ternary projections alone. Prints a table, then the same rows as JSON (also written to
``--json``). On a machine shared with other jobs, ``--threads 1 --clock cpu`` gives steadier
numbers (CPU seconds of this process): two threads that lose their cores to other processes
spin-wait and can run several times slower in wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from wrinklefree.assets import asv_text
from wrinklefree.convert import convert_model_to_bitnet
from wrinklefree.generate import DecodeStats, generate_ar, generate_block_diffusion
from wrinklefree.models import load_model, load_tokenizer
from wrinklefree.nn.packed import pack_model, weight_bytes
from wrinklefree.objectives.dlm import add_mask_token

MB = 1e6
GGUF_TYPES = ("tq2_0", "tq1_0", "f16")


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def timed(chunks: Iterable[list[int]]) -> tuple[float, float, int, int]:
    """(seconds to the first chunk, seconds in total, tokens in the first chunk, tokens in all)."""
    start = clock()
    first_s, first_n, total_n = None, 0, 0
    for chunk in chunks:
        total_n += len(chunk)
        if first_s is None:
            first_s, first_n = clock() - start, len(chunk)
    return first_s, clock() - start, first_n, total_n


def ar_row(name: str, model, ids: torch.Tensor, new_tokens: int) -> dict:
    timed(generate_ar(model, ids, max_new_tokens=2))  # warm-up
    stats = DecodeStats()
    first_s, total_s, _, n = timed(generate_ar(model, ids, max_new_tokens=new_tokens, stats=stats))
    sizes = weight_bytes(model)
    return {
        "name": name,
        "prompt_tok_s": ids.shape[1] / first_s,
        "decode_tok_s": (n - 1) / (total_s - first_s),
        "tokens_per_forward": n / (stats.model_calls + 1),
        "weights_MB": sizes["total"] / MB,
        "linear_MB": sizes["linear"] / MB or None,
        "prompt_s": first_s,
    }


def diffusion_row(name: str, model, ids: torch.Tensor, new_tokens: int, prompt_s: float,
                  **options) -> dict:
    stats = DecodeStats()
    _, total_s, _, n = timed(generate_block_diffusion(
        model, ids, max_new_tokens=new_tokens, require_dlm=False, stats=stats, **options
    ))
    sizes = weight_bytes(model)
    return {
        "name": name,
        "prompt_tok_s": None,
        "decode_tok_s": n / (total_s - prompt_s),
        "tokens_per_forward": n / stats.model_calls,
        "weights_MB": sizes["total"] / MB,
        "linear_MB": sizes["linear"] / MB,
        "note": "untrained DLM: speed only, text is garbage",
    }


def llamacpp_rows(model, tokenizer, ids: torch.Tensor, new_tokens: int, threads: int,
                  workdir: Path) -> list[dict]:
    """Export the model to each GGUF type and time llama.cpp on it; 'skipped' rows otherwise."""
    names = [f"llama.cpp {t.upper()}" for t in GGUF_TYPES]
    try:
        from llama_cpp import Llama
    except ImportError:
        reason = "llama_cpp not installed (pip install -r requirements-llamacpp.txt)"
        return [{"name": n, "note": f"skipped: {reason}"} for n in names]
    try:
        from wrinklefree.export.gguf import export_gguf
    except ImportError as err:
        return [{"name": n, "note": f"skipped: GGUF exporter unavailable ({err})"} for n in names]
    tokenizer.save_pretrained(workdir / "tokenizer")
    prompt = ids[0].tolist()
    rows = []
    for name, weight_type in zip(names, GGUF_TYPES, strict=True):
        path = workdir / f"model-{weight_type}.gguf"
        sizes = export_gguf(model, path, workdir / "tokenizer", weight_type=weight_type)
        llm = Llama(model_path=str(path), n_ctx=len(prompt) + new_tokens + 8, n_threads=threads,
                    n_threads_batch=threads, verbose=False)
        try:
            def decode(n: int, llm=llm) -> Iterable[list[int]]:
                llm.reset()  # n_tokens = 0: generate() must not reuse the cached prompt
                for i, token in enumerate(llm.generate(prompt, temp=0.0, top_k=1, reset=True)):
                    yield [token]
                    if i + 1 == n:
                        return
            timed(decode(2))  # warm-up
            first_s, total_s, _, n = timed(decode(new_tokens))
        finally:
            llm.close()
        linear = sum(b for t, (_, b) in sizes.items() if t.startswith("blk.") and
                     t.endswith(".weight") and ("attn_" in t or "ffn_" in t) and "norm" not in t)
        types = sorted({q for t, (q, _) in sizes.items() if t.startswith("blk.") and "norm" not in t
                        and t.endswith(".weight")})
        rows.append({
            "name": name,
            "prompt_tok_s": len(prompt) / first_s,
            "decode_tok_s": (n - 1) / (total_s - first_s),
            "tokens_per_forward": 1.0,
            "weights_MB": path.stat().st_size / MB,
            "linear_MB": linear / MB,
            "note": "projection types: " + ", ".join(types),
        })
    return rows


def print_table(rows: list[dict]) -> None:
    def fmt(value, spec):
        return f"{'-':>{spec.split('.')[0]}}" if value is None else format(value, spec)

    header = f"{'':<44}{'prompt tok/s':>13}{'decode tok/s':>13}{'tok/fwd':>8}"
    print(header + f"{'weights MB':>11}{'linear MB':>10}  note")
    for r in rows:
        if "decode_tok_s" not in r:
            print(f"{r['name']:<44}{'':>55}  {r['note']}")
            continue
        print(f"{r['name']:<44}{fmt(r['prompt_tok_s'], '13.1f')}{fmt(r['decode_tok_s'], '13.2f')}"
              f"{fmt(r['tokens_per_forward'], '8.2f')}{fmt(r['weights_MB'], '11.1f')}"
              f"{fmt(r['linear_MB'], '10.1f')}  {r.get('note', '')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="any source load_model accepts")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="cpu: this process's CPU seconds, which other jobs on a shared "
                        "machine do not inflate (use with --threads 1)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)

    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    ids = torch.tensor([tokenizer(asv_text()[:20_000])["input_ids"][: args.prompt_len]])
    rows = [ar_row("PyTorch fp32", model, ids, args.new_tokens)]

    convert_model_to_bitnet(model, tokenizer=tokenizer)  # SubLN calibrated on ASV text
    mask_id = add_mask_token(tokenizer, model)
    rows.append(ar_row("PyTorch ternary (fake-quant) AR", model, ids, args.new_tokens))
    prompt_s = rows[-1]["prompt_s"]
    for label, options in (
        ("threshold 0.9", {"threshold": 0.9}),
        (f"{args.block_size // 4} steps/block", {"threshold": 1.1,
                                                  "max_steps": max(1, args.block_size // 4)}),
    ):
        rows.append(diffusion_row(f"PyTorch ternary block diff. {label}", model, ids,
                                  args.new_tokens, prompt_s, mask_token_id=mask_id,
                                  block_size=args.block_size, **options))
    with tempfile.TemporaryDirectory() as workdir:
        gguf_rows = llamacpp_rows(model, tokenizer, ids, args.new_tokens, args.threads,
                                  Path(workdir))
    pack_model(model)
    rows.append(ar_row("PyTorch packed 2-bit AR", model, ids, args.new_tokens))
    rows.extend(gguf_rows)
    for r in rows:
        r.pop("prompt_s", None)

    print(f"{args.model}: prompt {ids.shape[1]} tokens, {args.new_tokens} new tokens, "
          f"{args.threads} threads, block {args.block_size}, {args.clock} clock")
    print_table(rows)
    result = {
        "settings": vars(args),
        "machine": {"torch": torch.__version__, "platform": platform.platform()},
        "rows": rows,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
