"""Copy trained artifacts into the package as built-in artifacts (the last step of ``make artifacts``).

``python -m certa.models.bundling runs/results-trained-check`` takes the output directory of a ``certa run``
study (``make artifacts`` runs ``configs/results-trained-check.yaml``), and for every built-in artifact
(:data:`~certa.models.bundled.BUNDLED_ARTIFACTS`) copies the artifact the study's tables used for its method (the
tuning search's winner in ``<study>/tuning/<method>/``, else ``<study>/artifacts/<method>/``) into
``src/certa/artifacts/<name>/`` as a slim
artifact: the adapter (its LoRA matrices in float16), ``adapter_config.json`` and ``certa.json`` (plus the tokens the method added
and the study's datasets), without checkpoints, logs or the base model's tokenizer. The study's
held-out metrics (its ``metrics.json``: pooled and per dataset, with bootstrap intervals) go into
the model card. The copy is written to a temporary directory and renamed into place, and the
total size of the built-in artifacts is checked against the 10 MB budget.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import CertaError, InputError
from ..textfiles import read_json_object
from . import bundled
from .card import add_evaluation_to_card, write_model_card

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def added_tokens(artifact_dir: Path) -> list[list[Any]]:
    """``[[id, token], ...]``: the tokens the artifact's tokenizer has beyond its base vocabulary."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(artifact_dir, trust_remote_code=False)
    return [[i, str(t)] for i, t in sorted(tokenizer.added_tokens_decoder.items()) if i >= tokenizer.vocab_size]


def bundle_artifact(src: str | os.PathLike[str], name: str, *, root: str | os.PathLike[str] | None = None,
                    study: Mapping[str, Any] | None = None, with_tokenizer: bool = False) -> Path:
    """Copy the artifact in ``src`` to ``root/name`` (default: the package's artifacts) as a slim artifact.

    ``study`` is a study's ``metrics.json``: its datasets go into ``certa.json``'s training data and
    its held-out metrics for the artifact's method into the model card. ``name`` must be a plain
    directory name: a ``/``, ``..`` or an absolute path cannot place the copy outside ``root``.
    """
    if not _NAME.fullmatch(name) or ".." in name:
        raise InputError(f"artifact name {name!r}: use lowercase letters, digits, '.', '_' and '-' only")
    source = Path(src)
    info = read_json_object(source / "certa.json")
    base = Path(root) if root is not None else bundled.ROOT
    target = base / name
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=f".{name}."))
    try:
        files = [*bundled.REQUIRED, *(bundled.TOKENIZER_FILES if with_tokenizer else ())]
        for file in files:
            if file == ADAPTER_WEIGHTS and (source / file).is_file():
                _copy_lora_as_half(source / file, tmp / file)
            elif file != "README.md" and (source / file).is_file():
                shutil.copy2(source / file, tmp / file)
        if not with_tokenizer:
            info["added_tokens"] = added_tokens(source)
        if study is not None:
            info["data"] = {**(info.get("data") or {}), **_training_datasets(study)}
        (tmp / "certa.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        write_model_card(tmp, {**info, "name": name})
        if study is not None:
            for dataset, split, n, metrics in study_metrics(study, info["method"]):
                add_evaluation_to_card(tmp, metrics, dataset=dataset, split=split, n=n, source="make artifacts")
        missing = [f for f in bundled.REQUIRED if not (tmp / f).is_file()]
        if missing:
            raise InputError(f"{source}: not a complete artifact (no {missing[0]})")
        # mkdtemp and the trainer's files are private (0700 / 0600); package data is read by every user.
        tmp.chmod(0o755)
        for file in tmp.iterdir():
            file.chmod(0o644)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _copy_lora_as_half(src: Path, dst: Path) -> None:
    """Copy adapter weights with the LoRA matrices in float16: half the size, as adapters usually ship.

    Loading casts them back to the model's dtype. Other tensors (GrACE's trained ``<CNF>`` row) keep their
    precision: the read-out depends on that row directly, while a LoRA update's rounding moves a
    confidence by about 1e-4.
    """
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src))
    save_file({name: t.to(torch.float16) if "lora_" in name and t.dtype == torch.float32 else t
               for name, t in tensors.items()}, str(dst), metadata={"format": "pt"})


def _training_datasets(study: Mapping[str, Any]) -> dict[str, Any]:
    sizes = (study.get("extra") or {}).get("datasets") or {}
    return {"datasets": sorted(sizes), "dataset_sizes": sizes}


def study_metrics(study: Mapping[str, Any], method: str) -> list[tuple[str, str, int | None, dict[str, Any]]]:
    """(dataset, split, n, metrics) of ``method`` in a study's ``metrics.json``: pooled, then each dataset."""
    found = []
    if method in (study.get("methods") or {}):
        found.append(("pooled", "test", study.get("n"), study["methods"][method]))
    for dataset, result in ((study.get("extra") or {}).get("by_dataset") or {}).items():
        if method in (result.get("methods") or {}):
            found.append((dataset, "test", result.get("n"), result["methods"][method]))
    return found


def study_artifact(study_dir: Path, study: Mapping[str, Any], method: str) -> Path:
    """The artifact a study's tables used for ``method``: its tuning search's winner, else ``artifacts/<method>``."""
    chosen = (((study.get("extra") or {}).get("tuning") or {}).get(method) or {}).get("artifact")
    return study_dir / "tuning" / method / Path(chosen).name if chosen else study_dir / "artifacts" / method


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m certa.models.bundling", description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="output directory of a `certa run` study (make artifacts: runs/results-trained-check)")
    parser.add_argument("--root", type=Path, default=None, help="where to write (default: the package's artifacts)")
    parser.add_argument("--with-tokenizer", action="store_true", help="also copy the tokenizer files")
    args = parser.parse_args(argv)
    try:
        study = read_json_object(args.study / "metrics.json")
        for name, entry in bundled.BUNDLED_ARTIFACTS.items():
            src = study_artifact(args.study, study, entry.method)
            if not (src / "certa.json").is_file():
                print(f"skip {name}: no trained {entry.method} in {src}")
                continue
            path = bundle_artifact(src, name, root=args.root, study=study, with_tokenizer=args.with_tokenizer)
            size = sum(p.stat().st_size for p in path.iterdir())
            print(f"{name}: {path} ({size / 1e6:.2f} MB)")
    except CertaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = bundled.bundled_size_bytes() if args.root is None else sum(
        p.stat().st_size for p in args.root.rglob("*") if p.is_file())
    print(f"built-in artifacts: {total / 1e6:.2f} MB of {bundled.SIZE_BUDGET_BYTES / 1e6:.0f} MB")
    return 0 if total <= bundled.SIZE_BUDGET_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
