"""Run configuration: YAML in, validated by pydantic, errors that name the field.

One ``RunConfig`` describes a whole study (model, datasets, generation,
methods, training, evaluation) so ``certa run CONFIG.yaml`` can regenerate it
and every output records the config that made it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .errors import InputError
from .textfiles import read_text
from .training.objective import TrainConfig

DEFAULT_BASELINES: tuple[str, ...] = (
    "sequence_likelihood",
    "token_entropy",
    "verbalized",
    "p_true",
    "consistency",
    "linear_probe",
    "apricot",
    "sequence_likelihood+platt",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationSettings(_Strict):
    max_new_tokens: int = Field(48, ge=1, le=4096)
    batch_size: int = Field(16, ge=1)
    samples: int = Field(5, ge=0, description="sampled answers per test question (consistency, scaling)")
    temperature: float = Field(1.0, gt=0)


class DatasetSettings(_Strict):
    name: str = Field(description="bundled name, JSONL path or hf:owner/name[:config]")
    label: str | None = Field(None, description="how outputs and tables name it (default: derived from name)")
    train_limit: int | None = Field(300, ge=1, description="training questions (fitted and trained methods)")
    test_limit: int | None = Field(200, ge=1, description="held-out questions that are evaluated")


    @property
    def key(self) -> str:
        """A short, path-safe name: ``label``, else the bundled name, a file's stem or an HF name's last part."""
        if self.label:
            return self.label
        name = self.name.split(":", 1)[1] if self.name.startswith("hf:") else self.name
        stem = Path(name).stem if name.endswith((".jsonl", ".json")) else Path(name).name
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "dataset"


class EvaluationSettings(_Strict):
    n_bins: int = Field(10, ge=2)
    n_bootstrap: int = Field(1000, ge=0)


class TrainingSettings(_Strict):
    grace: TrainConfig | None = None
    conftuner: TrainConfig | None = None


class CrossDomainSettings(_Strict):
    """Train the learned methods on each of ``datasets`` alone and evaluate on every one of them."""

    datasets: list[str] = Field(min_length=2, description="names from the config's datasets")


class ScalingSettings(_Strict):
    """Test-time scaling on one dataset's test questions, with confidences read while sampling."""

    dataset: str = Field(description="a name from the config's datasets")
    test_limit: int | None = Field(100, ge=1)
    budget: int = Field(8, ge=1, description="samples per question (B)")
    temperature: float = Field(0.7, gt=0)
    confidence: str = Field("grace", description="the trained method whose per-sample confidence is read")
    tau: float = Field(0.5, gt=0, lt=1, description="GrACE-ES threshold for the curves over budgets")
    tau_sweep: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])


class PublishSettings(_Strict):
    """Where the study's Markdown write-up goes (e.g. docs/RESULTS.md) and what it splices in."""

    markdown: Path
    figures: Path | None = Field(None, description="plot directory (default: next to the Markdown file)")
    discussion: Path | None = Field(None, description="a hand-written Markdown section appended verbatim")


class RunConfig(_Strict):
    """A complete study: generate → grade → (train) → score → evaluate → report."""

    model: str = "default"
    out: Path = Path("runs/certa")
    datasets: list[DatasetSettings] = Field(default_factory=lambda: [DatasetSettings(name="arithmetic")])
    methods: list[str] = Field(default_factory=lambda: list(DEFAULT_BASELINES))
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    cross_domain: CrossDomainSettings | None = None
    scaling: ScalingSettings | None = None
    publish: PublishSettings | None = None
    seed: int = 0
    #: The YAML file the config was read from (``None`` when built in code).
    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        return self._source

    @model_validator(mode="after")
    def _names_refer_to_datasets_and_methods(self) -> RunConfig:
        keys = [d.key for d in self.datasets]
        if len(set(keys)) != len(keys):
            raise ValueError("two datasets share a name; give one a 'label'")
        for name in self.cross_domain.datasets if self.cross_domain else []:
            self.dataset(name)
        if self.scaling is not None:
            self.dataset(self.scaling.dataset)
            if self.scaling.confidence not in self.methods:
                raise ValueError(f"scaling reads {self.scaling.confidence!r} confidences, "
                                 "so that method must be in 'methods'")
        return self

    def dataset(self, name: str) -> DatasetSettings:
        """The listed dataset with this name or key (``ValueError`` naming the choices otherwise)."""
        for d in self.datasets:
            if name in (d.name, d.key):
                return d
        raise ValueError(f"dataset {name!r} is not in 'datasets' ({', '.join(d.key for d in self.datasets)})")

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        config = cls.from_dict(load_yaml_mapping(path), where=str(path))
        config._source = Path(path)
        return config

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> RunConfig:
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a mapping at the top level")
        # Plain dataset names are accepted as a shorthand for {name: ...}.
        datasets = data.get("datasets")
        if isinstance(datasets, list):
            data = {**data, "datasets": [{"name": d} if isinstance(d, str) else d for d in datasets]}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InputError(f"{where}: {format_validation_error(exc)}") from None


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; errors name the file and line."""
    p = Path(path)
    text = read_text(p, what="config file")  # UTF-8, BOM accepted; bad bytes name line and column
    try:
        data = yaml.safe_load(text) or {}
    except RecursionError:
        raise InputError(f"{p}: YAML nested too deeply") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{p}{_yaml_problem(exc, text)}") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a mapping at the top level")
    return data


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """``:line: malformed YAML (problem)`` in one line, for parser errors and reader (character) errors."""
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        return f":{line}: malformed YAML (character {char} is not allowed in YAML)"
    where = f":{mark.line + 1}" if mark is not None else ""
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    return f"{where}: malformed YAML ({problem})"


def format_validation_error(exc: ValidationError) -> str:
    """The first problem of a pydantic error as one line that names the field."""
    err = exc.errors()[0]
    field = ".".join(str(part) for part in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown key {field!r}"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"field {field!r}: {message}" if field else message
