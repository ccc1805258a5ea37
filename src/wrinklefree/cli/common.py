"""What the command modules share: the help text for a model source and an integer flag type."""

from __future__ import annotations

import argparse

EMBEDDED_HELP = (
    "'smollm2' (the embedded SmolLM2-135M-Instruct), a .gguf file, a HF folder or hub id"
)


def at_least(low: int):
    """An argparse type: an integer >= ``low``; anything else is refused at parse time, naming
    the argument (``--seq-len 1`` would divide by zero only after the model loaded)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small; use an integer >= {low}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse
