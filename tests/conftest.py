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


@pytest.fixture(scope="session")
def varied_lm(tiny_model_dir, tmp_path_factory):
    """The tiny model with larger random weights (answers of varied lengths, some ending early)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from certa.models import load_model

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.3, generator=gen)
        model.get_input_embeddings().weight[tokenizer.eos_token_id] *= 2
    path = tmp_path_factory.mktemp("varied-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return load_model(str(path), device="cpu")
