"""Trained artifacts: a directory a user loads with one call, and attaches by name to a shared base.

Layout::

    adapter_config.json, adapter_model.safetensors   PEFT adapter (LoRA + trained token rows)
    tokenizer files                                    the tokenizer with the added tokens
    certa.json                                         method, base model, method facts, config,
                                                       training data, versions, metrics
    README.md                                          the model card

Loading needs torch, transformers and peft only (no accelerate, no sklearn),
so an artifact trained on a GPU box serves on a laptop. Several artifacts of
the same base share one copy of its weights: :func:`attach_artifacts` adds each
as a named PEFT adapter and returns a view per artifact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, ModelLoadError, one_line
from ..textfiles import read_json_object
from ..versions import package_versions
from .adapters import is_peft_model, quiet_peft_wrapping, unwrap
from .card import write_model_card
from .loaded import LoadedModel
from .sources import load_base_model
from .vocab import resize_embeddings

log = logging.getLogger(__name__)

ARTIFACT_FILE = "certa.json"
FORMAT_VERSION = 1
_WEIGHTS = "adapter_model.safetensors"


def is_artifact(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory holding a trained artifact's ``certa.json`` (not an exported model's)."""
    return (Path(path) / ARTIFACT_FILE).is_file() and not is_export(path)


def is_export(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a standard HF model exported by ``certa export`` (its ``certa.json`` has ``export``):
    :func:`load_export` loads it as the HF model it is and reads its confidence as its ``certa.json`` says."""
    try:
        return "export" in json.loads((Path(path) / ARTIFACT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def artifact_id(path: str | os.PathLike[str]) -> str:
    """A digest of an artifact's metadata and weights: whatever was computed with it is valid while it holds.

    A study's note of how the artifact's settings were chosen (``tuning``) is not part of it: extending a
    grid that the same point still wins changes the note, not the artifact.
    """
    digest = hashlib.sha1()
    for name in (ARTIFACT_FILE, _WEIGHTS):
        file = Path(path) / name
        if file.exists():
            digest.update(name.encode())
            digest.update(_without_tuning_note(file.read_bytes()) if name == ARTIFACT_FILE else file.read_bytes())
    return digest.hexdigest()


def _without_tuning_note(data: bytes) -> bytes:
    """``certa.json``'s content without a tuning note, in one canonical form (its bytes if it is not JSON)."""
    try:
        info = json.loads(data)
    except ValueError:
        return data
    if isinstance(info, dict):
        info = {k: v for k, v in info.items() if k != "tuning"}
    return json.dumps(info, sort_keys=True).encode()


def save_artifact(lm: LoadedModel, method: str, method_info: dict[str, Any], config: dict[str, Any],
                  out_dir: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Write the adapter, the tokenizer and ``certa.json`` for ``lm`` (a PEFT-wrapped model) to ``out_dir``.

    ``extra`` goes into ``certa.json`` as is (``data`` summary, ``metrics``, ...).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not is_peft_model(lm.model):
        raise InputError(f"save_artifact: model {lm.name!r} has no adapter attached; train it first")
    # The trained token rows live in the adapter; the full resized embedding matrix would be
    # hundreds of MB and is rebuilt from the base model on load.
    lm.model.save_pretrained(out, save_embedding_layers=False)
    lm.tokenizer.save_pretrained(out)
    info = {
        "format": FORMAT_VERSION,
        "method": method,
        "base_model": lm.name,
        "base_model_path": _local_path(lm.name),
        "vocab_size": len(lm.tokenizer),
        "base_config": base_config(lm.model),
        "base_fingerprint": base_fingerprint(lm.model),
        "method_info": method_info,
        "train_config": config,
        "versions": package_versions(),
        **(extra or {}),
    }
    text = json.dumps(info, indent=2, default=str) + "\n"
    (out / ARTIFACT_FILE).write_text(text, encoding="utf-8")
    write_model_card(out, json.loads(text))  # replaces the blank card PEFT's save_pretrained writes
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


def base_model_spec(info: dict[str, Any]) -> str:
    """What to load as an artifact's base: its recorded local path when it still exists, else its name."""
    path = info.get("base_model_path")
    return path if path and Path(path).exists() else info["base_model"]


def load_artifact(path: str | os.PathLike[str], device: str | torch.device | None = None,
                  dtype: torch.dtype | str | None = None, *, allow_pickle: bool | None = None,
                  trust_remote_code: bool | None = None) -> LoadedModel:
    """Load a trained artifact: its base model with the artifact attached as an adapter, ready to score.

    The adapter loads from safetensors only; ``allow_pickle`` and ``trust_remote_code`` apply to the base model.
    """
    info = read_artifact_info(path)
    base = load_base_model(base_model_spec(info), device=device, dtype=dtype, allow_pickle=allow_pickle,
                           trust_remote_code=trust_remote_code)
    return attach_artifacts(base, {info["method"]: path})[info["method"]]


def load_export(path: str | os.PathLike[str], device: str | torch.device | None = None,
                dtype: torch.dtype | str | None = None, *, allow_pickle: bool | None = None,
                trust_remote_code: bool | None = None) -> LoadedModel:
    """Load a model written by ``certa export``: a standard HF directory, read as its ``certa.json`` says.

    Answers never contain the tokens it lists in ``suppress_token_ids`` (``<CNF>``), and generation reads
    the GrACE confidence as the export describes it: P(<CNF>) after the answer, with the read-out LoRA
    (``readout-lora/``, suffix mode) switched on for that one step, the stored recalibration applied.
    """
    import dataclasses

    from peft import PeftModel

    path = Path(path)
    spec = read_json_object(path / ARTIFACT_FILE)
    lm = load_base_model(str(path), device=device, dtype=dtype, allow_pickle=allow_pickle,
                         trust_remote_code=trust_remote_code)
    suppress = [int(t) for t in spec.get("suppress_token_ids") or []]
    method = spec.get("method")
    info: dict[str, Any] = {
        "method": method, "base_model": spec.get("base_model"), "export": spec.get("export"), "path": str(path),
        "suppress_token_ids": suppress, "recalibration": spec.get("recalibration"),
        "method_info": {"token": spec.get("token"), "mode": spec.get("mode", "suffix"),
                        "readout": spec.get("readout", "step"),
                        "answers_use_adapter": bool(spec.get("answers_use_adapter", False))},
        "artifact_id": artifact_id(path),
    }
    if method != "grace":  # an export certa does not know how to read: still never answer with its tokens
        return dataclasses.replace(lm, artifact={"suppress_token_ids": suppress, "export": spec.get("export")})
    adapter = (spec.get("read") or {}).get("adapter")
    if not adapter:  # full / free modes: the read-out runs the exported weights as they are
        return dataclasses.replace(lm, artifact=info, artifact_id=info["artifact_id"])
    lora = path / str(adapter.get("path", "readout-lora"))
    _check_weights(lora)
    try:
        with quiet_peft_wrapping():
            lm.model = PeftModel.from_pretrained(lm.model, str(lora), adapter_name=method).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"{lora}: could not attach the export's read-out LoRA ({one_line(exc)})") from None
    # Answers run with the LoRA off; only the read-out step switches it on (as the export's certa.json says).
    lm.adapters[method] = info
    return lm.view(method)


def attach_artifacts(base: LoadedModel, artifacts: Mapping[str, str | os.PathLike[str]]) -> dict[str, LoadedModel]:
    """Attach each artifact to ``base`` as a PEFT adapter named by its key; return a view per artifact.

    ``base`` is updated in place: its weights are now the adapter-carrying model
    and ``base`` itself stays the base-model view (every adapter off when it
    runs), so baselines computed through it are unaffected. The artifacts'
    added tokens (GrACE's ``<CNF>``) are added to the shared tokenizer once;
    two artifacts that disagree on an added token's id are an error.
    """
    from peft import PeftModel

    infos = {name: read_artifact_info(path) for name, path in artifacts.items()}
    taken = sorted(set(artifacts) & set(base.adapters))
    if taken:
        raise InputError(f"an adapter named {taken[0]!r} is already attached to {base.name!r}")
    rows_attached = any(_trains_token_rows(Path(info["path"])) for info in base.adapters.values() if "path" in info)
    for name, path in artifacts.items():
        _check_weights(Path(path))
        _check_base(base, Path(path), infos[name])
        if rows_attached and not _trains_token_rows(Path(path)):
            raise InputError(f"{path}: an adapter without token rows cannot join adapters that train them "
                             "(a PEFT limitation); attach all artifacts in one attach_artifacts call")
        _add_artifact_tokens(base, Path(path))
    model = base.model
    # PEFT (0.21) cannot load an adapter without trainable token rows after one with them (it looks for
    # the first's rows in the second's weights), so the ones without rows are attached first.
    for name, path in sorted(artifacts.items(), key=lambda item: _trains_token_rows(Path(item[1]))):
        try:
            with quiet_peft_wrapping():
                if is_peft_model(model):
                    model.load_adapter(str(path), adapter_name=name)
                else:
                    model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(_attach_error(Path(path), infos[name], base.name, exc)) from None
        infos[name] = {**infos[name], "artifact_id": artifact_id(path), "path": str(path)}
    model.eval()
    base.model = model
    base.adapters.update(infos)
    return {name: base.view(name) for name in artifacts}


def _trains_token_rows(path: Path) -> bool:
    try:
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(config.get("trainable_token_indices") or config.get("peft_type") == "TRAINABLE_TOKENS")


def _check_weights(path: Path) -> None:
    """Adapters load from safetensors only: a pickle checkpoint can run code when it is read. A file whose
    header does not read (truncated, overwritten) is named in one line."""
    from safetensors import SafetensorError, safe_open

    if not (path / _WEIGHTS).is_file():
        found = sorted(p.name for p in path.glob("adapter_model.*"))
        detail = f"found {', '.join(found)}" if found else "no adapter weights at all"
        raise ModelLoadError(f"{path}: expected {_WEIGHTS} ({detail}); certa loads adapters from safetensors only")
    try:
        with safe_open(str(path / _WEIGHTS), framework="pt"):
            pass
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"{path / _WEIGHTS}: cannot read the adapter weights, is the file truncated or "
                             f"corrupt? ({one_line(exc)})") from None


