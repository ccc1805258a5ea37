"""Inference speed, file size and peak memory: PyTorch paths and llama.cpp GGUF type mixes.

    .venv/bin/python bench/inference.py [--model smollm2] [--prompt-len 64] [--new-tokens 32]
                                        [--block-size 32] [--threads 2] [--clock wall]
                                        [--repeats 1] [--rows ROW ...] [--json out.json]

One model, one prompt (the first ``--prompt-len`` tokens of the ASV), greedy decoding of exactly
``--new-tokens`` tokens (EOS ignored). The model is converted once (default options, SubLN gains
of 1: a speed benchmark, its text is garbage; an already converted ``--model``, e.g. a run
folder, is used as it is and the ``fp32`` row skipped) and saved; **every row then runs in its own
process**, so its peak RSS (``ru_maxrss``) is that row's alone, and the rows are interleaved
``--repeats`` times (best decode rate kept) so load on a shared machine hits all rows alike.

Rows (``--rows`` picks some by key):

- ``fp32``: the unconverted model; ``fakequant``: the converted BitLinear model (re-quantizes its
  fp32 weights on every call); ``int8``: ``pack_model(kernel="int8")``, int8 codes x int8
  activations with ``torch._int_mm``; ``2bit``: ``pack_model(kernel="2bit")``.
- ``int8-dlm``, ``fakequant-dlm``: block diffusion (Fast-dLLM v2 blocks, a fixed ``block/4``
  steps per block = 4 tokens per step) on those models: speed only (not DLM-trained).
- ``gguf:<weights>+<fallback>+<embed>``: the converted model exported to GGUF with that type mix
  and run by llama.cpp (llama-cpp-python); ``skipped: <reason>`` without it.

Columns: prompt tok/s (prompt length / time to the first token), decode tok/s (the tokens after
it), tok/fwd (new tokens per decoding forward pass), weights MB (all parameters and buffers, or the
GGUF file), linear MB (the ternary projections), peak RSS MB of the row's process (PyTorch rows
include torch itself, ~0.3 GB). ``--clock cpu`` counts this process's CPU seconds (steadier on a
shared machine with ``--threads 1``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

MB = 1e6
TORCH_ROWS = {
    "fp32": "PyTorch fp32",
    "fakequant": "PyTorch ternary fake-quant",
    "int8": "PyTorch packed int8 (torch._int_mm)",
    "2bit": "PyTorch packed 2-bit",
    "fakequant-dlm": "fake-quant block diff. B/4 steps",
    "int8-dlm": "packed int8 block diff. B/4 steps",
}
# (weight type, fallback for rows not whole 256-blocks, embedding type); the first is the export
# of the previous release (Q8_0 fallback, f16 embedding), the baseline of the size/speed goals
GGUF_MIXES = [
    ("tq2_0", "q8_0", "f16"),
    ("tq2_0", "q4_0", "f16"),
    ("tq2_0", "q4_0", "q8_0"),
    ("tq2_0", "q4_0", "q5_0"),
    ("tq2_0", "q2_0", "q8_0"),
    ("tq1_0", "q2_0", "q8_0"),
    ("q4_0", "q4_0", "q8_0"),
]
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def gguf_key(mix: tuple[str, str, str]) -> str:
    return "gguf:" + "+".join(mix)


def gguf_name(mix: tuple[str, str, str]) -> str:
    weights, fallback, embed = (t.upper() for t in mix)
    return f"llama.cpp {weights}/{fallback}, embed {embed}"


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM (kB), which starts afresh at exec, unlike
    ru_maxrss, which Linux carries over from the parent that forked the row."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


def timed(chunks: Iterable[list[int]]) -> tuple[float, float, int]:
    """(seconds to the first chunk, seconds in total, tokens in all chunks)."""
    start = clock()
    first_s, total_n = None, 0
    for chunk in chunks:
        total_n += len(chunk)
        if first_s is None:
            first_s = clock() - start
    return first_s, clock() - start, total_n


# ----------------------------------------------------------------------------- one row (child)


def torch_row(key: str, workdir: Path, ids: list[int], args) -> dict:
    import torch

    from wrinklefree.generate import DecodeStats, generate_ar, generate_block_diffusion
    from wrinklefree.models import load_model
    from wrinklefree.nn.packed import pack_model, weight_bytes

    torch.set_num_threads(args.threads)
    model = load_model(str(workdir / ("fp32" if key == "fp32" else "ternary"))).eval()
    if key.startswith(("int8", "2bit")):
        pack_model(model, kernel=key.split("-")[0])
    prompt = torch.tensor([ids])
    if key.endswith("-dlm"):
        options = {"mask_token_id": model.config.mask_token_id, "block_size": args.block_size,
                   "threshold": 1.1, "max_steps": max(1, args.block_size // 4),
                   "require_dlm": False}
        run = lambda n, stats: generate_block_diffusion(  # noqa: E731
            model, prompt, max_new_tokens=n, stats=stats, **options)
    else:
        run = lambda n, stats: generate_ar(model, prompt, max_new_tokens=n,  # noqa: E731
                                           stats=stats)
    timed(run(2, DecodeStats()))  # warm-up
    prompt_s, _, _ = timed(generate_ar(model, prompt, max_new_tokens=1))
    stats = DecodeStats()
    first_s, total_s, n = timed(run(args.new_tokens, stats))
    sizes = weight_bytes(model)
    dlm = key.endswith("-dlm")
    return {
        "prompt_tok_s": None if dlm else len(ids) / first_s,
        # diffusion emits whole blocks: its decode time is the total minus an AR prompt pass
        "decode_tok_s": n / (total_s - prompt_s) if dlm else (n - 1) / (total_s - first_s),
        "tokens_per_forward": n / max(1, stats.model_calls) if dlm else 1.0,
        "weights_MB": sizes["total"] / MB,
        "linear_MB": sizes["linear"] / MB or None,
    }


def gguf_row(key: str, workdir: Path, ids: list[int], args) -> dict:
    from llama_cpp import Llama

    path = workdir / (key.replace(":", "_").replace("+", "_") + ".gguf")
    llm = Llama(model_path=str(path), n_ctx=len(ids) + args.new_tokens + 8,
                n_threads=args.threads, n_threads_batch=args.threads, verbose=False)

    def decode(n: int) -> Iterable[list[int]]:
        llm.reset()  # n_tokens = 0: generate() must not reuse the cached prompt
        for i, token in enumerate(llm.generate(ids, temp=0.0, top_k=1, reset=True)):
            yield [token]
            if i + 1 == n:
                return

    timed(decode(2))  # warm-up
    first_s, total_s, n = timed(decode(args.new_tokens))
    sizes = json.loads(path.with_suffix(".json").read_text())
    linear = sum(b for t, (_, b) in sizes.items() if t.startswith("blk.") and "norm" not in t
                 and t.endswith(".weight"))
    types = sorted({q for t, (q, _) in sizes.items() if t.startswith("blk.") and "norm" not in t
                    and t.endswith(".weight")})
    llm.close()
    return {
        "prompt_tok_s": len(ids) / first_s,
        "decode_tok_s": (n - 1) / (total_s - first_s),
        "tokens_per_forward": 1.0,
        "weights_MB": path.stat().st_size / MB,
        "linear_MB": linear / MB,
        "note": "projections: " + ", ".join(types),
    }


def child(args) -> None:
    """Measure one row and print it as one JSON line (run by the parent in a fresh process)."""
    global clock
    clock = CLOCKS[args.clock]
    workdir = Path(args.workdir)
    ids = json.loads((workdir / "prompt.json").read_text())
    run = gguf_row if args.row.startswith("gguf:") else torch_row
    row = run(args.row, workdir, ids, args)
    row["peak_RSS_MB"] = peak_rss_mb()
    print(json.dumps(row))


# ----------------------------------------------------------------------------- parent


def prepare(args, workdir: Path, keys: list[str]) -> list[dict]:
    """Save the fp32 and the converted model and the prompt, export the GGUF mixes; returns
    'skipped' rows for what cannot run here."""
    import importlib.util

    from wrinklefree.assets import asv_text
    from wrinklefree.convert import convert_model_to_bitnet
    from wrinklefree.export.gguf import export_gguf
    from wrinklefree.models import load_model, load_tokenizer
    from wrinklefree.nn.surgery import bitnet_config_of
    from wrinklefree.objectives.dlm import add_mask_token

    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    ids = tokenizer(asv_text()[:20_000])["input_ids"][: args.prompt_len]
    (workdir / "prompt.json").write_text(json.dumps(ids))
    skipped = []
    if bitnet_config_of(model) is None:
        model.save_pretrained(workdir / "fp32")
        convert_model_to_bitnet(model, calibrate=False)
    elif "fp32" in keys:  # already converted (a `wf convert` or run folder): used as it is
        skipped.append({"key": "fp32", "name": TORCH_ROWS["fp32"],
                        "note": f"skipped: {args.model} is already converted (no unconverted "
                                "model to time)"})
    add_mask_token(tokenizer, model)
    model.save_pretrained(workdir / "ternary")
    tokenizer.save_pretrained(workdir / "ternary")
    has_llamacpp = importlib.util.find_spec("llama_cpp") is not None
    for mix in GGUF_MIXES:
        if gguf_key(mix) not in keys:
            continue
        if not has_llamacpp:
            skipped.append({"key": gguf_key(mix), "name": gguf_name(mix),
                            "note": "skipped: llama_cpp not installed "
                                    "(WF_WITH_LLAMACPP=1 ./scripts/install.sh)"})
            continue
        path = workdir / (gguf_key(mix).replace(":", "_").replace("+", "_") + ".gguf")
        sizes = export_gguf(model, path, workdir / "ternary", weight_type=mix[0],
                            fallback_type=mix[1], embed_type=mix[2])
        path.with_suffix(".json").write_text(json.dumps(sizes))
    return skipped


def run_child(key: str, args, workdir: Path) -> dict:
    cmd = [sys.executable, __file__, "--row", key, "--workdir", str(workdir),
           "--threads", str(args.threads), "--new-tokens", str(args.new_tokens),
           "--block-size", str(args.block_size), "--clock", args.clock]
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        return {"note": f"failed: {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    def fmt(value, spec):
        return f"{'-':>{spec.split('.')[0]}}" if value is None else format(value, spec)

    print(f"{'':<42}{'prompt tok/s':>13}{'decode tok/s':>13}{'tok/fwd':>8}{'weights MB':>11}"
          f"{'linear MB':>10}{'peak RSS MB':>12}  note")
    for r in rows:
        if "decode_tok_s" not in r:
            print(f"{r['name']:<42}{'':>67}  {r['note']}")
            continue
        print(f"{r['name']:<42}{fmt(r['prompt_tok_s'], '13.1f')}{fmt(r['decode_tok_s'], '13.2f')}"
              f"{fmt(r['tokens_per_forward'], '8.2f')}{fmt(r['weights_MB'], '11.1f')}"
              f"{fmt(r['linear_MB'], '10.1f')}{fmt(r['peak_RSS_MB'], '12.0f')}"
              f"  {r.get('note', '')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="any source load_model accepts")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="cpu: the row process's CPU seconds (use with --threads 1)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run all rows this many times, interleaved; keep each row's best")
    all_keys = [*TORCH_ROWS, *map(gguf_key, GGUF_MIXES)]
    parser.add_argument("--rows", nargs="+", default=all_keys, metavar="ROW",
                        help=f"rows to run (default all): {' '.join(all_keys)}")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: measure one row
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        child(args)
        return
    unknown = sorted(set(args.rows) - set(all_keys))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {all_keys}")
    names = {**TORCH_ROWS, **{gguf_key(m): gguf_name(m) for m in GGUF_MIXES}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        skipped = prepare(args, workdir, args.rows)
        keys = [k for k in args.rows if k not in {s["key"] for s in skipped}]
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for key in keys:
                row = run_child(key, args, workdir)
                if key not in best or row.get("decode_tok_s", 0) > best[key].get("decode_tok_s", 0):
                    best[key] = row
    rows = [{"key": k, "name": names[k], **best[k]} for k in keys] + skipped
    load = os.getloadavg()
    print(f"{args.model}: prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, "
          f"{args.threads} threads, {args.clock} clock, best of {args.repeats}, "
          f"load average {load[0]:.1f}")
    print_table(rows)
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("row", "workdir")},
              "machine": {"platform": platform.platform(), "loadavg": load}, "rows": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
