"""The exception library code raises for an *expected* failure: a bad input the user can fix.

``wf`` prints a :class:`UserInputError` as one line (``wf <cmd>: error: ...``) and exits with
status 2, while an unexpected exception keeps its traceback. The message names the bad input
and says what to do instead. It subclasses ``ValueError`` so callers that already catch
``ValueError`` keep working.

Config dataclasses declare the range of a field next to it (:func:`in_range` metadata), and
:func:`check_ranges` turns a value outside it into such a one-line error.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import functools
import math
import os
import typing
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class UserInputError(ValueError):
    """A failure caused by an input (argument, config value, file) that the user can fix."""


class OneLineWarning(UserWarning):
    """A warning about the user's run or files that ``wf`` prints as one line (``wf <cmd>:
    warning: ...``): Python's default format adds the warning's source line, noise to a user."""


class MissingFieldError(UserInputError, KeyError):
    """A record lacks a required field; also a KeyError for callers that catch that."""

    __str__ = BaseException.__str__  # KeyError would quote the whole message


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate to ``name``, or ``""`` if none is
    close: appended to an "unknown key" message so a typo's fix is one glance away."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def check_positions(tokens: int, limit: int | None, what: str, fix: str,
                    key: str = "max_position_embeddings") -> None:
    """Refuse ``tokens`` positions beyond a model's context ``limit`` (its config ``key``): past
    it positions are extrapolated and the output silently degrades, or the runtime fails."""
    if limit is not None and tokens > limit:
        raise UserInputError(f"{what} = {tokens} tokens exceeds the model's context of {limit} "
                             f"positions ({key}); {fix}")


# the OS errors of a write the user can fix, and what to do about each
_FULL = "free disk space or write to another disk"
_DENIED = "choose a writable location (or fix its permissions)"
WRITE_ERRNOS = {errno.ENOSPC: _FULL, errno.EDQUOT: _FULL, errno.EROFS: _DENIED,
                errno.EACCES: _DENIED, errno.EPERM: _DENIED}
# torch.save and safetensors wrap the OS error in their own types: recognised by its text
_WRITE_TEXTS = {"No space left on device": errno.ENOSPC, "os error 28": errno.ENOSPC,
                "Disk quota exceeded": errno.EDQUOT, "Read-only file system": errno.EROFS,
                "Permission denied": errno.EACCES, "unexpected pos": errno.ENOSPC,
                "file write failed": errno.ENOSPC,
                # numpy's short write (ndarray.tofile, e.g. the GGUF writer) has no errno
                " requested and ": errno.ENOSPC}


def write_failure(err: BaseException) -> tuple[str, str] | None:
    """(reason, fix) when ``err`` is a failed file write or access the user can fix (read-only
    or forbidden folder, full disk), else None: an unexpected error keeps its traceback."""
    code = err.errno if isinstance(err, OSError) else None
    if code not in WRITE_ERRNOS and (isinstance(err, (OSError, RuntimeError))
                                     or type(err).__name__ == "SafetensorError"):
        code = next((c for text, c in _WRITE_TEXTS.items() if text in str(err)), None)
    if code not in WRITE_ERRNOS:
        return None
    return os.strerror(code).lower(), WRITE_ERRNOS[code]


# ------------------------------------------------------------------ ranges next to config fields

RANGE = "range"  # dataclass field metadata key: (test, what the value must be)


def in_range(test: Callable[[Any], bool], requirement: str) -> dict[str, Any]:
    """Field metadata declaring the values a config field takes, e.g. ``batch_size: int =
    field(default=4, metadata=at_least(1))``; :func:`check_ranges` enforces it."""
    return {RANGE: (test, requirement)}


def at_least(low: float, note: str = "", kind: str = "an integer") -> dict[str, Any]:
    """``in_range`` for ``value >= low``; ``note`` says what the value means."""
    return in_range(lambda v: v >= low, f"{kind} >= {low}" + (f" {note}" if note else ""))


def positive(note: str = "") -> dict[str, Any]:
    """``in_range`` for a finite number > 0."""
    return in_range(lambda v: v > 0 and math.isfinite(v),
                    "a number > 0" + (f" {note}" if note else ""))


def unit_interval(note: str = "") -> dict[str, Any]:
    """``in_range`` for a number in [0, 1]."""
    return in_range(lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]" + (f" {note}" if note else ""))


def ranged_fields(schema: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """(dotted key, field) of every field of the dataclass ``schema`` that declares a range,
    nested dataclass fields included. A nested config with a ``validate`` method of its own
    (``DataConfig``) checks its own ranges there, so it is not entered."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        if RANGE in f.metadata:
            yield key, f
        nested = hints[f.name]
        if (isinstance(nested, type) and dataclasses.is_dataclass(nested)
                and not hasattr(nested, "validate")):
            yield from ranged_fields(nested, f"{key}.")


def check_ranges(config: Any, schema: type | None = None, prefix: str = "") -> None:
    """Raise :class:`UserInputError` naming the key, the value, the range and an example for
    the first field of ``config`` outside the range its schema declares. ``config``: a
    dataclass instance, or an OmegaConf node of the dataclass ``schema`` (attribute access);
    ``prefix``: where ``config`` sits in a larger config (``"data."``)."""
    for key, f in ranged_fields(schema or type(config)):
        value = functools.reduce(getattr, key.split("."), config)
        test, requirement = f.metadata[RANGE]
        if not test(value):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            raise UserInputError(f"{prefix}{key}={value} is out of range: it must be "
                                 f"{requirement}; e.g. {prefix}{key}={default}")
