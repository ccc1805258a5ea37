"""The size / quality frontier in llama.cpp: what its own quantizer makes of the teacher, against
our exported students, all scored the same way.

    wf bench frontier [STUDENT.gguf | FOLDER ...] [--lora ADAPTER] [--types q8_0 q4_0 ...]
                      [--curve RUN ...] [--target 1.3]
                      [--windows 64] [--seq-len 128] [--loop-prompts 16] [--loop-tokens 24]
                      [--decode-tokens 64] [--threads 2] [--teacher GGUF] [--out runs/frontier]

Rows: the teacher as shipped (the embedded SmolLM2-135M-Instruct, Q4_1), the teacher through
llama.cpp's quantizer (``llama_model_quantize``, seconds per file, no training: Q8_0, Q5_0, Q4_0,
Q4_K_M, Q3_K_S, Q2_K, and Q4_0 / Q2_K with Q4_0 or Q5_0 token embeddings), and every student given
on the command line: a ``.gguf`` written by ``wf export`` (its LoRA adapter ``x.lora.gguf``
beside it is applied, or ``--lora`` for a single student), or a folder of them.

Every row is run by llama.cpp (llama-cpp-python, ``--threads`` 2) on the same held-out **test**
windows per domain (``asv``, ``english``; ``wrinklefree.data.heldout``, tokenised by the teacher
file's own vocabulary) and gets: file MB (adapter included), bits per decoder-linear weight (the
bytes of the q/k/v/o/gate/up/down tensors, their scales and adapter factors, per base weight),
decode tok/s at 1 and 2 threads, perplexity and its ratio to the shipped teacher per domain, and
rep-4 of plain greedy continuations of held-out prompts (``wrinklefree.eval.report``'s prompts
and measure). Writes ``frontier.json`` and ``frontier.png`` (size against quality per domain with
the Pareto frontier drawn, and size against decode speed) to ``--out`` and prints the table.

``--curve RUN ...``: quality against training tokens. Every snapshot of each training run
(``training.snapshot_every``: ``snapshots/step-N``) and its ``final/`` is exported at the types the
run ships (``out/curve/RUN-step-N.gguf``, once) and scored as a student row with the tokens it
had trained on (a snapshot taken before the run's ``training.gguf_round_at`` step is rounded to
those types at export, not trained around them: its label says so). A power law through the
points per domain (ratio - 1 = c * tokens^-alpha) gives the tokens the recipe would need for
``--target`` (1.3: llama.cpp's Q4_0 of the teacher) in ``frontier.json`` (``curve``), the
printout and ``curve.png``. Points of one run lie on one learning-rate schedule: read them as
"this run after N tokens", and the projection as a rough size for a longer run, not a promise.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from wrinklefree.errors import UserInputError
from wrinklefree.llamacpp import INSTALL_HINT

# label -> (llama_ftype of llama.h, token-embedding ggml type or None = the quantizer's choice)
TEACHER_TYPES = {
    "q8_0": (7, None), "q5_0": (8, None), "q4_0": (2, None), "q4_k_m": (15, None),
    "q3_k_s": (11, None), "q2_k": (10, None),
    "q4_0, q5_0 embd": (2, 6), "q4_0, q4_0 embd": (2, 2), "q2_k, q4_0 embd": (10, 2),
}
DOMAINS = ("asv", "english")
THREADS = (1, 2)
LINEAR = re.compile(r"blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.")


# ----------------------------------------------------------------------------- GGUF reading


def _ggml_block_sizes() -> dict[int, tuple[int, int]]:
    """ggml type value -> (weights per block, bytes per block): gguf-py's table plus llama.cpp's
    Q2_0 (type 42), which gguf-py 0.19 does not know."""
    import gguf

    from wrinklefree.export.blocks import GGML_TYPES

    sizes = {int(t): s for t, s in gguf.GGML_QUANT_SIZES.items()}
    q2 = GGML_TYPES["Q2_0"]
    return sizes | {q2.type_id: (q2.block, q2.block_bytes)}


def read_gguf(path: str | Path) -> tuple[dict[str, object], dict[str, tuple[int, int]]]:
    """(scalar / string metadata, ``{tensor: (elements, bytes)}``) of a GGUF file, from its header
    (GGUF v3: magic, version, counts, key-values, tensor infos). gguf-py's reader refuses files
    with types it does not know (Q2_0), so the header is read here."""
    sizes = _ggml_block_sizes()
    with open(path, "rb") as f:
        data = f.read(64 << 20)  # the header (a 49k-token vocabulary is ~2 MB)
    if data[:4] != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    pos = 8
    n_tensors, n_kv = struct.unpack_from("<QQ", data, pos)
    pos += 16
    meta: dict[str, object] = {}
    for _ in range(n_kv):
        key, pos = _string(data, pos)
        (kind,) = struct.unpack_from("<I", data, pos)
        value, pos = _value(data, pos + 4, kind)
        meta[key] = value
    tensors = {}
    for _ in range(n_tensors):
        name, pos = _string(data, pos)
        (n_dims,) = struct.unpack_from("<I", data, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", data, pos + 4)
        kind, _offset = struct.unpack_from("<IQ", data, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        elements = math.prod(dims)
        block, nbytes = sizes[kind]
        tensors[name] = (elements, elements // block * nbytes)
    return meta, tensors


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}  # GGUF value types (gguf-py GGUFValueType) -> struct codes


def _string(data: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", data, pos)
    return data[pos + 8 : pos + 8 + n].decode("utf-8", errors="replace"), pos + 8 + n


def _value(data: bytes, pos: int, kind: int) -> tuple[object, int]:
    """One metadata value at ``pos`` and the position after it (arrays are skipped: None)."""
    if kind == 8:
        return _string(data, pos)
    if kind == 9:
        item, n = struct.unpack_from("<IQ", data, pos)
        pos += 12
        if item in _SCALARS:
            return None, pos + n * struct.calcsize("<" + _SCALARS[item])
        for _ in range(n):
            _, pos = _value(data, pos, item)
        return None, pos
    code = "<" + _SCALARS[kind]
    return struct.unpack_from(code, data, pos)[0], pos + struct.calcsize(code)


def linear_bits(model: Path, adapter: Path | None) -> float:
    """Bits per decoder-linear weight as stored in the files: the bytes of every q/k/v/o/gate/
    up/down tensor of the model (weights and per-tensor scales) and of the adapter (LoRA
    factors), times 8, per weight of the model's linear ``.weight`` tensors."""
    _, tensors = read_gguf(model)
    weights = sum(n for name, (n, _) in tensors.items()
                  if LINEAR.match(name) and name.endswith(".weight"))
    nbytes = sum(b for name, (_, b) in tensors.items() if LINEAR.match(name))
    if adapter is not None:
        nbytes += sum(b for name, (_, b) in read_gguf(adapter)[1].items() if LINEAR.match(name))
    return 8 * nbytes / weights


