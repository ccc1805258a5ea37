"""The llama.cpp probe turns a crash of the optional binding into a skip with its reason."""

from __future__ import annotations

import subprocess
import sys

from llamacpp_probe import crash_reason


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


def test_a_child_killed_by_sigill_gives_the_reason_and_the_portable_rebuild():
    done = _run("import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    reason = crash_reason(done.returncode, done.stderr)
    assert reason is not None and "SIGILL" in reason and "-DGGML_NATIVE=OFF" in reason


def test_an_import_error_is_a_reason_and_a_clean_run_is_none():
    done = _run("import llama_cpp_that_does_not_exist")
    assert "does not import" in crash_reason(done.returncode, done.stderr)
    assert crash_reason(0, "") is None
    assert crash_reason(1, "ValueError: bad gguf") is None  # a Python error: the tests show it


def test_a_llamacpp_that_crashes_skips_its_tests_and_the_suite_survives(tmp_path):
    """A stand-in ``llama_cpp`` that dies with SIGILL as soon as it is used (as a library built
    for another CPU does): the parity module is skipped with the reason, pytest exits 0."""
    import os
    from pathlib import Path

    fake = tmp_path / "site" / "llama_cpp"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import os, signal\n\nclass Llama:\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        os.kill(os.getpid(), signal.SIGILL)\n")
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         str(here / "test_llamacpp.py")],
        capture_output=True, text=True, timeout=300, env=env, cwd=here.parents[1])
    assert done.returncode in (0, 5), done.stdout[-2000:]  # 5: everything skipped
    assert "SIGILL" in done.stdout and "skipped" in done.stdout, done.stdout[-2000:]
