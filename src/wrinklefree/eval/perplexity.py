"""Held-out perplexity on clean (unmasked) text, identical windows for every model."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from wrinklefree.data.heldout import (
    REPORT_WINDOWS,
    TextTooShortError,
    heldout_windows,
    token_windows,
)
from wrinklefree.data.sources import read_utf8
from wrinklefree.errors import UserInputError


def eval_windows(
    tokenizer, seq_len: int = 128, num_windows: int = REPORT_WINDOWS,
    text: str | Path | None = None
) -> torch.Tensor:
    """Evaluation windows (N, seq_len): the held-out ASV test windows, or the text file ``text``.

    Models that share a tokenizer get identical windows, so their numbers compare.
    """
    if text is None:
        with seq_len_named(seq_len):
            windows = heldout_windows(tokenizer, seq_len, num_windows)
        return require_windows(windows, num_windows, seq_len)
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"--text {path} does not exist; pass a UTF-8 text file")
    # documents split on blank lines, as `wf train` reads a text source (same UTF-8 message)
    documents = [d for d in read_utf8(path.read_bytes(), path).split("\n\n") if d.strip()]
    if not documents:
        raise UserInputError(f"--text {path} holds no text; pass a UTF-8 text file with "
                             "documents separated by blank lines")
    with seq_len_named(seq_len, f" or a longer --text than {path}"):
        windows = token_windows(tokenizer, documents, seq_len, num_windows)
    return require_windows(windows, num_windows, seq_len)


@contextlib.contextmanager
def seq_len_named(seq_len: int, longer: str = "") -> Iterator[None]:
    """Name --seq-len and its fix when the text has no window of that length."""
    try:
        yield
    except TextTooShortError as err:
        raise UserInputError(f"--seq-len {seq_len}: {err}; pass a shorter --seq-len{longer}"
                             ) from None


# tokens per forward when scoring: 16 windows of 128 (1.5-2x faster than 4 on 2 shared cores,
# docs/eval.md), 4 of 512; the logits of one batch are EVAL_BATCH_TOKENS x vocab floats
EVAL_BATCH_TOKENS = 2048


def windows_per_batch(seq_len: int) -> int:
    """How many ``seq_len``-token windows one scoring forward takes (``EVAL_BATCH_TOKENS``)."""
    return max(1, EVAL_BATCH_TOKENS // seq_len)


def require_windows(windows: torch.Tensor, asked: int, seq_len: int) -> torch.Tensor:
    """Refuse fewer windows than asked for: a silent shortfall would make reports of
    different --windows look comparable."""
    if windows.shape[0] < asked:
        raise UserInputError(f"--windows {asked}: the text has only {windows.shape[0]} windows "
                             f"of {seq_len} tokens; pass --windows {windows.shape[0]} or less "
                             "(or a shorter --seq-len, or a longer --text)")
    return windows


@torch.no_grad()
def mean_nll(
    model: nn.Module, windows: torch.Tensor, batch_size: int | None = None,
    progress: bool = False,
) -> float:
    """Mean next-token negative log-likelihood (nats/token) over all positions of ``windows``.

    Every window is scored independently from its first token (position 0 is context only);
    the mean is over tokens, so models compare exactly when given the same windows.
    ``batch_size`` windows per forward (None: :func:`windows_per_batch`).
    """
    batch_size = batch_size or windows_per_batch(windows.shape[1])
    total_nll, total_tokens = 0.0, 0
    with evaluating(model) as device:
        for chunk in tqdm(windows.split(batch_size), desc="nll", disable=not progress):
            chunk = chunk.to(device)
            logits = model(input_ids=chunk, use_cache=False).logits[:, :-1]  # (B, L-1, V)
            targets = chunk[:, 1:]  # (B, L-1)
            nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                  reduction="sum")
            total_nll += float(nll)
            total_tokens += targets.numel()
    return total_nll / total_tokens


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[torch.device]:
    """The model in eval mode (dropout off: every score is of the deterministic model) for the
    block, its training flag restored after, even on error; yields its parameters' device."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


def perplexity(
    model: nn.Module, windows: torch.Tensor, batch_size: int | None = None,
    progress: bool = False,
) -> float:
    """exp(mean next-token cross-entropy) over all positions of ``windows`` (N, L)."""
    return math.exp(mean_nll(model, windows, batch_size, progress))