# ----------------------------------------------------------------------------- the models


def quantize(src: Path, dst: Path, ftype: int, embed_type: int | None) -> Path:
    """``src`` through llama.cpp's own quantizer (requantizing: the teacher ships as Q4_1)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    if embed_type is not None:
        params.token_embedding_type = embed_type
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(),
                                      ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize failed for {dst.name} (ftype {ftype})")
    return dst


def curve_points(runs: list[str], out: Path) -> list[tuple[str, Path, Path | None, int]]:
    """(label, model, adapter, tokens trained on) for every snapshot and the ``final/`` of each
    training run, exported to ``out`` (at the types the run ships) unless already there."""
    from omegaconf import OmegaConf

    from wrinklefree.export import export_model
    from wrinklefree.llamacpp import find_adapter

    points = []
    for run in map(Path, runs):
        if not (run / "config.yaml").is_file() or not (run / "report.json").is_file():
            raise UserInputError(f"--curve {run}: not a finished training run (config.yaml and "
                                 "report.json); train it with training.snapshot_every=N first")
        cfg = OmegaConf.load(run / "config.yaml")
        report = json.loads((run / "report.json").read_text())
        tokens_per_step = (cfg.training.batch_size * cfg.training.grad_accum * cfg.data.seq_len
                           * report.get("world_size", 1))
        folders = {int(p.name.removeprefix("step-")): p
                   for p in (run / "snapshots").glob("step-*") if (p / "config.json").is_file()}
        folders[report["total_steps"]] = run / "final"
        round_at = cfg.training.get("gguf_round_at")  # a snapshot before it is rounded at export
        round_step = math.ceil(round_at * report["total_steps"]) if round_at is not None else 0
        for step, folder in sorted(folders.items()):
            model = out / f"{run.name}-step-{step}.gguf"
            if not model.is_file():
                print(f"exporting {folder} -> {model}", flush=True)
                export_model(folder, model)
            late = " (rounded at export)" if step < round_step else ""
            points.append((f"{run.name} step {step}{late}", model, find_adapter(model, None),
                           step * tokens_per_step))
    return points


def fit_power_law(tokens: list[float], ratios: list[float], target: float) -> dict:
    """Least squares of log(ratio - 1) on log(tokens) -- the power law in data of Kaplan et al.
    2020 (arXiv 2001.08361, eq. 1.2): ratio - 1 = c * D^-alpha -- and the D where it reaches
    ``target`` (None unless the ratio falls with tokens). Points at or under 1 are left out."""
    kept = [(math.log(t), math.log(r - 1)) for t, r in zip(tokens, ratios, strict=True) if r > 1]
    if len(kept) < 2:
        return {"alpha": None, "c": None, "points": len(kept), "tokens_at_target": None}
    mean_x = sum(x for x, _ in kept) / len(kept)
    mean_y = sum(y for _, y in kept) / len(kept)
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in kept)
             / sum((x - mean_x) ** 2 for x, _ in kept))
    log_c = mean_y - slope * mean_x  # log(ratio - 1) = log c - alpha * log D
    at_target = math.exp((math.log(target - 1) - log_c) / slope) if slope < 0 else None
    return {"alpha": -slope, "c": math.exp(log_c), "points": len(kept),
            "tokens_at_target": at_target}


def student_files(paths: list[str], lora: str | None) -> list[tuple[str, Path, Path | None]]:
    """(label, model, adapter) per student: each ``.gguf`` given, or every model ``.gguf`` of a
    folder given; the adapter is ``--lora`` (one student only) or the one beside the model."""
    from wrinklefree.llamacpp import find_adapter

    models: list[Path] = []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.glob("*.gguf") if not p.name.endswith(".lora.gguf"))
            if not found:
                raise UserInputError(f"{path} holds no .gguf model: export the student first "
                                     f"(wf export {path} {path}/model.gguf)")
            models.extend(found)
        elif path.suffix == ".gguf" and path.is_file():
            models.append(path)
        else:
            raise UserInputError(f"{arg}: not a .gguf file or a folder of them; export the "
                                 "student with `wf export RUN OUT.gguf`")
    if lora is not None and len(models) != 1:
        raise UserInputError(f"--lora {lora} names one adapter for {len(models)} students; give "
                             "one student, or put each adapter beside its model (x.lora.gguf)")
    return [(f"{p.parent.name}/{p.stem}", p, find_adapter(p, lora)) for p in models]


class VocabTokenizer:
    """The teacher file's own vocabulary (llama.cpp, no weights) with the two things
    ``heldout.token_windows`` asks of a tokenizer: ``tok(text, add_special_tokens=False)`` and
    ``eos_token_id``."""

    def __init__(self, gguf: Path):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
        self.eos_token_id = self.llm.token_eos()

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.llm.tokenize(text.encode(), add_bos=add_special_tokens)}


def report_windows(teacher: Path, seq_len: int, num_windows: int) -> dict[str, np.ndarray]:
    """``{domain: (N, seq_len)}`` held-out test windows in the teacher's vocabulary; fewer than
    ``num_windows`` is refused (rows would not be comparable with the reports)."""
    from wrinklefree.data.heldout import domain_windows
    from wrinklefree.eval.perplexity import require_windows

    windows = domain_windows(VocabTokenizer(teacher), seq_len, num_windows, DOMAINS)
    return {d: require_windows(w, num_windows, seq_len).numpy() for d, w in windows.items()}


# ----------------------------------------------------------------------------- scoring


def window_nll(scores: np.ndarray, ids: np.ndarray) -> float:
    """Summed next-token NLL (nats) of ``ids`` (L,) under logits ``scores`` (L, V): position i
    predicts token i + 1 (the same sum as ``eval.perplexity.mean_nll``)."""
    logits = scores[:-1]  # (L-1, V) float32: max-shifted, exact enough, half the time of f64
    top = logits.max(axis=1)
    lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    return float((lse - logits[np.arange(len(ids) - 1), ids[1:]]).astype(np.float64).sum())


def _greedy(llm, prompt: list[int], new_tokens: int) -> list[int]:
    """Plain greedy continuation (no penalty, no early stop, like the report's loop measure)."""
    llm.reset()
    llm.eval(prompt)
    return _continue(llm, new_tokens)


def _continue(llm, new_tokens: int) -> list[int]:
    """``new_tokens`` greedy tokens from the context llama.cpp holds, each evaluated in turn."""
    out: list[int] = []
    for _ in range(new_tokens):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out


def decode_rate(llm, prompt: list[int], new_tokens: int, repeats: int = 3) -> float:
    """Tokens per second of greedy decoding after ``prompt`` (the prompt itself not timed),
    the best of ``repeats`` runs: one 64-token run moved by a third between two benches."""
    _greedy(llm, prompt, 1)  # warm-up: first-call allocations
    best = 0.0
    for _ in range(repeats):
        llm.reset()
        llm.eval(prompt)
        start = time.perf_counter()
        _continue(llm, new_tokens)
        best = max(best, new_tokens / (time.perf_counter() - start))
    return best


def score(model: Path, adapter: Path | None, windows: dict[str, np.ndarray],
          args: argparse.Namespace) -> dict:
    """Perplexity, greedy loops and decode speed of one GGUF (+ adapter) in llama.cpp, and the
    seconds each part took."""
    import llama_cpp

    seq_len = next(iter(windows.values())).shape[1]
    n_ctx = max(seq_len, 12 + args.loop_tokens, 8 + args.decode_tokens + 1)
    kwargs = {"lora_path": str(adapter), "lora_scale": 1.0} if adapter else {}
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                          logits_all=True, n_threads=args.threads, n_threads_batch=args.threads,
                          verbose=False, **kwargs)
    row: dict = {"perplexity": {}, "rep4": {}, "decode_tok_s": {}, "seconds": {}}
    try:
        for domain, w in windows.items():
            with _timed(row["seconds"], "perplexity"):
                row["perplexity"][domain] = perplexity(llm, w)
            with _timed(row["seconds"], "loops"):
                row["rep4"][domain] = greedy_rep4(llm, w, args.loop_prompts, args.loop_tokens)
        prompt = windows[DOMAINS[0]][0, :8].tolist()
        with _timed(row["seconds"], "speed"):
            for threads in THREADS:
                llama_cpp.llama_set_n_threads(llm.ctx, threads, threads)
                row["decode_tok_s"][str(threads)] = decode_rate(llm, prompt, args.decode_tokens,
                                                                args.speed_repeats)
        return row
    finally:
        llm.close()


