"""Fixtures for the export tests (helpers live in tiny_bitnet.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_bitnet import save_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny converted Llama with SubLN (llama.cpp's bitnet architecture)."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")
