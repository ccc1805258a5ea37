"""The training stream: packed windows sampled from several sources by weight, exactly resumable.

Each source yields ``seq_len`` windows through its reader (``readers.py``: shuffled windows for
local / ASV sources, stream order for HF sources). For every window the stream draws a source by
weight with a counter-based RNG: draw ``k`` uses ``default_rng([seed, k])``, so the whole RNG state
is the integer ``k``.

DDP: ranks read *disjoint* windows (each reader hands position ``j`` of its window sequence to rank
``j % world_size``), and all ranks draw the same source sequence, so after any number of steps every
rank's state is the same dict and rank 0's checkpoint restores all of them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from wrinklefree.data.cache import TokenStore
from wrinklefree.data.config import DataConfig
from wrinklefree.data.heldout import domain_documents, token_windows
from wrinklefree.data.identity import tokenizer_fingerprint
from wrinklefree.data.packing import collate, eos_id, make_window
from wrinklefree.data.readers import ShuffledReader, StreamReader, make_reader, no_documents

STATE_VERSION = 1
HISTORY_WINDOWS = 4096  # how far back state_dict(windows=...) can rewind


class MixtureStream(IterableDataset):
    """Endless packed windows {input_ids, labels, position_ids} (each (L,) long) from a mixture.

    Use with ``num_workers=0``: its state (RNG counter, source cursors, weights) lives in this
    object, which is what makes :meth:`state_dict` / :meth:`load_state_dict` exact.
    """

    def __init__(self, readers: dict[str, ShuffledReader | StreamReader],
                 weights: Mapping[str, float], eos: int, seed: int = 0):
        super().__init__()
        self.readers, self.eos, self.seed = readers, eos, seed
        self.names = list(readers)
        self.windows = 0  # windows drawn so far = the RNG counter
        self.counts = dict.fromkeys(self.names, 0)  # windows drawn per source (for logging)
        self._weights = self._normalised(weights)
        # For state_dict(windows=k) while a loader has already drawn windows past k: the state
        # before each recent window, the weight changes / source batches since ([at, kind, arg],
        # ``at`` = window counter when it happened), and those still to replay after a resume.
        self._snapshots: deque[dict] = deque(maxlen=HISTORY_WINDOWS)
        self._journal: deque[list] = deque()
        self._pending: list[list] = []

    @property
    def weights(self) -> dict[str, float]:
        return dict(zip(self.names, self._weights.tolist(), strict=True))

    def _normalised(self, weights: Mapping[str, float]) -> np.ndarray:
        unknown = sorted(set(weights) - set(self.names))
        if unknown:
            raise KeyError(f"unknown data source(s) {unknown}; this stream has {self.names}")
        w = np.array([float(weights.get(n, 0.0)) for n in self.names])
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(f"mixture weights must be finite, >= 0 and not all 0, got {weights}")
        return w / w.sum()

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Switch the mixture from the next window on. Sources left out get weight 0; the rest
        are normalised to sum to 1."""
        self._use_weights(self._normalised(weights))

    def _use_weights(self, normalised: np.ndarray) -> None:
        self._weights = normalised
        self._journal.append([self.windows, "weights", self.weights])

    def draw_source(self, k: int) -> str:
        """Source of window ``k``: inverse-CDF sampling of u ~ U[0, 1) from ``rng([seed, k])``."""
        u = np.random.default_rng([self.seed, k]).random()
        i = int(np.searchsorted(np.cumsum(self._weights), u, side="right"))
        return self.names[min(i, len(self.names) - 1)]

    def next_window(self) -> dict[str, torch.Tensor]:
        self._replay_due()
        self._snapshots.append(self._core_state())
        while self._journal and self._journal[0][0] <= self._snapshots[0]["windows"]:
            self._journal.popleft()  # older than any snapshot: never needed again
        name = self.draw_source(self.windows)
        self.windows += 1
        self.counts[name] += 1
        return make_window(self.readers[name].next_window(), self.eos)

    def source_batch(self, name: str, num_windows: int) -> dict[str, torch.Tensor]:
        """``num_windows`` windows of one source as a (B, L) batch (used by influence remixing;
        they advance that source's cursor but not the mixture RNG)."""
        if name not in self.readers:
            raise KeyError(f"unknown data source '{name}'; this stream has {self.names}")
        windows = [self.readers[name].next_window() for _ in range(num_windows)]
        self._journal.append([self.windows, "source_batch", [name, num_windows]])
        return collate([make_window(w, self.eos) for w in windows])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if get_worker_info() is not None:
            raise RuntimeError(
                "MixtureStream must be read with DataLoader(num_workers=0): worker processes "
                "would each get a copy of its cursors and repeat the same windows"
            )
        while True:
            yield self.next_window()

    def _core_state(self) -> dict:
        return {
            "windows": self.windows,
            "weights": self.weights,
            "counts": dict(self.counts),
            "sources": {name: r.state() for name, r in self.readers.items()},
        }

    def state_dict(self, windows: int | None = None) -> dict:
        """The state after ``windows`` windows (default: all drawn so far), plain Python values
        (safe for ``torch.load(weights_only=True)``).

        Pass the number of windows training has *consumed* when a loader reads ahead (Lightning
        prefetches one batch from an iterable dataset): the state is rewound to that window, and
        the weight changes and source batches made since are kept and replayed after a resume at
        the same window counts, so the resumed run sees exactly the windows the original saw.
        """
        if windows is None or windows == self.windows:
            state, later = self._core_state(), []
        else:
            oldest = self._snapshots[0]["windows"] if self._snapshots else self.windows
            if not oldest <= windows < self.windows:
                raise ValueError(
                    f"state_dict(windows={windows}): only windows {oldest}..{self.windows} are "
                    f"kept (the last {HISTORY_WINDOWS}); pass the number of windows consumed"
                )
            state = self._snapshots[windows - oldest]
            later = [e for e in self._journal if e[0] > windows]
        pending = [list(e) for e in later] + [list(e) for e in self._pending]
        return {"version": STATE_VERSION, "seed": self.seed, **state, "pending": pending}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data state version {state.get('version')} is not {STATE_VERSION}")
        if set(state["sources"]) != set(self.names):
            raise ValueError(
                f"checkpoint data sources {sorted(state['sources'])} differ from this stream's "
                f"{sorted(self.names)}; use the same data config to resume"
            )
        for name, reader in self.readers.items():
            reader.load_state(state["sources"][name])
        self.seed, self.windows = state["seed"], state["windows"]
        self.counts = dict(state["counts"])
        self._weights = _stored(state["weights"], self.names)
        self._pending = [list(e) for e in state.get("pending", [])]
        self._snapshots.clear()
        self._journal.clear()

    def _replay_due(self) -> None:
        """Re-apply, at the same window count, the changes the original run made after the
        checkpointed window (so they land where they did before the interruption)."""
        while self._pending and self._pending[0][0] <= self.windows:
            _, kind, arg = self._pending.pop(0)
            if kind == "weights":
                self._use_weights(_stored(arg, self.names))
            else:
                self.source_batch(*arg)


