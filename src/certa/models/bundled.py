"""Trained artifacts shipped inside the package: ``certa.load_model("default-grace")`` with no training.

Each built-in artifact is a directory ``certa/artifacts/<name>/`` holding a slim artifact:
``certa.json``, ``adapter_config.json``, ``adapter_model.safetensors`` and ``README.md`` (the
model card). Its tokenizer is the base model's plus the tokens the method added, which
``certa.json`` lists (``added_tokens``), so the 3.5 MB tokenizer file of the default model is
not shipped once per artifact. They are built from bundled data by one
command, ``make artifacts`` (``certa run configs/results-trained-check.yaml``, GrACE and ConfTuner with the
settings the results-cpu search chose, then ``python -m certa.models.bundling runs/results-trained-check``), and
shipped as package data (10 MB at most in all).

This module only names them and finds their files; it imports nothing else from ``models/``,
so the base-model loader can list the ones present.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError
from ..registry import Registry

#: Where the built-in artifacts live: ``certa/artifacts`` next to the package's modules.
ROOT = Path(__file__).resolve().parents[1] / "artifacts"
#: The files every bundled artifact carries.
REQUIRED = ("certa.json", "adapter_config.json", "adapter_model.safetensors", "README.md")
#: Tokenizer files a bundled artifact may carry too (``bundling --with-tokenizer``).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
#: The most the built-in artifacts may weigh together (the wheel carries them).
SIZE_BUDGET_BYTES = 10 * 1000 * 1000


@dataclass(frozen=True)
class BundledArtifact:
    """A trained artifact certa ships: its method and the built-in base model it was trained on."""

    method: str
    base: str
    description: str


BUNDLED_ARTIFACTS: Registry[BundledArtifact] = Registry("built-in artifact")
BUNDLED_ARTIFACTS.add("default-grace", BundledArtifact(
    "grace", "default", "GrACE's <CNF> confidence token on the default model"))
BUNDLED_ARTIFACTS.add("default-conftuner", BundledArtifact(
    "conftuner", "default", "ConfTuner's verbalized confidence on the default model"))


def bundled_artifact_dir(name: str) -> Path:
    """The directory of built-in artifact ``name`` (it may be absent: see :func:`bundled_artifact_path`)."""
    BUNDLED_ARTIFACTS.get(name)  # an unknown name is an UnknownNameError with suggestions
    return ROOT / name


def is_bundled(name: str) -> bool:
    """Whether ``name`` is a built-in artifact's name (present in this install or not)."""
    return name in BUNDLED_ARTIFACTS


def is_present(name: str) -> bool:
    """Whether built-in artifact ``name`` has its files in this install."""
    directory = ROOT / name
    return is_bundled(name) and all((directory / f).is_file() for f in REQUIRED)


def bundled_artifact_path(name: str) -> Path:
    """The directory of built-in artifact ``name``; a one-line ``ModelLoadError`` when its files are missing."""
    directory = bundled_artifact_dir(name)
    missing = [f for f in REQUIRED if not (directory / f).is_file()]
    if missing:
        raise ModelLoadError(
            f"built-in artifact {name!r} is not in this install ({directory} has no {missing[0]}); "
            "it is built by `make artifacts` in a source checkout, or train your own with "
            f"`certa train {BUNDLED_ARTIFACTS.get(name).method} -o DIR`")
    return directory


def available_bundled_artifacts() -> list[str]:
    """Names of the built-in artifacts whose files are present, sorted."""
    return [name for name in BUNDLED_ARTIFACTS.names() if is_present(name)]


def bundled_size_bytes() -> int:
    """Bytes of every file under the built-in artifacts' directory."""
    return sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file()) if ROOT.is_dir() else 0
