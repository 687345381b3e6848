"""Run configuration: YAML in, validated by pydantic, errors that name the field.

One ``RunConfig`` describes a whole study (model, datasets, generation,
methods, training, evaluation) so ``certa run CONFIG.yaml`` can regenerate it
and every output records the config that made it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InputError
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
    name: str
    train_limit: int | None = Field(300, ge=1, description="training questions (fitted and trained methods)")
    test_limit: int | None = Field(200, ge=1, description="held-out questions that are evaluated")


class EvaluationSettings(_Strict):
    n_bins: int = Field(10, ge=2)
    n_bootstrap: int = Field(1000, ge=0)


class TrainingSettings(_Strict):
    grace: TrainConfig | None = None
    conftuner: TrainConfig | None = None


class RunConfig(_Strict):
    """A complete study: generate → grade → (train) → score → evaluate → report."""

    model: str = "default"
    out: Path = Path("runs/certa")
    datasets: list[DatasetSettings] = Field(default_factory=lambda: [DatasetSettings(name="arithmetic")])
    methods: list[str] = Field(default_factory=lambda: list(DEFAULT_BASELINES))
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    seed: int = 0

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(load_yaml_mapping(path), where=str(path))

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
    if not p.exists():
        raise InputError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(f"{p}{where}: malformed YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a mapping at the top level")
    return data


def format_validation_error(exc: ValidationError) -> str:
    """The first problem of a pydantic error as one line that names the field."""
    err = exc.errors()[0]
    field = ".".join(str(part) for part in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key {field!r}"
    return f"field {field!r}: {err['msg']}"
