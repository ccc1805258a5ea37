"""Resuming a run folder continues the same run, or changes nothing.

Why: ``resume=auto`` of a finished run used to evaluate again and rewrite ``report.json`` without
the teacher's rows; a resume with another ``seq_len``, ``batch_size`` or ``lr`` silently trained a
different run under the old name and replaced its ``config.yaml``. Here a resumed run keeps the
configuration recorded in ``config.yaml`` (only its length may grow), a finished run is left as
it is, and the rows measured before training survive a resume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from wrinklefree.errors import UserInputError
from wrinklefree.train.config import scrub_secrets

CONFIG_NAME = "config.yaml"
REPORT_NAME = "report.json"
# a resume may train further: config.yaml then records the new length (said on stdout)
EXTENDABLE = ("training.max_steps", "training.max_tokens")
# where and how this launch runs, not what the run trains: free to differ on resume
LAUNCH_ONLY = ("name", "run_dir", "resume", "overwrite", "logging", "data.cache_dir")
# report.json rows measured before training: a resume does not measure them again
BEFORE_TRAINING = ("teacher", "converted", "reconstructed", "reconstruction_errors")


def config_record(cfg: DictConfig) -> dict[str, Any]:
    """What ``config.yaml`` holds: the resolved config with secret-looking values scrubbed."""
    return scrub_secrets(OmegaConf.to_container(cfg, resolve=True))


def flatten(container: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys (``data.sources.0.path``, the form overrides take) -> leaf values."""
    items = (container.items() if isinstance(container, dict)
             else enumerate(container) if isinstance(container, list) else None)
    if items is None or not container:
        return {prefix.removesuffix("."): container}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat |= flatten(value, f"{prefix}{key}.")
    return flat


def _launch_only(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in LAUNCH_ONLY)


ABSENT = "(absent)"


# free-form sections: a key only one side has is a change (an objective added on resume)
OPEN_MAPPINGS = ("objectives", "curriculum")


def _compared(key: str, old: dict[str, Any], now: dict[str, Any]) -> bool:
    if _launch_only(key):
        return False
    # elsewhere the schema has every key: one side lacking it is another version's schema
    return (key in old and key in now) or key.split(".")[0] in OPEN_MAPPINGS


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Key -> (saved value, new value) for every key whose value differs, the launch-only keys
    left out; a key one side lacks has the value ``(absent)`` (compared in ``objectives`` and
    ``curriculum`` only: in the typed sections it comes from another wrinklefree version)."""
    old, now = flatten(saved), flatten(new)
    changes = {k: (old.get(k, ABSENT), now.get(k, ABSENT)) for k in old.keys() | now.keys()
               if _compared(k, old, now)}
    return {k: (a, b) for k, (a, b) in changes.items() if a != b}


def check_resumed_config(cfg: DictConfig, run_dir: Path, announce: bool = True) -> bool:
    """Refuse a resume whose config differs from the run's ``config.yaml`` (naming the keys and
    the ways on); a longer run (``training.max_steps`` / ``max_tokens``) passes and is said
    (when ``announce``: rank 0). Returns whether ``config.yaml`` must be written (missing, or
    the run grew)."""
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        return True
    saved = OmegaConf.to_container(OmegaConf.load(path))
    changes = config_changes(saved, config_record(cfg))
    refused = {k: v for k, v in changes.items() if k not in EXTENDABLE}
    if refused:
        listed = ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in sorted(refused.items()))
        raise UserInputError(
            f"resume={cfg.resume}: the config differs from the run's {path} in {listed}; a resumed "
            "run keeps its configuration: drop these overrides to continue it, or train them as "
            "a new run with another run_dir=... (or replace this run with overwrite=true)")
    for key, (old, new) in sorted(changes.items()) if announce else ():
        print(f"resuming with {key}={new} (was {old}; {CONFIG_NAME} updated)", flush=True)
    return bool(changes)


def finished_steps(run_dir: Path) -> int | None:
    """The steps of the finished run in ``run_dir`` (its ``report.json``, written last), or
    None when it holds no finished run."""
    try:
        return int(json.loads((run_dir / REPORT_NAME).read_text())["total_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rows_before_training(run_dir: Path) -> dict[str, Any]:
    """The rows of an earlier ``report.json`` measured before training (teacher, converted
    student, ...), kept when a resume trains the run further; {} when there is none."""
    try:
        report = json.loads((run_dir / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return {k: report[k] for k in BEFORE_TRAINING if k in report}
