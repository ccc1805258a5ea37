"""Weight bytes and logit parity of every export format for one converted model.

    .venv/bin/python bench/export_formats.py MODEL_OR_RUN [--tokens 256] [--out DIR]

For each format (GGUF type mixes: weights / fallback for rows not whole 256-blocks / embedding,
and packed HF) prints the file size, the bytes per storage type and, when llama-cpp-python is
installed, cosine / top-1 / max |diff| of its logits against the PyTorch model on held-out ASV
tokens. The same PyTorch model
in fp64 is the reference row: an untrained converted model is chaotic, and no export can agree
with it better than it agrees with itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
from collections import Counter
from pathlib import Path

import torch

from wrinklefree.assets import asv_text
from wrinklefree.export import resolve_model_dir
from wrinklefree.export.gguf import export_gguf
from wrinklefree.export.hf import export_hf
from wrinklefree.export.parity import compare_logits, llamacpp_logits, torch_logits
from wrinklefree.models import load_model, load_tokenizer

GGUF_VARIANTS = {  # name -> (weight type, fallback type, embedding type)
    "gguf tq2_0/q8_0 f16": ("tq2_0", "q8_0", "f16"),  # the previous release's export
    "gguf tq2_0/q4_0 q8_0": ("tq2_0", "q4_0", "q8_0"),
    "gguf tq2_0/q2_0 q8_0": ("tq2_0", "q2_0", "q8_0"),
    "gguf tq1_0/q2_0 q8_0": ("tq1_0", "q2_0", "q8_0"),
    "gguf tq2_0/q4_0 q6_k": ("tq2_0", "q4_0", "q6_k"),
    "gguf f16": ("f16", "q4_0", "f16"),
}


def _parity(stats: dict | None) -> str:
    if stats is None:
        return ""
    return f" | cos {stats['cosine']:.8f} top1 {stats['top1']:.1%} max {stats['max_abs_diff']:.3g}"


def _row(name: str, size: int, sizes: dict, stats: dict | None) -> None:
    kinds: Counter[str] = Counter()
    for kind, nbytes in sizes.values():
        kinds[kind] += nbytes
    parts = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in kinds.most_common())
    print(f"{name:<26} {size / 1e6:8.1f} MB ({parts}){_parity(stats)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="model folder from `wf convert`, or a run folder")
    parser.add_argument("--tokens", type=int, default=256, help="held-out tokens for parity")
    parser.add_argument("--out", help="keep the exports here (default: a temporary folder)")
    args = parser.parse_args()
    torch._dynamo.config.disable = True  # transformers' BitLinear compiles on first call
    folder = resolve_model_dir(args.src)
    model, tokenizer = load_model(str(folder)), load_tokenizer(str(folder))
    tokens = tokenizer.encode(asv_text()[-20000:])[: args.tokens]
    ref = torch_logits(model, tokens)
    fp64 = compare_logits(ref, torch_logits(load_model(str(folder), dtype=torch.float64), tokens))
    print(f"{'reference: fp32 vs fp64':<26} {'':>11}{_parity(fp64)}")
    has_llamacpp = importlib.util.find_spec("llama_cpp") is not None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        for name, (weight_type, fallback, embed_type) in GGUF_VARIANTS.items():
            path = out / f"{name.replace(' ', '_').replace('/', '_')}.gguf"
            sizes = export_gguf(model, path, folder, weight_type=weight_type,
                                fallback_type=fallback, embed_type=embed_type)
            stats = compare_logits(ref, llamacpp_logits(path, tokens)) if has_llamacpp else None
            _row(name, os.path.getsize(path), sizes, stats)
        from transformers import AutoModelForCausalLM

        sizes = export_hf(model, out / "hf", folder)
        loaded = AutoModelForCausalLM.from_pretrained(out / "hf").eval()
        _row("hf packed", os.path.getsize(out / "hf" / "model.safetensors"), sizes,
             compare_logits(ref, torch_logits(loaded, tokens)))


if __name__ == "__main__":
    main()
