"""``load_model``: one call for whatever the user names, a base model or a trained artifact."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .artifact import is_artifact, is_export, load_artifact, load_export
from .bundled import bundled_artifact_path, is_bundled
from .loaded import LoadedModel
from .sources import load_base_model


def load_model(
    spec: str | os.PathLike[str] = "default",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    allow_pickle: bool | None = None,
    trust_remote_code: bool | None = None,
) -> LoadedModel:
    """Load a causal LM and tokenizer by name, path or Hub id.

    Args:
        spec: ``"default"`` / ``"smollm2-135m"`` (the bundled SmolLM2-135M-Instruct), ``"gemma3-270m"``
            (the base model Gemma-3-270M, assembled from its chunk packages on first use),
            a built-in trained artifact (``"default-grace"``, ``"default-conftuner"``; see
            :func:`builtin_model_names`), a ``.gguf`` file, a local HF model directory, a trained
            certa artifact directory (contains ``certa.json``), a model written by ``certa export`` (answers
            never contain ``<CNF>``; generation reads its GrACE confidence as its ``certa.json`` says), or a
            Hugging Face Hub id.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... Default: CUDA when available, else CPU.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"float64"`` or one of those ``torch.dtype`` s
            (anything else, float8 included, is an :class:`~certa.errors.InputError`).
            Default: bfloat16 on CUDA, float32 on CPU.
        allow_pickle: also read weights stored as a Python pickle (``pytorch_model.bin``), which can
            run code when read. Default: no (safetensors only), unless ``CERTA_ALLOW_PICKLE=1``
            (what ``certa --allow-pickle`` sets).
        trust_remote_code: run Python code shipped with the model (``auto_map`` in its config).
            Default: never, unless ``CERTA_TRUST_REMOTE_CODE=1`` (``certa --trust-remote-code``).

    Raises:
        ModelLoadError: the path does not exist, is not a model, holds only pickle weights, needs
            its own code, or the Hub id cannot be loaded; a built-in artifact not in this install.
        MissingDependencyError: the package shipping a built-in model is not installed.
    """
    given = {"allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code}
    policy = {k: v for k, v in given.items() if v is not None}  # not given: the environment decides
    path = Path(str(spec)).expanduser()
    if is_artifact(path):
        return load_artifact(path, device=device, dtype=dtype, **policy)
    if is_export(path):
        return load_export(path, device=device, dtype=dtype, **policy)
    if not path.exists() and is_bundled(str(spec)):
        return load_artifact(bundled_artifact_path(str(spec)), device=device, dtype=dtype, **policy)
    return load_base_model(str(spec), device=device, dtype=dtype, **policy)

