"""Held-out perplexity of SmolLM2-135M after conversion (SubLN, variants), with no training.

    .venv/bin/python bench/variants_ppl.py [--windows 8] [--seq-len 256] [--only NAME ...]
                                           [--json out.json]

Every row is converted from the same fp32 model. The SubLN rows show what inserting the norm does
by itself (lambda = 0: no quantization) with unit gains and with gains calibrated on 4 batches of
ASV training text. The variant rows use ``insert_subln=False`` (so the norm does not hide the
variant) and quantization fully on (lambda = 1, ternary weights, int8 activations).
Prints a table and the same numbers as JSON.
``weight_err`` is the mean over converted layers of ||W - W_hat||_F / ||W||_F, W_hat the
effective weight (Q(W), plus U·Vᵀ for LRC), in each layer's own (possibly rotated) basis.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from wrinklefree.convert import convert_model_to_bitnet
from wrinklefree.data.heldout import calibration_batches, heldout_windows
from wrinklefree.eval.perplexity import perplexity
from wrinklefree.models import load_model, load_tokenizer
from wrinklefree.nn import BitLinear, BitLinearLRC

VARIANTS: dict[str, dict | None] = {
    "full precision": None,
    "subln (gain 1), no quant": {"insert_subln": True, "quant_lambda": 0.0},
    "subln (calibrated), no quant": {"insert_subln": True, "quant_lambda": 0.0, "calibrate": True},
    "ternary + subln (calibrated)": {"insert_subln": True, "calibrate": True},
    "ternary": {},
    "ternary + haar": {"weight_quant": "haar"},
    "ternary + hadamard": {"hadamard": True},
    "ternary + lrc 10% (svd)": {"lrc_rank": 0.1},
    "ternary + lrc 30% (svd)": {"lrc_rank": 0.3},
    "ternary + hadamard + lrc 10%": {"hadamard": True, "lrc_rank": 0.1},
}


@torch.no_grad()
def weight_error(model: torch.nn.Module) -> float:
    """Mean relative Frobenius error of the effective weight over the BitLinear layers."""
    errors = []
    for m in model.modules():
        if isinstance(m, BitLinear):
            w_hat = m.quantized_weight()
            if isinstance(m, BitLinearLRC):
                w_hat = w_hat + m.lrc_U @ m.lrc_V.T
            err = torch.linalg.norm(m.weight - w_hat) / torch.linalg.norm(m.weight)
            errors.append(err.item())
    return sum(errors) / len(errors)


def lrc_cost(model: torch.nn.Module) -> dict:
    """LRC parameter count and memory next to the model and to its packed ternary weights."""
    lrc = sum(m.lrc_U.numel() + m.lrc_V.numel() for m in model.modules()
              if isinstance(m, BitLinearLRC))
    ternary = sum(m.weight.numel() for m in model.modules() if isinstance(m, BitLinear))
    total = sum(p.numel() for p in model.parameters())
    return {
        "lrc_params": lrc,
        "lrc_fraction_of_model": lrc / (total - lrc),
        "lrc_MB_bf16": lrc * 2 / 1e6,
        "ternary_weights_MB_2bit": ternary * 2 / 8 / 1e6,  # TQ2_0-like packing, 2 bits per weight
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), metavar="NAME",
                        help=f"rows to run (default all): {list(VARIANTS)}")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    tokenizer = load_tokenizer("smollm2")
    source = load_model("smollm2")
    windows = heldout_windows(tokenizer, args.seq_len, args.windows)
    calibration = calibration_batches(tokenizer, num_batches=4)
    results = []
    for name in args.only or list(VARIANTS):
        options = None if VARIANTS[name] is None else dict(VARIANTS[name])
        start = time.perf_counter()
        model = copy.deepcopy(source)
        row: dict = {"variant": name}
        if options is not None:
            batches = calibration if options.pop("calibrate", False) else None
            options = {"insert_subln": False, **options}
            model = convert_model_to_bitnet(model, calibration_batches=batches, **options)
            row["weight_err"] = weight_error(model)
        row["convert_s"] = time.perf_counter() - start
        row["ppl"] = perplexity(model, windows)
        if options and options.get("lrc_rank") is not None:
            row.update(lrc_cost(model))
        row["seconds"] = time.perf_counter() - start
        results.append(row)
        print(f"{name:30s} ppl {row['ppl']:14.2f}  ({row['seconds']:.0f} s)", flush=True)
        del model

    print(f"\nSmolLM2-135M, {args.windows} held-out ASV windows of {args.seq_len} tokens, "
          "no training")
    print(f"| {'variant':30s} | {'perplexity':>12s} | {'weight err':>10s} | {'LRC params':>18s} |")
    print(f"|{'-' * 32}|{'-' * 14}|{'-' * 12}|{'-' * 20}|")
    for r in results:
        err = f"{r['weight_err']:.3f}" if "weight_err" in r else "-"
        extra = (f"{r['lrc_params'] / 1e6:.2f} M ({100 * r['lrc_fraction_of_model']:.1f}%)"
                 if "lrc_params" in r else "-")
        print(f"| {r['variant']:30s} | {r['ppl']:12.2f} | {err:>10s} | {extra:>18s} |")
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
