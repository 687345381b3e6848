"""Run configuration: YAML in, validated by pydantic, errors that name the field.

One ``RunConfig`` describes a whole study (model, datasets, generation,
methods, training, evaluation) so ``certa run CONFIG.yaml`` can regenerate it
and every output records the config that made it. Trained methods' settings
are their own config classes (``GraceConfig``, ``ConfTunerConfig``), reached
as ``training: {grace: {...}}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from ..errors import CertaError, InputError, validation_error
from ..generation import GenerationSettings as DecodingSettings
from ..methods.base import MethodSpec
from ..textfiles import read_text
from ..training.config import TrainConfig

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


class GenerationSettings(DecodingSettings):
    """How the study's answers are decoded; ``samples`` are drawn only when a chosen method reads them."""

    samples: int = Field(5, ge=1, description="sampled answers per question for the methods that read samples")


class DatasetSettings(_Strict):
    name: str = Field(description="bundled name, JSONL path or hf:owner/name[:config]")
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", max_length=100,
                              description="how outputs and tables name it (default: derived from name); letters, "
                                          "digits, '_', '.', '-' (it names a folder under 'out')")
    train_limit: int | None = Field(300, ge=1, description="training questions (fitted and trained methods)")
    test_limit: int | None = Field(200, ge=1, description="held-out questions that are evaluated")
    calibration_limit: int | None = Field(
        None, ge=1, description="calibration-split questions (answered only when tuning needs them; default: all)")


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


class CrossDomainSettings(_Strict):
    """Train the learned methods on each of ``datasets`` alone and evaluate on every one of them."""

    datasets: list[str] = Field(min_length=2, description="names from the config's datasets")


class ScalingSettings(_Strict):
    """Test-time scaling on one dataset's test questions, with confidences read while sampling."""

    dataset: str = Field(description="a name from the config's datasets")
    test_limit: int | None = Field(100, ge=1)
    budget: int = Field(8, ge=1, description="samples per question (B)")
    calibration_limit: int | None = Field(
        60, ge=1, description="calibration-split questions sampled the same way, on which GrACE-ES's τ is chosen")
    temperature: float = Field(0.7, gt=0)
    confidence: str = Field("grace", description="the trained method whose per-sample confidence is read")
    tau_sweep: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                                   description="GrACE-ES thresholds tried on the calibration questions")


class TuningSettings(_Strict):
    """A grid search per trained method, judged on calibration-split answers only (never on test answers)."""

    grids: dict[str, dict[str, list[Any]]] = Field(
        description="per trained method, its config fields and the values to try (every combination)")
    criterion: Literal["brier", "nll"] = Field("brier", description="what the calibration answers are judged by")


class LearningCurveSettings(_Strict):
    """Train the trained methods on growing subsets of the pooled train answers; evaluate each on the test answers."""

    sizes: list[int] = Field(min_length=1, description="training answers per point (capped at those there are)")


class PublishSettings(_Strict):
    """Where the study's Markdown write-up goes (e.g. docs/RESULTS.md) and what it splices in."""

    markdown: Path
    figures: Path | None = Field(None, description="plot directory (default: next to the Markdown file)")
    discussion: Path | None = Field(None, description="a hand-written Markdown section appended verbatim")


def _trained_settings(where: str, name: str, base: str, fields: Mapping[str, Any]) -> None:
    """Refuse settings a study would silently not use (a map's own key, a seed)."""
    if name != base:
        raise ValueError(f"{where}: give the trained method's own name, {base!r} (every map over it reads its "
                         "artifact)")
    if "seed" in fields:
        raise ValueError(f"{where}.seed: the study's 'seed' (and 'seeds', for replicates) set the training seed")


