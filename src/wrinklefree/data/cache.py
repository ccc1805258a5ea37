"""Tokenise a source once and keep its tokens on disk as numbered ``.npy`` shards.

Shard ``i`` holds documents ``[i * shard_docs, (i + 1) * shard_docs)`` of the source, each followed
by EOS, as one flat uint16 / uint32 array. The folder name is a hash of everything the tokens depend
on (source files with sizes and mtimes, tokenizer vocabulary and merges, settings), so a second run,
or another rank, finds the shards and never re-tokenises; editing a file or switching tokenizer
gives a new key. Every file is written to a temporary name and ``os.replace``-d into place, so a
crash or two ranks tokenising at once never leave a half-written shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from wrinklefree.data.config import SourceConfig
from wrinklefree.data.identity import source_identity, tokenizer_fingerprint
from wrinklefree.data.packing import eos_id
from wrinklefree.data.sources import is_streaming, iter_documents

CACHE_VERSION = 2
END_FILE = "end.json"  # written once the source is exhausted: shard count and sizes
OPEN_SHARDS = 32  # memory maps kept open (each holds a file descriptor)
log = logging.getLogger(__name__)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (halves the cache), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _atomic_write(path: Path, write) -> None:
    """``write(file)`` into a temporary file next to ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TokenStore:
    """The token stream of one source as numbered shards, tokenised on first use and cached."""

    def __init__(self, source: SourceConfig, tokenizer, cache_root: Path, shard_docs: int,
                 tokenizer_id: dict | None = None):
        self.source, self.tokenizer, self.shard_docs = source, tokenizer, shard_docs
        self.eos = eos_id(tokenizer)
        self.dtype = token_dtype(len(tokenizer))
        self.streaming = is_streaming(source)
        settings = {
            "version": CACHE_VERSION,
            "source": source_identity(source),
            "format": source.format,
            "text_field": source.text_field,
            "tokenizer": tokenizer_id or tokenizer_fingerprint(tokenizer),
            "shard_docs": shard_docs,
            "dtype": self.dtype.name,
        }
        self.key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
        self.dir = Path(cache_root).expanduser() / self.key
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "meta.json"
        if not meta.is_file():  # for humans browsing the cache
            _atomic_write(meta, lambda f: f.write(json.dumps(settings, indent=1).encode()))
        self._docs, self._next_doc = None, 0  # open document iterator and where it stands
        self._bar = None
        self._starts: np.ndarray | None = None  # shard start offsets, once fully tokenised
        self._maps: dict[int, np.ndarray] = {}  # open shard memory maps, oldest first
        self.sampler = None  # kind: teacher_samples: documents come from a model, not text
        if source.is_generated:
            from wrinklefree.data.generated import TeacherSampler

            self.sampler = TeacherSampler(source.sampling, tokenizer)

    @property
    def num_shards(self) -> int | None:
        """How many shards the source has, once it has been read to the end (else None)."""
        end = self.dir / END_FILE
        return json.loads(end.read_text())["num_shards"] if end.is_file() else None

    def shard_path(self, i: int) -> Path:
        return self.dir / f"shard_{i:06d}.npy"

    def shard(self, i: int) -> np.ndarray | None:
        """Tokens of shard ``i`` (memory-mapped), tokenising it now if needed; None past the end."""
        path = self.shard_path(i)
        if path.is_file():
            return np.load(path, mmap_mode="r")
        end = self.num_shards
        if end is not None and i >= end:
            return None
        return self._build(i)

    def prepare(self) -> int:
        """Tokenise the whole source (a no-op when cached); returns the number of shards."""
        if self.num_shards is None:
            i = 0
            while self.shard_path(i).is_file():  # resume a cache a crash left half-built
                i += 1
            verb = "sampling" if self.sampler else "tokenising"
            total = self.source.sampling.num_docs if self.sampler else None
            self._bar = tqdm(desc=f"{verb} {self.source.name}", unit="doc", total=total,
                             initial=i * self.shard_docs, mininterval=1.0)
            try:
                while self.shard(i) is not None:
                    i += 1
            finally:
                self._bar.close()
                self._bar = None
                if self.sampler:
                    self.sampler.release()
        return self.num_shards

    def _documents(self, start: int, count: int) -> list[str]:
        if self._docs is None or self._next_doc != start:
            self._docs = iter_documents(self.source, start)
        docs = [d for _, d in zip(range(count), self._docs, strict=False)]
        self._next_doc = start + len(docs)
        return docs

    def _build(self, i: int) -> np.ndarray | None:
        if self.sampler is not None:  # sampled ids, the bar advanced per generated batch
            docs = self.sampler.documents(i * self.shard_docs, self.shard_docs, self._bar)
            tokens = self.flatten(docs) if docs else None
        else:
            docs = self._documents(i * self.shard_docs, self.shard_docs)
            tokens = self.tokenize(docs) if docs else None
        if tokens is not None:
            _atomic_write(self.shard_path(i), lambda f: np.save(f, tokens))
            if self._bar is not None and self.sampler is None:
                self._bar.update(len(docs))
            elif self.streaming:
                log.info("tokenised shard %d of %s (%d tokens)", i, self.source.name, len(tokens))
        if len(docs) < self.shard_docs:  # the source ran out: record where it ends
            self._write_end(num_shards=i + bool(docs), num_docs=i * self.shard_docs + len(docs))
        return tokens

    def _write_end(self, num_shards: int, num_docs: int) -> None:
        paths = [self.shard_path(i) for i in range(num_shards)]
        # a lazily read stream may not have built every shard; its reader never needs sizes
        sizes = ([len(np.load(p, mmap_mode="r")) for p in paths]
                 if all(p.is_file() for p in paths) else None)
        end = {"num_shards": num_shards, "num_docs": num_docs, "shard_tokens": sizes}
        _atomic_write(self.dir / END_FILE, lambda f: f.write(json.dumps(end).encode()))

    @property
    def num_tokens(self) -> int:
        """Tokens in the whole source (EOS included); needs the source fully tokenised."""
        return int(self._bounds()[-1])

    def _bounds(self) -> np.ndarray:
        """Where each shard starts in the concatenated token stream, (num_shards + 1,)."""
        if self._starts is None:
            end = self.dir / END_FILE
            if not end.is_file():
                raise RuntimeError(f"source '{self.source.name}' is not fully tokenised; "
                                   "call prepare() first")
            sizes = json.loads(end.read_text())["shard_tokens"]
            if sizes is None:
                raise RuntimeError(f"source '{self.source.name}' was streamed: no random access")
            self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return self._starts

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the concatenated stream (across shards)."""
        bounds = self._bounds()
        if not 0 <= start and start + length <= bounds[-1]:
            raise IndexError(f"tokens [{start}, {start + length}) outside 0..{bounds[-1]}")
        i = int(np.searchsorted(bounds, start, side="right")) - 1
        parts = []
        while length > 0:
            tokens = self._mapped(i)
            part = tokens[start - bounds[i] : start - bounds[i] + length]
            parts.append(part)
            start, length, i = start + len(part), length - len(part), i + 1
        return np.concatenate(parts)

    def _mapped(self, i: int) -> np.ndarray:
        if i not in self._maps:
            if len(self._maps) >= OPEN_SHARDS:
                self._maps.pop(next(iter(self._maps)))  # drop the oldest
            self._maps[i] = np.load(self.shard_path(i), mmap_mode="r")
        return self._maps[i]

    def tokenize(self, docs: list[str]) -> np.ndarray:
        """One batched tokenizer call; every document followed by EOS, as one flat array."""
        ids = self.tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]
        return self.flatten(ids)

    def flatten(self, ids: list[list[int]]) -> np.ndarray:
        """Documents of ids as one flat array, every document followed by EOS."""
        flat = np.concatenate([np.array([*doc, self.eos], dtype=np.int64) for doc in ids])
        if flat.size and flat.max() >= np.iinfo(self.dtype).max + 1:
            raise ValueError(f"token id {flat.max()} does not fit {self.dtype} (tokenizer size "
                             f"{len(self.tokenizer)} understates its ids)")
        return flat.astype(self.dtype)