def _stored(weights: Mapping[str, float], names: list[str]) -> np.ndarray:
    """Already-normalised weights from a state dict, bit for bit (no renormalisation)."""
    return np.array([float(weights.get(n, 0.0)) for n in names])


def build_train_stream(config: DataConfig, tokenizer, rank: int = 0,
                       world_size: int = 1) -> MixtureStream:
    """Tokenise (or find in the cache) every source of ``config`` and return the mixture stream.

    Local and ASV sources are tokenised whole here (a progress bar; cached for the next run);
    HF sources are streamed and tokenised shard by shard as training reaches them. Sources with
    weight 0 are prepared too, so a later :meth:`MixtureStream.set_weights` can switch to them.
    ``config`` is checked by its owner (:meth:`DataConfig.validate`, which ``wf train`` runs
    with the rest of its config).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    fingerprint = tokenizer_fingerprint(tokenizer)
    readers = {}
    for source in config.sources:
        store = TokenStore(source, tokenizer, config.cache_path, config.shard_docs, fingerprint)
        if not store.streaming and store.prepare() == 0:
            raise no_documents(source)
        readers[source.name] = make_reader(
            source.name, store, config.seq_len, config.seed, rank, world_size)
    weights = {s.name: s.weight for s in config.sources}
    return MixtureStream(readers, weights, eos_id(tokenizer), config.seed)


def build_val_windows(tokenizer, seq_len: int = 256, num_windows: int = 16,
                      documents: list[str] | None = None) -> list[dict[str, torch.Tensor]]:
    """Validation windows in the training format (position ids restart per document), from the
    ASV validation documents by default: the same tokens as
    ``heldout.heldout_windows(..., split="validation")``, never the test windows reports print."""
    docs = domain_documents("asv", "validation") if documents is None else documents
    eos = eos_id(tokenizer)
    return [make_window(w, eos) for w in token_windows(tokenizer, docs, seq_len, num_windows)]


def phase_weights(spec) -> dict[str, float]:
    """Mixture weights from a curriculum phase's ``data_config``: a ``{source: weight}`` mapping,
    or a data config (DataConfig, dict or OmegaConf node) whose sources carry weights."""
    if isinstance(spec, DataConfig) or (isinstance(spec, Mapping) and "sources" in spec):
        config = spec if isinstance(spec, DataConfig) else DataConfig.from_dict(spec)
        return {s.name: s.weight for s in config.sources}
    return {str(k): float(v) for k, v in dict(spec).items()}
