"""Shared fixtures: offline environment and a tiny random Llama (helpers in tiny_models.py)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from tiny_models import tiny_model  # noqa: E402
from training_fixtures import (  # noqa: E402, F401
    text_files,
    tiny_config,
    tiny_overrides,
    tiny_source,
)


@pytest.fixture
def llama():
    return tiny_model("llama")
