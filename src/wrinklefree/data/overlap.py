"""Evaluation text must never be trained on: refuse a source by its *content*, not only its path.

A copy of the general-English corpus under another file name, or held-out ASV chapters pasted
into a file, would make the perplexity reports meaningless while every path looks innocent. So
the evaluation corpora are cut into word 13-grams ("shingles", hashed into one set per corpus)
and a sample of every local training file is checked against them. The 13-gram is the overlap
unit of GPT-3's decontamination (Brown et al. 2020, arXiv 2005.14165, Appendix C): long enough
that unrelated text does not share one by chance, short enough that re-wrapped or re-punctuated
copies still do (words are lower-cased, punctuation and whitespace dropped).

A source overlaps a corpus when its sample shares at least ``MIN_SHARED`` distinct shingles with
it: a quoted sentence does not trip the check, a copied article (~200 words) does. The sample is
the first ``SAMPLE_CHARS`` characters of each file (of at most ``SAMPLE_FILES`` files, evenly
spread over a larger folder): evaluation text buried deeper in a huge file is not seen.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

SHINGLE = 13  # words per shingle (Brown et al. 2020, Appendix C)
MIN_SHARED = 20  # distinct shared shingles that make a file overlap an evaluation corpus
SAMPLE_CHARS = 1_000_000  # characters read from the start of each training file
SAMPLE_FILES = 64  # files checked per source (evenly spread when it has more)


def words(text: str) -> list[str]:
    """Lower-cased word tokens: what survives re-wrapping, re-punctuation and re-casing."""
    return re.findall(r"\w+", text.lower())


def shingles(text: str, size: int = SHINGLE) -> set[int]:
    """Hashes of the ``size``-word windows of ``text`` (empty when it has fewer words)."""
    w = words(text)
    return {hash(tuple(w[i : i + size])) for i in range(len(w) - size + 1)}


@lru_cache(maxsize=1)
def evaluation_shingles() -> dict[str, frozenset[int]]:
    """``{corpus description: its shingles}`` for every evaluation corpus that is installed: the
    general-English corpus and the held-out ASV (validation and test documents)."""
    from wrinklefree import assets
    from wrinklefree.data.heldout import asv_split

    corpora: dict[str, frozenset[int]] = {}
    try:
        path = assets.english_corpus_path()
        corpora[f"the general-English evaluation corpus ({path.name})"] = frozenset(
            set().union(*(shingles(d) for d in assets.english_documents())))
    except FileNotFoundError:  # gensim not installed: nothing to protect
        pass
    try:
        corpora["the held-out ASV text (the asv evaluation domain)"] = frozenset(
            set().union(*(shingles(d) for d in asv_split()[1])))
    except FileNotFoundError:
        pass
    return corpora


def shared_shingles(documents: Iterable[str], max_chars: int = SAMPLE_CHARS) -> dict[str, int]:
    """``{corpus: distinct shingles it shares with documents}`` over the first ``max_chars``
    characters of ``documents`` (whole documents; the one crossing the limit is the last)."""
    seen: set[int] = set()
    read = 0
    for doc in documents:
        seen |= shingles(doc)
        read += len(doc)
        if read >= max_chars:
            break
    return {name: len(seen & corpus) for name, corpus in evaluation_shingles().items()}


def sample_files(files: list, limit: int = SAMPLE_FILES) -> list:
    """All of ``files`` up to ``limit``, else ``limit`` of them evenly spread (first and last
    included)."""
    if len(files) <= limit:
        return list(files)
    step = (len(files) - 1) / (limit - 1)
    return [files[round(i * step)] for i in range(limit)]
