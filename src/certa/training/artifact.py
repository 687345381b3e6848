"""Trained artifacts: a directory a user loads with one call.

Layout::

    adapter_config.json, adapter_model.safetensors   PEFT adapter (LoRA + trained token rows)
    tokenizer files                                    the tokenizer with the added tokens
    certa.json                                         method, base model, method facts, config,
                                                       training data, versions, metrics

Loading needs torch, transformers and peft only (no accelerate, no sklearn),
so an artifact trained on a GPU box serves on a laptop.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError, ModelLoadError
from ..textfiles import read_json_object

if TYPE_CHECKING:
    from ..models import LoadedModel
    from .objective import Objective, TrainConfig

ARTIFACT_FILE = "certa.json"
FORMAT_VERSION = 1
_VERSIONED = ("certa", "torch", "transformers", "peft", "accelerate")


def is_artifact(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory holding a ``certa.json``."""
    return (Path(path) / ARTIFACT_FILE).is_file()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def save_artifact(lm: LoadedModel, objective: Objective, config: TrainConfig,
                  out_dir: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Write the adapter, the tokenizer and ``certa.json`` for ``lm`` (a PEFT-wrapped model) to ``out_dir``.

    ``extra`` goes into ``certa.json`` as is (``data`` summary, ``metrics``, ...).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = lm.model
    if not hasattr(model, "peft_config"):
        raise InputError(f"save_artifact: model {lm.name!r} has no adapter attached; train it first")
    # The trained token rows live in the adapter; the full resized embedding matrix would be
    # hundreds of MB and is rebuilt from the base model on load.
    model.save_pretrained(out, save_embedding_layers=False)
    lm.tokenizer.save_pretrained(out)
    info = {
        "format": FORMAT_VERSION,
        "method": objective.method,
        "base_model": lm.name,
        "base_model_path": _local_path(lm.name),
        "vocab_size": len(lm.tokenizer),
        "method_info": objective.artifact_info(),
        "train_config": config.model_dump(),
        "versions": package_versions(),
        **(extra or {}),
    }
    (out / ARTIFACT_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    return out


def _local_path(spec: str) -> str | None:
    """The absolute path of a local base model, so an artifact loads from any working directory."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else None


def read_artifact_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse ``certa.json`` of an artifact directory; errors name the file."""
    file = Path(path) / ARTIFACT_FILE
    if not file.is_file():
        raise ModelLoadError(f"{path}: not a certa artifact (no {ARTIFACT_FILE})")
    info = read_json_object(file)  # UTF-8 (BOM accepted); bad bytes or JSON name file and line
    for key in ("method", "base_model"):
        if key not in info:
            raise InputError(f"{file}: missing field {key!r}")
    return info


def load_artifact(path: str | os.PathLike[str], device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a trained artifact: its base model, its tokenizer and its adapter, ready to score.

    The base is loaded through :func:`certa.models.load_model` (so the bundled
    GGUF default works), its embeddings are resized to the artifact's
    tokenizer and the adapter (with the trained token rows) is attached.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    from ..models import load_model

    path = Path(path)
    info = read_artifact_info(path)
    base_spec = info.get("base_model_path") or info["base_model"]
    if not Path(base_spec).exists():
        base_spec = info["base_model"]
    base = load_model(base_spec, device=device, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = base.tokenizer.pad_token
    resize_embeddings(base.model, len(tokenizer))
    try:
        model = PeftModel.from_pretrained(base.model, path)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: could not attach the adapter ({exc})") from None
    model.eval()
    return dataclasses.replace(base, model=model, tokenizer=tokenizer, name=str(path), artifact=info)


def resize_embeddings(model: torch.nn.Module, vocab_size: int) -> list[int]:
    """Grow the embedding matrix to ``vocab_size``; new rows are the mean of the old rows.

    Deterministic (transformers' default samples the new rows at random) and
    harmless: with the adapter off, the mean row's logit is tiny, so the base
    model's answers do not change. Returns the ids of the new rows.
    """
    old = model.get_input_embeddings().weight.shape[0]
    if vocab_size <= old:
        return []
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    new_ids = list(range(old, vocab_size))
    with torch.no_grad():
        for matrix in _embedding_matrices(model):
            matrix[old:] = matrix[:old].mean(dim=0, keepdim=True)
    return new_ids


def _embedding_matrices(model: torch.nn.Module) -> list[torch.Tensor]:
    inp = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    return [inp] if out is None or out.weight is inp else [inp, out.weight]
