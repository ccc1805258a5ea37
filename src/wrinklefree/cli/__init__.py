"""The ``wf`` command line: one sub-command per stage of the pipeline.

Each sub-command is a small ``cmd_<name>(args)`` function beside its ``<name>_parser``, grouped by
what they work on: :mod:`.model` (convert, info, export), :mod:`.runs` (train, bench, plot),
:mod:`.decode` (generate, chat, serve), :mod:`.evaluation` (eval). The work itself lives in the
library modules, so everything the CLI does is also a Python call. ``wf train`` is the exception:
it hands its arguments to Hydra (override syntax ``key=value``). This module assembles the parser
and turns an expected failure into one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from wrinklefree.allocator import keep_freed_memory
from wrinklefree.cli.decode import chat_parser, generate_parser, serve_parser
from wrinklefree.cli.evaluation import eval_parser
from wrinklefree.cli.model import convert_parser, export_parser, info_parser
from wrinklefree.cli.runs import bench_parser, plot_parser, train_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wf",
        description="wrinklefree: turn a Hugging Face causal LM into a 1.58-bit BitNet model, "
        "train it, export it, run it.",
    )
    parser.add_argument("--version", action="version", version=f"wf {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (convert_parser, info_parser, train_parser, bench_parser, plot_parser,
                generate_parser, chat_parser, serve_parser, export_parser, eval_parser):
        add(sub)  # in this order in `wf --help`
    return parser


def package_version() -> str:
    """The installed wrinklefree version (``wf --version``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wrinklefree")
    except PackageNotFoundError:
        return "(version unknown: not installed; pip install -e .)"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    warnings.formatwarning = one_line_warnings(args.command)
    keep_freed_memory()
    try:
        args.func(args)
    except Exception as err:
        message = expected_failure(err, args)
        if message is None:
            raise  # a bug, not a bad input: keep the traceback
        print(f"wf {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from err


_PYTHON_FORMAT = warnings.formatwarning


def one_line_warnings(command: str):
    """A ``warnings.formatwarning`` that prints wrinklefree's own warnings about the user's run
    (:class:`~wrinklefree.errors.OneLineWarning`) as ``wf <cmd>: warning: ...``, like errors;
    any other warning keeps Python's format (its source line helps whoever reports it)."""
    from wrinklefree.errors import OneLineWarning

    def format_warning(message, category, filename, lineno, line=None) -> str:
        if issubclass(category, OneLineWarning):
            return f"wf {command}: warning: {message}\n"
        return _PYTHON_FORMAT(message, category, filename, lineno, line)

    return format_warning


def expected_failure(err: BaseException, args: argparse.Namespace) -> str | None:
    """The one-line message for a failure the user can fix, naming the input and the fix; None
    for anything else. Library code raises UserInputError for bad inputs (ValueError is the
    older convention for the same); a missing file and an unwritable or full output folder are
    recognised here, where the output the command writes is known."""
    from wrinklefree.errors import write_failure

    write = write_failure(err)
    if write is not None:
        reason, fix = write
        target = getattr(err, "filename", None) or _output_of(args)
        return f"cannot write {target}: {reason}; {fix}"
    if isinstance(err, FileNotFoundError | NotADirectoryError | IsADirectoryError):
        if err.filename is not None:  # a raw OS error: "[Errno 2] ..." says less than this
            return f"{err.filename}: {err.strerror.lower()}; check the path"
        return str(err)
    if isinstance(err, ValueError):  # UserInputError included
        return str(err)
    return None


def _output_of(args: argparse.Namespace) -> str:
    """What the command writes, to name it when a write fails without a file name."""
    if args.command == "train":
        run_dirs = [o.split("=", 1)[1] for o in args.overrides if o.startswith("run_dir=")]
        return run_dirs[-1] if run_dirs else "the run folder (run_dir)"
    if args.command == "plot":
        return args.out or f"{args.run_dir}/loss.png"
    for name in ("json", "out"):
        if getattr(args, name, None):
            return str(getattr(args, name))
    return "the output"
