"""Import the optional llama.cpp binding only after a child process has shown it runs here.

A llama-cpp-python built for another CPU (``-march=native`` on an AVX-512 / AMX machine, then
run on one without) dies with SIGILL on its first call and would take the whole pytest process
with it. :func:`require_llamacpp` therefore first loads llama.cpp and evaluates a tiny ternary
GGUF in a child process; if that child dies by a signal, the calling test module is skipped with
the reason and the portable rebuild command instead.
"""

from __future__ import annotations

import functools
import importlib.util
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

import pytest

PORTABLE_REBUILD = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DMTMD_BUILD=OFF" .venv/bin/pip install '
    "--force-reinstall --no-cache-dir -r requirements-llamacpp.txt"
)
# load a ternary (TQ2_0) GGUF and evaluate a few tokens: the code paths the parity tests use
PROBE = """
import sys
import llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=32, verbose=False)
llm.eval(llm.tokenize(b"In the beginning", add_bos=False))
llm.close()
"""


def crash_reason(returncode: int, stderr: str) -> str | None:
    """Why llama.cpp cannot be used, from the probe's exit status (None: it can)."""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return (f"llama.cpp died with {name} evaluating a tiny GGUF in a child process (a build "
                f"for another CPU?); rebuild it portably: {PORTABLE_REBUILD}")
    if returncode and ("ImportError" in stderr or "ModuleNotFoundError" in stderr):
        return f"llama_cpp does not import: {stderr.strip().splitlines()[-1]}"
    return None  # runs (or fails in Python: the tests then show that error themselves)


@functools.cache
def _probe() -> str | None:
    from tiny_bitnet import save_tiny

    from wrinklefree.export.gguf import export_gguf
    from wrinklefree.models import load_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_tiny(Path(tmp) / "model")
        path = Path(tmp) / "probe.gguf"
        export_gguf(load_model(str(folder)), path, folder, weight_type="tq2_0")
        done = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True,
                              text=True, timeout=300)
    return crash_reason(done.returncode, done.stderr)


def require_llamacpp() -> ModuleType:
    """``llama_cpp``, or skip the calling test module (not installed, or crashes here)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (optional: requirements-llamacpp.txt)",
                    allow_module_level=True)
    reason = _probe()
    if reason is not None:
        warnings.warn(reason, stacklevel=2)  # in the warnings summary even without -rs
        pytest.skip(reason, allow_module_level=True)
    import llama_cpp

    return llama_cpp
