"""``load_model``: one call for whatever the user names, a base model or a trained artifact."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .artifact import is_artifact, load_artifact
from .loaded import LoadedModel
from .sources import load_base_model


def load_model(
    spec: str | os.PathLike[str] = "default",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """Load a causal LM and tokenizer by name, path or Hub id.

    Args:
        spec: ``"default"`` / ``"smollm2-135m"`` (the bundled SmolLM2-135M-Instruct), ``"gemma3-270m"``
            (the base model Gemma-3-270M, assembled from its chunk packages on first use),
            a ``.gguf`` file, a local HF model directory, a trained certa artifact
            directory (contains ``certa.json``), or a Hugging Face Hub id.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... Default: CUDA when available, else CPU.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``.
            Default: bfloat16 on CUDA, float32 on CPU.

    Raises:
        ModelLoadError: the path does not exist, is not a model, or the Hub id cannot be loaded.
        MissingDependencyError: the package shipping a built-in model is not installed.
    """
    if is_artifact(Path(str(spec)).expanduser()):
        return load_artifact(Path(str(spec)).expanduser(), device=device, dtype=dtype)
    return load_base_model(str(spec), device=device, dtype=dtype)