#: The base model's shape facts an artifact records (``base_config`` in ``certa.json``) and checks on attach.
BASE_CONFIG_KEYS = ("model_type", "hidden_size", "num_hidden_layers")


def base_config(model: torch.nn.Module) -> dict[str, Any]:
    """The base model's architecture and shape: what an adapter's weights must fit."""
    config = _base_model(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    facts = {"model_type": getattr(config, "model_type", None),
             "hidden_size": getattr(text, "hidden_size", None),
             "num_hidden_layers": getattr(text, "num_hidden_layers", None)}
    return {k: v for k, v in facts.items() if v is not None}


def base_fingerprint(model: torch.nn.Module) -> list[float]:
    """Norms of a few rows of three of the base model's weight matrices (first, middle, last; embeddings and
    adapters aside): another checkpoint of the same shape differs, a float16/bfloat16 load of the same does not."""
    inner = _base_model(model)
    vocab = {_rows(m) for m in (inner.get_input_embeddings(), inner.get_output_embeddings()) if m is not None}
    skip = ("lora_", "token_adapter", "trainable_tokens", "modules_to_save")
    weights = [w for n, w in inner.named_parameters()
               if w.dim() == 2 and w.shape[0] not in vocab and not any(t in n for t in skip)]
    if not weights:
        return []
    values: list[float] = []
    try:
        with torch.no_grad():
            for w in (weights[0], weights[len(weights) // 2], weights[-1]):
                rows = torch.linspace(0, w.shape[0] - 1, steps=min(8, w.shape[0])).long().to(w.device)
                values += [round(float(v), 6) for v in w.index_select(0, rows).float().norm(dim=1).cpu()]
    except (RuntimeError, NotImplementedError):  # weights not in memory (offloaded to the meta device)
        return []
    return values


def _rows(layer: torch.nn.Module) -> int | None:
    """An embedding's or LM head's row count, read from the original layer: a PEFT token wrapper's ``weight``
    would build a merged copy of the whole matrix."""
    base = getattr(layer, "base_layer", layer)
    return getattr(base, "num_embeddings", None) or getattr(base, "out_features", None)


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    inner = unwrap(model)
    return inner.get_base_model() if is_peft_model(inner) and hasattr(inner, "get_base_model") else inner


def _check_base(base: LoadedModel, path: Path, info: dict[str, Any]) -> None:
    """Refuse, in one line, a base whose shape differs from the one the artifact was trained on (as its
    ``certa.json`` records it); warn when only the weights differ. Older artifacts record neither."""
    trained_on = info.get("base_model")
    recorded = info.get("base_config")
    if isinstance(recorded, dict):
        ours = base_config(base.model)
        for key in BASE_CONFIG_KEYS:
            if key in recorded and key in ours and recorded[key] != ours[key]:
                raise ModelLoadError(f"{path}: trained on base model {trained_on!r} ({key} {recorded[key]}), "
                                     f"but {base.name!r} has {key} {ours[key]}; load the artifact with its own base")
    recorded_print = info.get("base_fingerprint")
    readable = isinstance(recorded_print, list) and recorded_print and all(
        isinstance(v, (int, float)) for v in recorded_print)
    ours_print = base_fingerprint(base.model) if readable else []
    if ours_print:
        same = len(ours_print) == len(recorded_print) and all(
            abs(a - b) <= 2e-2 * max(abs(a), abs(b)) + 1e-6 for a, b in zip(ours_print, recorded_print, strict=True))
        if not same:
            log.warning("%s: the weights of base model %r differ from those of %r, which the artifact was trained "
                        "on; its confidences will not mean what they were trained to mean", path, base.name, trained_on)


def _attach_error(path: Path, info: dict[str, Any], base_name: str, exc: BaseException) -> str:
    """One line for an adapter that did not attach; for a shape mismatch, the base it was trained on."""
    text = str(exc)
    if "size mismatch" in text:
        first = next((line.strip() for line in text.splitlines() if "size mismatch" in line), "size mismatch")
        return (f"{path}: its adapter does not fit base model {base_name!r} ({one_line(first)}); it was probably "
                f"trained on another base: {info.get('base_model')!r}")
    return f"{path}: could not attach the adapter ({one_line(exc)})"




def _artifact_vocab(path: Path) -> dict[int, str]:
    """Token id -> token of the artifact's tokenizer; for a slim artifact (no tokenizer files, as bundled
    artifacts ship) only the tokens it added, from ``added_tokens`` in ``certa.json``."""
    added = read_artifact_info(path).get("added_tokens")
    if added is not None and not (path / "tokenizer.json").is_file():
        return {int(token_id): str(token) for token_id, token in added}
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    return {i: theirs.convert_ids_to_tokens(i) for i in range(len(theirs))}


def _add_artifact_tokens(base: LoadedModel, path: Path) -> None:
    """Extend the shared tokenizer (and embeddings) with the tokens the artifact's tokenizer added."""
    theirs = _artifact_vocab(path)
    ours = base.tokenizer
    size = max(theirs, default=-1) + 1
    for token_id in range(len(ours), size):
        if token_id not in theirs:
            raise InputError(f"{path}: lists added tokens from id {min(theirs)}, but the base model has "
                             f"{len(ours)} tokens; was it trained on another base model?")
        ours.add_tokens([theirs[token_id]], special_tokens=True)
    for token_id in sorted(t for t in theirs if t < len(ours)):
        if ours.convert_ids_to_tokens(token_id) != theirs[token_id]:
            raise InputError(f"{path}: its tokenizer differs from the base model's at id {token_id} "
                             f"({theirs[token_id]!r} vs {ours.convert_ids_to_tokens(token_id)!r}); "
                             "was it trained on another base model?")
    if is_peft_model(base.model):
        embeddings = base.model.get_base_model().get_input_embeddings().weight.shape[0]
        if embeddings < len(ours):
            raise InputError(f"{path}: adds tokens after adapters were attached; attach it together with the others")
    else:
        resize_embeddings(base.model, len(ours))