def perplexity(llm, windows: np.ndarray) -> float:
    """exp(mean next-token NLL) over (N, L) windows, each evaluated from an empty context."""
    total = 0.0
    for ids in windows:
        llm.reset()
        llm.eval(ids.tolist())
        total += window_nll(llm.scores[: len(ids)], ids)
    return math.exp(total / (windows.shape[0] * (windows.shape[1] - 1)))


def greedy_rep4(llm, windows: np.ndarray, prompts: int, new_tokens: int) -> float:
    """Mean rep-4 of plain greedy continuations of the report's held-out prompts."""
    import torch

    from wrinklefree.eval.degeneration import degeneration
    from wrinklefree.eval.report import held_out_prompts

    starts = held_out_prompts(torch.from_numpy(windows), count=prompts)
    return degeneration([_greedy(llm, p.tolist(), new_tokens) for p in starts])["rep4"]


@contextlib.contextmanager
def _timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Add the block's wall seconds to ``seconds[key]``."""
    begin = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - begin


# ----------------------------------------------------------------------------- the frontier


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (smaller is better on
    each: size, perplexity ratio), ordered by the first coordinate."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:  # lighter points all had a higher (worse) second coordinate
            front.append(i)
            best = points[i][1]
    return front


def plot(rows: list[dict], png: Path) -> Path:
    """Size against the ratio to the teacher per domain (frontier drawn) and against decode
    speed (2 threads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # points are numbered (labels of nearby files would overlap); the key is under the plots
    fig, axes = plt.subplots(1, 3, figsize=(18, 6.5))
    for ax, domain in zip(axes[:2], DOMAINS, strict=True):
        for kind, marker in (("teacher", "o"), ("student", "*")):
            mine = [r for r in rows if (r["kind"] == "student") == (kind == "student")]
            ax.scatter([r["file_mb"] for r in mine], [r["ratio"][domain] for r in mine],
                       marker=marker, s=90 if kind == "student" else 40,
                       label="students" if kind == "student" else "teacher, llama.cpp quantizer")
        front = [rows[i] for i in pareto_front([(r["file_mb"], r["ratio"][domain])
                                                for r in rows])]
        ax.step([r["file_mb"] for r in front], [r["ratio"][domain] for r in front], where="post",
                color="gray", linestyle="--", label="Pareto frontier")
        for number, r in enumerate(rows, 1):
            ax.annotate(str(number), (r["file_mb"], r["ratio"][domain]), fontsize=8,
                        xytext=(3, 3), textcoords="offset points")
        ax.set(title=f"{domain}: perplexity / teacher (lower is better)", xlabel="file MB",
               ylabel="ratio to the teacher", yscale="log")
        ax.legend(fontsize=7)
    speed = axes[2]
    for number, r in enumerate(rows, 1):
        speed.scatter(r["file_mb"], r["decode_tok_s"]["2"],
                      marker="*" if r["kind"] == "student" else "o",
                      color="tab:orange" if r["kind"] == "student" else "tab:blue")
        speed.annotate(str(number), (r["file_mb"], r["decode_tok_s"]["2"]), fontsize=8,
                       xytext=(3, 3), textcoords="offset points")
    speed.set(title="decode speed, 2 threads (higher is better)", xlabel="file MB",
              ylabel="tokens / s")
    key = [f"{number} {r['label']}" for number, r in enumerate(rows, 1)]
    columns = 3
    per_column = -(-len(key) // columns)
    for c in range(columns):
        fig.text(0.02 + c * 0.33, 0.01 + 0.022 * per_column,
                 "\n".join(key[c * per_column:(c + 1) * per_column]), fontsize=8, va="top",
                 family="monospace")
    fig.tight_layout(rect=(0, 0.02 + 0.022 * per_column, 1, 1))
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def table(rows: list[dict]) -> str:
    """The markdown table docs/benchmarks.md shows (* = on the frontier of that domain)."""
    head = ["model", "file MB", "bits/linear weight", "tok/s 1 thr", "tok/s 2 thr",
            *[f"{d} ppl" for d in DOMAINS], *[f"{d} / teacher" for d in DOMAINS],
            *[f"{d} rep-4" for d in DOMAINS]]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    for r in rows:
        star = {d: "*" if r["pareto"][d] else "" for d in DOMAINS}
        cells = [r["label"], f"{r['file_mb']:.1f}", f"{r['bits_per_linear_weight']:.2f}",
                 *[f"{r['decode_tok_s'][str(t)]:.0f}" for t in THREADS],
                 *[f"{r['perplexity'][d]:.2f}" for d in DOMAINS],
                 *[f"{r['ratio'][d]:.2f}{star[d]}" for d in DOMAINS],
                 *[f"{r['rep4'][d]:.2f}" for d in DOMAINS]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("students", nargs="*", metavar="STUDENT",
                        help="exported students: .gguf files or folders of them")
    parser.add_argument("--lora", help="the LoRA adapter of the one student (default: the "
                        "x.lora.gguf beside it; none = the base alone)")
    parser.add_argument("--teacher", help="teacher GGUF (default: the embedded SmolLM2 Q4_1)")
    parser.add_argument("--types", nargs="*", default=list(TEACHER_TYPES), metavar="TYPE",
                        help="llama.cpp quantizations of the teacher, each one argument: "
                        + " ".join(f"'{t}'" for t in TEACHER_TYPES) + " (none: --types alone)")
    parser.add_argument("--windows", type=int, default=64, help="test windows per domain")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per window")
    parser.add_argument("--loop-prompts", type=int, default=16, help="greedy prompts per domain")
    parser.add_argument("--loop-tokens", type=int, default=24, help="greedy tokens per prompt")
    parser.add_argument("--decode-tokens", type=int, default=64, help="tokens timed per speed")
    parser.add_argument("--speed-repeats", type=int, default=3,
                        help="decode timings per thread count; the best is kept")
    parser.add_argument("--threads", type=int, default=2,
                        help="llama.cpp threads for perplexity and loops (speed: 1 and 2 always); "
                        "1 on a busy machine, where 2 threads wait on each other")
    parser.add_argument("--curve", nargs="+", metavar="RUN", default=[],
                        help="training runs whose snapshots and final/ become rows with the "
                        "tokens they trained on, and a power-law projection")
    parser.add_argument("--target", type=float, default=1.3,
                        help="the ratio to the teacher the curve projects the tokens of "
                        "(1.3: the teacher's Q4_0 in llama.cpp)")
    parser.add_argument("--out", default="runs/frontier", help="output folder")
    args = parser.parse_args(argv)
    if args.speed_repeats < 1:
        raise UserInputError(f"--speed-repeats {args.speed_repeats}: at least 1 decode timing "
                             "per thread count (3, the default, keeps the best of three)")
    if args.target <= 1:
        raise UserInputError(f"--target {args.target}: a ratio to the teacher above 1 (1.3 = "
                             "its Q4_0); the power law reaches 1 only at infinite tokens")
    unknown = sorted(set(args.types) - set(TEACHER_TYPES))
    if unknown:
        raise UserInputError(f"--types {' '.join(repr(t) for t in unknown)}: choose from "
                             + " ".join(f"'{t}'" for t in TEACHER_TYPES))
    return args


def build_models(args: argparse.Namespace, teacher: Path, out: Path) -> list[tuple]:
    """(label, kind, model, adapter, tokens trained on or None) of every row: the teacher, its
    llama.cpp quantizations (written to ``out``), the students, the curve's points."""
    models = [("teacher as shipped", "teacher", teacher, None, None)]
    for name in args.types:
        path = out / f"teacher-{re.sub(r'[^a-z0-9]+', '-', name)}.gguf"
        models.append((f"teacher -> {name}", "teacher",
                       quantize(teacher, path, *TEACHER_TYPES[name]), None, None))
    models += [(label, "student", m, a, None)
               for label, m, a in student_files(args.students, args.lora)]
    return models + [(label, "student", m, a, tokens) for label, m, a, tokens in
                     curve_points(args.curve, out / "curve")]


