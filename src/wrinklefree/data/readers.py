"""Cut one source's token stream into ``seq_len`` windows, for one DDP rank, resumably.

Local and ASV sources are fully tokenised, so their windows are read in a seeded random order, a
new one each epoch (with a random alignment offset, so window boundaries move too); consecutive
windows of ordered text (a book, chapter after chapter) would otherwise fill whole batches with one
passage. HF-streamed sources have no random access: they are read in stream order.

DDP: all ranks walk the same window sequence; rank ``r`` of ``W`` takes positions ``r, r + W, ...``
so ranks read disjoint windows and, after the same number of windows, are in the same state.
"""

from __future__ import annotations

import zlib

import numpy as np

from wrinklefree.data.cache import TokenStore
from wrinklefree.errors import UserInputError


def no_documents(source) -> UserInputError:
    """The error for a source without text (an empty file, say), naming where it reads from."""
    where = source.path or source.hf_name or source.kind
    return UserInputError(f"source '{source.name}' ({where}) has no documents: it holds no text; "
                          "add text to it, or drop it from data.sources")


def _check_key(name: str, state: dict, store: TokenStore) -> None:
    if state["key"] != store.key:
        raise ValueError(
            f"source '{name}' changed since the checkpoint (token cache key {state['key']} -> "
            f"{store.key}: files, tokenizer or shard_docs differ); restore its old data or do not "
            "load the data state"
        )


class ShuffledReader:
    """Windows of a fully tokenised source in random order; position = (epoch, index)."""

    def __init__(self, name: str, store: TokenStore, seq_len: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if store.num_tokens < seq_len * world_size:
            where = store.source.path or store.source.hf_name or store.source.kind
            raise UserInputError(
                f"source '{name}' ({where}) has {store.num_tokens} tokens, fewer than one window "
                f"of data.seq_len={seq_len} per rank ({world_size}); add text to it or lower "
                "data.seq_len")
        self.name, self.store, self.seq_len, self.seed = name, store, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = self.index = 0  # index: windows of this epoch taken by all ranks together
        self._cached_plan: tuple[int, int, np.ndarray] = (-1, 0, np.empty(0, dtype=np.int64))

    def plan(self, epoch: int) -> tuple[int, np.ndarray]:
        """(alignment offset in [0, L), order of the epoch's windows), seeded by (seed, name,
        epoch): window ``i`` of the epoch is tokens ``offset + order[i] * L`` onwards."""
        if self._cached_plan[0] != epoch:
            rng = np.random.default_rng([self.seed, zlib.crc32(self.name.encode()), epoch])
            total, length = self.store.num_tokens, self.seq_len
            offset = int(rng.integers(0, min(length, total - length + 1)))
            self._cached_plan = (epoch, offset, rng.permutation((total - offset) // length))
        return self._cached_plan[1], self._cached_plan[2]

    def next_window(self) -> np.ndarray:
        """This rank's next window, (L,); the epoch ends where a full group of ranks won't fit."""
        offset, order = self.plan(self.epoch)
        if self.index + self.world_size > len(order):
            self.epoch, self.index = self.epoch + 1, 0
            offset, order = self.plan(self.epoch)
        start = offset + int(order[self.index + self.rank]) * self.seq_len
        self.index += self.world_size
        return self.store.read(start, self.seq_len)

    def state(self) -> dict:
        return {"key": self.store.key, "epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        _check_key(self.name, state, self.store)
        self.epoch, self.index = state["epoch"], state["index"]


class StreamReader:
    """Windows of a streamed source in stream order; position = (epoch, shard, token offset)."""

    def __init__(self, name: str, store: TokenStore, seq_len: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.name, self.store, self.seq_len = name, store, seq_len
        self.rank, self.world_size = rank, world_size
        self.epoch = self.index = self.offset = 0
        self._loaded: tuple[int, np.ndarray | None] = (-1, None)

    def next_window(self) -> np.ndarray:
        """This rank's next window, (L,): skip the windows of the ranks before and after it."""
        self._take(self.rank * self.seq_len)
        window = self._take(self.seq_len)
        self._take((self.world_size - 1 - self.rank) * self.seq_len)
        return window

    def state(self) -> dict:
        return {"key": self.store.key, "epoch": self.epoch, "index": self.index,
                "offset": self.offset}

    def load_state(self, state: dict) -> None:
        _check_key(self.name, state, self.store)
        self.epoch, self.index, self.offset = state["epoch"], state["index"], state["offset"]

    def _shard(self) -> np.ndarray:
        """The shard under the cursor; past the last one, the stream starts again (new epoch)."""
        if self._loaded[0] != self.index:
            tokens = self.store.shard(self.index)
            if tokens is None:
                if self.index == 0:
                    raise no_documents(self.store.source)
                self.epoch, self.index, self.offset = self.epoch + 1, 0, 0
                tokens = self.store.shard(0)
            self._loaded = (self.index, tokens)
        return self._loaded[1]

    def _take(self, n: int) -> np.ndarray:
        parts = []
        while n > 0:
            tokens = self._shard()
            part = tokens[self.offset : self.offset + n]
            parts.append(part)
            n -= len(part)
            self.offset += len(part)
            if self.offset >= len(tokens):
                self.index, self.offset = self.index + 1, 0
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def make_reader(name: str, store: TokenStore, seq_len: int, seed: int, rank: int = 0,
                world_size: int = 1) -> ShuffledReader | StreamReader:
    """A shuffled reader for fully tokenised sources, a stream reader for HF-streamed ones."""
    kind = StreamReader if store.streaming else ShuffledReader
    return kind(name, store, seq_len, seed, rank, world_size)
