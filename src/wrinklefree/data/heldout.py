"""The fixed train / held-out split of the embedded ASV text, and held-out evaluation windows.

The split is by document, deterministic (every ``HELDOUT_EVERY``-th document is held out), so
every model, run and machine evaluates on exactly the same text.

Two evaluation *domains* (:func:`domain_windows`): ``asv``, the held-out ASV split (the style the
demo trains on), and ``english``, general news English that no training mixture may use
(``assets.english_documents``). A student that only learned the Bible's style scores well on the
first and badly on the second; reporting both is what keeps a recipe honest.
"""

from __future__ import annotations

import torch

from wrinklefree import assets

HELDOUT_EVERY = 50


def asv_split() -> tuple[list[str], list[str]]:
    """(train documents, held-out documents) of the ASV text."""
    docs = assets.asv_documents()
    train = [d for i, d in enumerate(docs) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    heldout = [d for i, d in enumerate(docs) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    return train, heldout


def token_windows(
    tokenizer, documents: list[str], seq_len: int, num_windows: int | None = None
) -> torch.Tensor:
    """Concatenate documents (EOS between them) and cut into contiguous windows, (N, seq_len)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in documents:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if num_windows is not None and len(ids) >= num_windows * seq_len:
            break
    n = len(ids) // seq_len if num_windows is None else min(num_windows, len(ids) // seq_len)
    if n == 0:
        raise ValueError(f"not enough text for one window of {seq_len} tokens")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def heldout_windows(tokenizer, seq_len: int = 256, num_windows: int = 16) -> torch.Tensor:
    """The first ``num_windows`` held-out ASV windows of ``seq_len`` tokens, (N, seq_len)."""
    return token_windows(tokenizer, asv_split()[1], seq_len, num_windows)


DOMAINS = ("asv", "english")


def domain_documents(domain: str) -> list[str]:
    """The evaluation documents of ``domain``: held-out ASV, or all 300 English news articles
    (none of them is ever trained on, so all are held out)."""
    if domain == "asv":
        return asv_split()[1]
    if domain == "english":
        return list(assets.english_documents())
    raise ValueError(f"unknown evaluation domain {domain!r}; choose one of {DOMAINS}")


def domain_windows(
    tokenizer, seq_len: int = 256, num_windows: int = 16, domains: tuple[str, ...] = DOMAINS
) -> dict[str, torch.Tensor]:
    """Fixed evaluation windows per domain: ``{"asv": (N, L), "english": (N, L)}``.

    The ``asv`` windows equal :func:`heldout_windows`, so ASV numbers stay comparable with
    every earlier report; both are contiguous text from the first document on, EOS between
    documents.
    """
    return {d: token_windows(tokenizer, domain_documents(d), seq_len, num_windows)
            for d in domains}


def calibration_batches(
    tokenizer, num_batches: int = 4, batch_size: int = 2, seq_len: int = 256
) -> list[dict[str, torch.Tensor]]:
    """Model inputs from the *training* side of the split, for SubLN / LRC calibration."""
    windows = token_windows(tokenizer, asv_split()[0], seq_len, num_batches * batch_size)
    return [{"input_ids": w} for w in windows.split(batch_size)]
