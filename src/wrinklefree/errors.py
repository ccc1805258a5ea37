"""The exception library code raises for an *expected* failure: a bad input the user can fix.

``wf`` prints a :class:`UserInputError` as one line (``wf <cmd>: error: ...``) and exits with
status 2, while an unexpected exception keeps its traceback. The message names the bad input
and says what to do instead. It subclasses ``ValueError`` so callers that already catch
``ValueError`` keep working.
"""

from __future__ import annotations

import difflib
import errno
import os
from collections.abc import Iterable


class UserInputError(ValueError):
    """A failure caused by an input (argument, config value, file) that the user can fix."""


class MissingFieldError(UserInputError, KeyError):
    """A record lacks a required field; also a KeyError for callers that catch that."""

    __str__ = BaseException.__str__  # KeyError would quote the whole message


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate to ``name``, or ``""`` if none is
    close: appended to an "unknown key" message so a typo's fix is one glance away."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


# the OS errors of a write the user can fix, and what to do about each
_FULL = "free disk space or write to another disk"
_DENIED = "choose a writable location (or fix its permissions)"
WRITE_ERRNOS = {errno.ENOSPC: _FULL, errno.EDQUOT: _FULL, errno.EROFS: _DENIED,
                errno.EACCES: _DENIED, errno.EPERM: _DENIED}
# torch.save and safetensors wrap the OS error in their own types: recognised by its text
_WRITE_TEXTS = {"No space left on device": errno.ENOSPC, "os error 28": errno.ENOSPC,
                "Disk quota exceeded": errno.EDQUOT, "Read-only file system": errno.EROFS,
                "Permission denied": errno.EACCES, "unexpected pos": errno.ENOSPC,
                "file write failed": errno.ENOSPC}


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
