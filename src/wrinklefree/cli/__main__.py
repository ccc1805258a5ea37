"""``python -m wrinklefree.cli``: the same as ``wf``."""

from wrinklefree.cli import main

main()
