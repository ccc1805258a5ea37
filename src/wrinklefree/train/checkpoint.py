"""Run-folder safety: one run per folder, a lock against two live runs, atomic checkpoints.

Why: a rerun into an existing folder used to overwrite ``final/`` and mix its checkpoints with
the old run's (``last-v1.ckpt``); two runs at once logged every step twice; and Lightning's own
save staged the file in ``$TMPDIR`` and *copied* it when that is another filesystem, so a kill
left a truncated ``last.ckpt`` that ``resume=auto`` then crashed on. Here a checkpoint is written
beside its target and renamed (atomic on one filesystem), and resume picks the newest checkpoint
that reads back intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from wrinklefree.errors import OneLineWarning, UserInputError
from wrinklefree.files import staged_file

# what a finished or started run leaves in its folder (a rerun must not silently mix with it)
RUN_MARKERS = ("checkpoints", "final", "report.json")
# everything ``overwrite=true`` clears: the run's own outputs, never anything else in the folder
RUN_OUTPUTS = (*RUN_MARKERS, "logs", "tensorboard", "loss.png", "config.yaml")
LOCK_NAME = "wf-train.lock"
STEP_FILE = re.compile(r"^step-(\d+)\.ckpt$")


# ---- one run per folder -------------------------------------------------------------------
def existing_run_markers(run_dir: Path) -> list[str]:
    """The names in ``run_dir`` showing that it already holds a run (empty folders don't)."""
    found = []
    for name in RUN_MARKERS:
        path = run_dir / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            found.append(name)
    return found


def refuse_or_clear_existing_run(run_dir: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse a fresh run into a folder that holds one, or clear the old run's outputs when
    ``overwrite`` is set. A resume (``auto`` or a path) continues the folder and passes."""
    if resume:
        return
    found = existing_run_markers(run_dir)
    if not found:
        return
    if not overwrite:
        raise UserInputError(
            f"run_dir {run_dir} already holds a run ({', '.join(found)}): continue it with "
            f"resume=auto, start a new one with a different run_dir=..., or replace it with "
            f"overwrite=true")
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# ---- a lock against two live runs ---------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), to tell a reused PID from the lock holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 (starttime), after the command name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``<run_dir>/wf-train.lock`` holding the PID and host of the run using the folder.

    A second run refuses while the holder lives; a lock left by a dead process on this host (kill
    -9, power loss) is taken over with a warning. Released on exit, exceptions included.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(),
                      "start": _process_start(os.getpid())}
        # the folders this launch creates, deepest first: removed again if it leaves them empty
        self.created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staged = self.path.with_name(f".{LOCK_NAME}.{os.getpid()}")
        staged.write_text(json.dumps(self.owner))
        try:
            while True:
                try:
                    os.link(staged, self.path)  # atomic: creates the lock with its content or fails
                    return self
                except FileExistsError:
                    self._clear_stale_or_refuse()
        finally:
            staged.unlink(missing_ok=True)

    def _clear_stale_or_refuse(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (OSError, ValueError):
            holder = {}
        pid, host = holder.get("pid"), holder.get("host")
        if host == self.owner["host"] and isinstance(pid, int) and not self._holds(holder):
            warnings.warn(f"taking over the stale lock {self.path} of process {pid}, which is no "
                          "longer running (the previous run was killed)", OneLineWarning,
                          stacklevel=2)
            self.path.unlink(missing_ok=True)
            return
        raise UserInputError(
            f"run_dir {self.path.parent} is in use by another `wf train` (pid {pid} on host "
            f"{host}): wait for it to finish or use a different run_dir=...; if no such run is "
            f"alive, delete {self.path}")

    @staticmethod
    def _holds(holder: dict[str, Any]) -> bool:
        pid = holder["pid"]
        if not _alive(pid):
            return False
        start = holder.get("start")
        return start is None or _process_start(pid) in (None, start)

    def __exit__(self, *exc_info) -> None:
        try:
            if json.loads(self.path.read_text()).get("pid") == self.owner["pid"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass
        for folder in self.created:  # a failed launch leaves no empty run folder behind
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote into it) or gone: keep the rest
                break


# ---- atomic checkpoints -------------------------------------------------------------------
def _drop_from_page_cache(fd: int) -> None:
    """Tell the kernel the (fsynced) file's pages will not be read again by this process.

    A checkpoint is GBs that only a later run reads. Left cached, it fills free memory, and every
    page a training step then faults in (its large activations are fresh mmaps) first makes the
    kernel reclaim cache: on a 2-core VM the steps after each save ran ~25 % slower for ~100 steps
    (docs/benchmarks.md). Best effort: not every platform has ``posix_fadvise``.
    """
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:  # a filesystem that refuses the hint: the checkpoint is saved all the same
            pass


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` staged beside ``path`` and renamed over it (:func:`staged_file`): a full
    disk or a kill never leaves a partial ``path`` or a copy in ``$TMPDIR``."""
    with staged_file(path) as staged, open(staged, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
        _drop_from_page_cache(f.fileno())


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic same-folder saves and safe (``weights_only``)
    loads: a checkpoint given to ``resume=`` is never unpickled as arbitrary code."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if not Path(path).exists():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return torch.load(path, map_location=map_location, weights_only=True)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's periodic checkpoints, except the last step's: that one waits for
    :meth:`save_last_step`, which the trainer calls once ``final/`` is written. Why: a checkpoint
    (weights and optimizer state, ~3x ``final/``) that fills the disk must not cost the run its
    model; written after ``final/``, it fails alone and the earlier checkpoints stay."""

    def _should_skip_saving_checkpoint(self, trainer) -> bool:
        # every hook that saves (batch end, validation end, epoch end) asks this first
        return (trainer.global_step >= trainer.max_steps
                or super()._should_skip_saving_checkpoint(trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        """Nothing: Lightning would write last.ckpt here, before ``final/``."""

    def save_last_step(self, trainer) -> None:
        """Save the last step's checkpoint and point ``last.ckpt`` at it, as the periodic save
        would have (keep_last pruning included). Collective: every rank calls it."""
        if self._last_global_step_saved == trainer.global_step:
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)


def is_intact(path: Path) -> bool:
    """Whether a checkpoint file reads back whole: a complete zip whose every member matches its
    CRC (no unpickling; a truncated or half-copied file fails). Sharded (folder) checkpoints are
    trusted as they are."""
    if path.is_dir():
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def candidate_checkpoints(folder: Path) -> list[Path]:
    """``last.ckpt`` first, then ``step-N.ckpt`` newest first: the order resume tries them in."""
    steps = sorted(((int(m.group(1)), p) for p in folder.glob("step-*.ckpt")
                    if (m := STEP_FILE.match(p.name))), reverse=True)
    last = folder / "last.ckpt"
    return ([last] if last.exists() else []) + [p for _, p in steps]


def latest_intact_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint in ``folder`` that reads back whole, warning about each damaged
    one skipped (e.g. truncated by a kill during a copy); None when there is none at all."""
    candidates = candidate_checkpoints(folder)
    for path in candidates:
        if is_intact(path):
            return path
        warnings.warn(f"checkpoint {path} is damaged (incomplete or corrupt); skipping it",
                      OneLineWarning, stacklevel=2)
    if candidates:
        raise UserInputError(f"no intact checkpoint in {folder} (tried "
                           f"{', '.join(p.name for p in candidates)}): start over with "
                           "overwrite=true or give resume=path/to/a/good.ckpt")
    return None