def measure(label: str, kind: str, model: Path, adapter: Path | None, tokens: int | None,
            windows: dict[str, np.ndarray], args: argparse.Namespace,
            scored: dict[str, dict]) -> dict:
    """One row: the files' size and bits, then :func:`score`, with wall and process CPU
    seconds (on a busy machine the CPU time says what an idle one would take). Files already
    scored in this bench (``scored``, by their bytes' digest) are not scored again."""
    key = hashlib.sha1(model.read_bytes() + (adapter.read_bytes() if adapter else b"")).hexdigest()
    same = scored[key]["label"] if key in scored else None
    print(f"scoring {label} ({model.name}{' + ' + adapter.name if adapter else ''})"
          + (f": the same file as {same}" if same else ""), flush=True)
    size = model.stat().st_size + (adapter.stat().st_size if adapter else 0)
    if key not in scored:
        begin, cpu = time.perf_counter(), time.process_time()
        scores = score(model, adapter, windows, args)
        scored[key] = {"label": label, "scores": scores,
                       "score_s": time.perf_counter() - begin,
                       "cpu_s": time.process_time() - cpu}
    first = scored[key]
    return {"label": label, "kind": kind, "model": str(model), "tokens": tokens,
            "adapter": str(adapter) if adapter else None, "file_mb": size / 1e6,
            "bits_per_linear_weight": linear_bits(model, adapter),
            **first["scores"], "same_file_as": same,
            "score_s": 0.0 if same else first["score_s"],
            "cpu_s": 0.0 if same else first["cpu_s"]}


