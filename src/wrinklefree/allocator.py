"""Keep freed tensor memory inside the process, so a CPU training step stops page-faulting.

Why: glibc's malloc hands every block above its mmap threshold (adaptive, 128 KiB up to 32 MiB)
back to the kernel on ``free``, and a training step frees and re-allocates hundreds of MB of
activations, gradients and fake-quantized weight copies. Each re-allocation then touches fresh
pages: on SmolLM2-135M, fake-quantizing the 106 M linear weights costs 0.20 s per step, of which
0.13 s is page faults (measured, 2 threads); any out-of-place op on all weights costs the same.
Serving blocks up to 32 MiB from the heap and keeping up to 1 GiB of freed heap removes them.

This is process tuning, not model code: :func:`wrinklefree.cli.main` calls it once. It does
nothing off glibc (macOS, musl) or when the user tunes malloc through ``MALLOC_*`` variables.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters, glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum on 64-bit (HEAP_MAX / 2): every weight copy fits
TRIM_THRESHOLD = 2**30  # freed heap kept before it is returned to the kernel
TOP_PAD = 256 * 2**20  # heap grown in steps this large, not page by page


def keep_freed_memory() -> bool:
    """Tune glibc malloc to reuse freed memory; True when it was applied."""
    if any(key.startswith("MALLOC_") for key in os.environ):
        return False  # the user's own tuning wins
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                (_M_TOP_PAD, TOP_PAD))
    return all(mallopt(param, value) == 1 for param, value in settings)
