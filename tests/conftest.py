from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny import build_tiny_model  # noqa: E402

# Lists (CERTA_DEPRECATIONS=report, the default) or fails on (=error) deprecated APIs certa's own code uses.
pytest_plugins = ["deprecation_guard"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight chat model saved as an ordinary HF directory."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    """The tiny model loaded through certa's own loader (CPU, float32)."""
    from certa.models import load_model

    return load_model(str(tiny_model_dir), device="cpu")