def add_ratios_and_frontier(rows: list[dict]) -> None:
    """``ratio`` (perplexity / the first row's, the shipped teacher) and ``pareto`` (on the
    size / ratio frontier) per domain, in place."""
    for r in rows:
        r["ratio"] = {d: r["perplexity"][d] / rows[0]["perplexity"][d] for d in DOMAINS}
        r["pareto"] = {}
    for d in DOMAINS:
        front = set(pareto_front([(r["file_mb"], r["ratio"][d]) for r in rows]))
        for i, r in enumerate(rows):
            r["pareto"][d] = i in front


def main(argv: list[str] | None = None) -> dict:
    from wrinklefree import assets

    args = parse_args(argv)
    if importlib.util.find_spec("llama_cpp") is None:  # every row is quantized and scored there
        raise UserInputError(f"wf bench frontier scores every model in llama.cpp: {INSTALL_HINT}")
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = Path(args.teacher) if args.teacher else assets.smollm2_gguf_path()
    models = build_models(args, teacher, out)
    windows = report_windows(teacher, args.seq_len, args.windows)
    scored: dict[str, dict] = {}  # files' digest -> scores: Q3_K_S and Q2_K of SmolLM2 are one file
    rows = [measure(*m, windows, args, scored) for m in models]
    add_ratios_and_frontier(rows)
    summary = {"windows": {d: list(w.shape) for d, w in windows.items()},
               "fingerprints": {d: hashlib.sha1(w.astype(np.int64).tobytes()).hexdigest()[:10]
                                for d, w in windows.items()},
               "options": {k: v for k, v in vars(args).items() if k != "students"},
               "rows": rows, "wall_s": time.perf_counter() - start,
               # decode speeds mean little on a busy machine: the load says how busy it was
               "load_average": os.getloadavg()}
    points = [r for r in rows if r["tokens"] is not None]
    if points:
        summary["curve"] = {d: fit_power_law([r["tokens"] for r in points],
                                             [r["ratio"][d] for r in points], args.target)
                            for d in DOMAINS}
    (out / "frontier.json").write_text(json.dumps(summary, indent=1))
    png = plot(rows, out / "frontier.png")
    print(table(rows))
    print(f"* = on the Pareto frontier (file MB, ratio) of that domain; {args.windows} test "
          f"windows x {args.seq_len} tokens per domain; {summary['wall_s']:.0f} s")
    if points:
        print(curve_lines(points, summary["curve"], args.target))
        print(f"wrote {plot_curve(points, summary['curve'], args.target, out / 'curve.png')}")
    print(f"wrote {out / 'frontier.json'} and {png}")
    return summary