class RunConfig(_Strict):
    """A complete study: generate → grade → (train) → score → evaluate → report."""

    model: str = "default"
    out: Path = Path("runs/certa")
    datasets: list[DatasetSettings] = Field(default_factory=lambda: [DatasetSettings(name="arithmetic")])
    methods: list[str] = Field(default_factory=lambda: list(DEFAULT_BASELINES))
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    training: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per trained method, its config fields (e.g. grace: {epochs: 12})")
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    cross_domain: CrossDomainSettings | None = None
    scaling: ScalingSettings | None = None
    tuning: TuningSettings | None = None
    learning_curve: LearningCurveSettings | None = None
    publish: PublishSettings | None = None
    seed: int = 0
    seeds: list[int] = Field(default_factory=list, description="further seeds the trained methods are trained "
                             "with; their test metrics are reported as mean ± sd over all seeds")
    #: The YAML file the config was read from (``None`` when built in code).
    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        return self._source

    @model_validator(mode="after")
    def _names_refer_to_datasets_and_methods(self) -> RunConfig:
        # Settings are keyed by a trained method's own name (``grace``, not ``grace+platt``: a map over it
        # reads the same artifact), and the study's seed and seeds set every training's seed.
        for name, fields in self.training.items():
            try:
                spec = MethodSpec.parse(name)
            except CertaError as exc:
                raise ValueError(f"training.{name}: {exc}") from None
            if not spec.trained:
                raise ValueError(f"training.{name}: {name!r} is not a trained method")
            _trained_settings(f"training.{name}", name, spec.base, fields)
        keys = [d.key for d in self.datasets]
        if len(set(keys)) != len(keys):
            raise ValueError("two datasets share a name; give one a 'label'")
        trained = self._trained_bases()
        for name, grid in (self.tuning.grids if self.tuning else {}).items():
            if name not in trained:
                raise ValueError(f"tuning.grids.{name}: {name!r} is not a trained method among the methods "
                                 f"({', '.join(trained) or 'none'}); a search tunes a trained method's settings")
            _trained_settings(f"tuning.grids.{name}", name, name, grid)
            if not grid or any(not values for values in grid.values()):
                raise ValueError(f"tuning.grids.{name}: every field needs at least one value to try")
        for name in self.cross_domain.datasets if self.cross_domain else []:
            self.dataset(name)
        if self.scaling is not None:
            self.dataset(self.scaling.dataset)
            if self.scaling.confidence not in trained:
                raise ValueError(f"scaling reads {self.scaling.confidence!r} confidences while sampling, so it "
                                 f"must be a trained method in 'methods' ({', '.join(trained) or 'none'})")
        return self

    def _trained_bases(self) -> list[str]:
        specs = []
        for name in self.methods:
            try:
                specs.append(MethodSpec.parse(name))
            except CertaError:
                continue  # an unknown method is reported by its own check, with the known names
        return list(dict.fromkeys(spec.base for spec in specs if spec.trained))

    def train_config(self, method: str, tuned: Mapping[str, Any] | None = None) -> TrainConfig:
        """The resolved training config of a trained method: its defaults, this study's seed, what
        ``training.<method>`` sets, then the values a tuning search chose (validated; errors name the field)."""
        cls = MethodSpec.parse(method).base_class
        values = {"seed": self.seed, **self.training.get(method, {}), **(tuned or {})}
        return cls.resolve_config(values, where=f"training.{method}")  # type: ignore[attr-defined]

    def dataset(self, name: str) -> DatasetSettings:
        """The listed dataset with this name or key (``ValueError`` naming the choices otherwise)."""
        for d in self.datasets:
            if name in (d.name, d.key):
                return d
        raise ValueError(f"dataset {name!r} is not in 'datasets' ({', '.join(d.key for d in self.datasets)})")

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        data = load_yaml_mapping(path)
        if not data:  # a wrong or unsaved file would otherwise start the whole default study
            raise InputError(f"{path}: the config is empty; give at least 'datasets' and 'methods' (see configs/)")
        config = cls.from_dict(data, where=str(path))
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
            config = cls.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc, where) from None
        for method in config.training:
            config.train_config(method)  # a bad field of a method's config fails here, named
        return config


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
