"""Writing outputs so that a failure or a kill never leaves a partial file in their place.

Why: a checkpoint or an export written in place is truncated by a full disk or a kill, and
replaces the earlier good file while doing so. Here a file is written beside its target under a
hidden temporary name (same folder = same filesystem) and renamed over it once whole: readers see
the old file or the new one, never a part. A failure removes the temporary file; a kill leaves
only a hidden ``.<name>.<pid>.tmp`` (:func:`remove_orphans` deletes those).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def staged_name(path: Path) -> Path:
    """The hidden temporary path beside ``path`` that a staged write goes to."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; when the block ends without an error the
    file is fsynced and renamed over ``path`` (atomic), else it is removed and ``path`` is left
    as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = staged_name(path)
    try:
        yield staged
        _fsync_file(staged)
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def staged_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` to write files into; when the block ends without
    an error each file is fsynced and renamed into ``path`` (created if needed; other files in
    it are kept), else the temporary folder is removed and ``path`` is left as it was. Each file
    is replaced whole; the renames need no free space, so a full disk fails before any of them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = staged_name(path)
    try:
        staged.mkdir()
        yield staged
        files = sorted(p for p in staged.rglob("*") if p.is_file())
        for file in files:
            _fsync_file(file)
        for file in files:
            target = path / file.relative_to(staged)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
        fsync_dir(path)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def remove_orphans(folder: Path) -> None:
    """Delete what killed staged writes left in ``folder`` (call it holding the folder's lock)."""
    for staged in folder.glob(".*.tmp"):
        if staged.is_dir():
            shutil.rmtree(staged, ignore_errors=True)
        else:
            staged.unlink(missing_ok=True)