def curve_lines(points: list[dict], fits: dict[str, dict], target: float) -> str:
    """Tokens and ratio per curve point, then the fit and its projection per domain."""
    width = max(len(r["label"]) for r in points)
    lines = ["quality against training tokens:",
             *[f"  {r['label']:<{width}} {r['tokens']:>12,} tokens  " + "  ".join(
                 f"{d} {r['ratio'][d]:.2f}x" for d in DOMAINS) for r in points]]
    for d, fit in fits.items():
        if fit["tokens_at_target"] is None:
            lines.append(f"  {d}: no falling power law through {fit['points']} point(s)")
        else:
            lines.append(f"  {d}: ratio - 1 = {fit['c']:.3g} * tokens^-{fit['alpha']:.3f}; "
                         f"{target:g}x at ~{fit['tokens_at_target']:.1e} tokens")
    return "\n".join(lines)


def plot_curve(points: list[dict], fits: dict[str, dict], target: float, png: Path) -> Path:
    """Ratio to the teacher against training tokens per domain (log-log), with the fit
    extended to the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for d in DOMAINS:
        tokens = [r["tokens"] for r in points]
        (line,) = ax.plot(tokens, [r["ratio"][d] for r in points], "o", label=d)
        fit = fits[d]
        if fit["tokens_at_target"] is not None:
            xs = np.geomspace(min(tokens), max(max(tokens), fit["tokens_at_target"]), 50)
            ax.plot(xs, 1 + fit["c"] * xs ** -fit["alpha"], "--", color=line.get_color(),
                    label=f"{d}: 1 + {fit['c']:.3g}·D^-{fit['alpha']:.3f}")
    ax.axhline(target, color="gray", linestyle=":", label=f"target {target:g}x")
    ax.set(xscale="log", yscale="log", xlabel="training tokens (end to end)",
           ylabel="perplexity / teacher (llama.cpp)", title="quality against training tokens")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


if __name__ == "__main__":
    main()
