"""Training data: sources, a token cache, packed windows, weighted mixtures, influence remixing.

Start at :func:`build_train_stream` (the training windows) and :func:`build_val_windows`.
"""

from wrinklefree.data.cache import TokenStore
from wrinklefree.data.config import DataConfig, RemixConfig, SourceConfig
from wrinklefree.data.heldout import (
    DOMAINS,
    asv_split,
    calibration_batches,
    domain_windows,
    heldout_windows,
)
from wrinklefree.data.identity import tokenizer_fingerprint
from wrinklefree.data.influence import (
    InfluenceRemixer,
    build_probe_batch,
    estimate_source_influence,
    influence_params,
    remix_weights,
)
from wrinklefree.data.mixture import (
    MixtureStream,
    build_train_stream,
    build_val_windows,
    phase_weights,
)
from wrinklefree.data.packing import collate, make_window, packed_position_ids

__all__ = [
    "DataConfig", "RemixConfig", "SourceConfig",
    "TokenStore", "tokenizer_fingerprint",
    "DOMAINS", "asv_split", "calibration_batches", "domain_windows", "heldout_windows",
    "InfluenceRemixer", "build_probe_batch", "estimate_source_influence", "influence_params",
    "remix_weights",
    "MixtureStream", "build_train_stream", "build_val_windows", "phase_weights",
    "collate", "make_window", "packed_position_ids",
]  # fmt: skip
