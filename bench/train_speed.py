"""Training-step cost of BitLinear versus full precision, measured in one process.

    .venv/bin/python bench/train_speed.py [--model tiny|smollm2] [--batch 4] [--seq-len 256]
                                          [--repeats 3] [--threads N] [--clock wall|cpu]
                                          [--compile] [--bf16] [--json out.json]

Rows: one layer (nn.Linear vs BitLinear at lambda 1) at several shapes, forward + backward; and a
whole model's optimizer step (forward + backward + AdamW as ``wf train`` builds it: fused on CPU)
for fp32, ternary, and ternary + SubLN (``--compile`` adds both compiled with torch.compile).
Timings interleave the variants and keep the best of ``--repeats`` (timeit's rule: noise only ever
adds time) so machine noise hits them alike; the ratio to full precision is the number that
matters. ``--clock cpu`` times process CPU
seconds instead of wall seconds: steadier on a shared machine (use it with ``--threads 1``).
``peak_rss_mb`` is the process's peak resident memory after each model row (monotone within a
run: compare increments).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time

import torch
import torch.nn as nn

from wrinklefree.convert import convert_model_to_bitnet
from wrinklefree.nn import BitLinear
from wrinklefree.train.optim import build_optimizer

LAYER_SHAPES = [(576, 576), (576, 1536), (1536, 576), (2048, 2048)]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def layer_rows(tokens: int, repeats: int) -> list[dict]:
    rows = []
    for d_in, d_out in LAYER_SHAPES:
        torch.manual_seed(0)
        linear = nn.Linear(d_in, d_out, bias=False)
        bit = BitLinear.from_linear(copy.deepcopy(linear))
        x = torch.randn(tokens, d_in, requires_grad=True)

        def step(layer, x=x):
            return lambda: layer(x).sum().backward()

        fp = _best_seconds(step(linear), repeats)
        bl = _best_seconds(step(bit), repeats)
        rows.append({"row": f"layer {d_in}x{d_out}", "fp32_s": fp, "bitnet_s": bl,
                     "ratio": bl / fp})
    return rows


def _load(model_name: str):
    if model_name == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=768,
                             num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
        return LlamaForCausalLM(config)
    from wrinklefree.models import load_model

    return load_model("smollm2")


def model_rows(model_name: str, batch: int, seq_len: int, repeats: int,
               compile_models: bool = False, bf16: bool = False) -> list[dict]:
    source = _load(model_name).train()
    variants = {  # speed does not depend on the SubLN gains: no calibration (calibrate=False)
        "fp32": source,
        "ternary": convert_model_to_bitnet(copy.deepcopy(source), insert_subln=False),
        "ternary + SubLN": convert_model_to_bitnet(copy.deepcopy(source), calibrate=False),
    }
    if compile_models:
        variants["fp32 compiled"] = copy.deepcopy(source)
        variants["ternary + SubLN compiled"] = convert_model_to_bitnet(copy.deepcopy(source),
                                                                       calibrate=False)
        for name in ("fp32 compiled", "ternary + SubLN compiled"):
            variants[name].compile()
    if bf16:  # fp32 master weights, bf16 compute: what Lightning's "bf16-mixed" does
        variants["fp32 bf16-autocast"] = copy.deepcopy(source)
        variants["ternary + SubLN bf16-autocast"] = convert_model_to_bitnet(
            copy.deepcopy(source), calibrate=False)
    ids = torch.randint(0, source.config.vocab_size, (batch, seq_len))
    steps = {}
    for name, model in variants.items():
        optimizer = build_optimizer(model, "adamw", 1e-5, 0.0, (0.9, 0.95))
        autocast = name.endswith("bf16-autocast")

        def step(model=model, optimizer=optimizer, bf16=autocast):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        steps[name] = step
    times: dict[str, list[float]] = {name: [] for name in variants}
    for step in steps.values():
        step()  # warm-up (allocates optimizer state, compiles)
    for _ in range(repeats):  # interleaved
        for name, step in steps.items():
            start = clock()
            step()
            times[name].append(clock() - start)
    fp = min(times["fp32"])
    rows = []
    for name in variants:
        seconds = min(times[name])
        rows.append({"row": f"{model_name} step: {name}", "seconds": seconds, "ratio": seconds / fp,
                     "tokens_per_s": batch * seq_len / seconds,
                     "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall seconds, or process CPU seconds (steadier under load)")
    parser.add_argument("--compile", action="store_true",
                        help="add torch.compile'd fp32 and ternary + SubLN rows (slow to build)")
    parser.add_argument("--bf16", action="store_true",
                        help="add fp32 and ternary + SubLN rows under bf16 autocast (fast on CPUs "
                             "with AVX512-BF16 / AMX)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = layer_rows(args.batch * args.seq_len, args.repeats)
    rows += model_rows(args.model, args.batch, args.seq_len, args.repeats, args.compile,
                       args.bf16)
    print(f"threads: {torch.get_num_threads()}, clock: {args.clock}, "
          f"tokens per step: {args.batch * args.seq_len}")
    print(f"| {'row':32s} | {'seconds':>8s} | {'ratio to fp32':>13s} |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 15}|")
    for r in rows:
        seconds = r.get("seconds", r.get("bitnet_s"))
        print(f"| {r['row']:32s} | {seconds:8.3f} | {r['ratio']:13.3f} |")
    print(json.dumps(rows, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
