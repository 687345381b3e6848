"""The study's learning curve: how the trained methods improve with more training answers.

Each trained method is trained on seeded, stratified subsets of the pooled
train answers of growing size (the settings the rest of the study uses, tuned
values included) and evaluated on the pooled test answers; a size larger than
the train answers there are is reported at the size there is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..records import Record, atomic_write_text
from ..training.trainer import training_seconds
from .cache import cached_scores
from .config import RunConfig
from .evaluate import evaluate_scored, provenance
from .training import train_artifact, trained_methods

if TYPE_CHECKING:
    from ..models import LoadedModel

#: Metrics of the learning-curve table.
CURVE_METRICS = ("auroc", "ece", "brier")


def subset(records: Sequence[Record], size: int, seed: int) -> list[Record]:
    """``size`` records drawn at random (seeded), keeping the share of correct answers; input order kept."""
    if size >= len(records):
        return list(records)
    rng = np.random.default_rng(seed)
    correct = np.array([r.correct >= 0.5 for r in records])
    chosen: list[int] = []
    for label in (True, False):
        members = np.flatnonzero(correct == label)
        take = int(round(size * len(members) / len(records)))
        chosen += rng.choice(members, size=min(take, len(members)), replace=False).tolist()
    keep = set(chosen)
    return [r for i, r in enumerate(records) if i in keep]


def curve_sizes(config: RunConfig, train: Sequence[Record]) -> list[int]:
    """The subset sizes the curve visits, capped at the train answers there are."""
    assert config.learning_curve is not None
    return sorted({min(size, len(train)) for size in config.learning_curve.sizes})


def train_learning_curve(config: RunConfig, train: Sequence[Record], tuned: Mapping[str, Mapping[str, Any]],
                         out: Path, full: Mapping[str, Path]) -> dict[str, Path]:
    """Train each trained method on each subset size; ``{"<method>@<size>": artifact}``. The size that is all
    the train answers is the study's own artifact (``full``), not trained again."""
    artifacts: dict[str, Path] = {}
    for size in curve_sizes(config, train):
        if size == len(train):
            artifacts.update({f"{m}@{size}": path for m, path in full.items()})
            continue
        records = subset(train, size, config.seed)
        for method in trained_methods(config.methods):
            train_config = config.train_config(method, tuned.get(method))
            artifacts[f"{method}@{size}"] = train_artifact(config, method, train_config, records,
                                                           out / "learning_curve" / f"{size}" / method)
    return artifacts


def score_learning_curve(config: RunConfig, train: Sequence[Record], test: Sequence[Record],
                         views: Mapping[str, LoadedModel], base: LoadedModel, out: Path,
                         artifacts: Mapping[str, Path], full: Mapping[str, Path]) -> dict[str, Any]:
    """Each size's artifacts (``views``, named as :func:`train_learning_curve` names them) on the test answers,
    and the seconds the curve's own training (``artifacts`` that are not the study's ``full`` ones) and
    scoring took."""
    sizes = curve_sizes(config, train)
    rows = []
    scoring = 0.0
    for size in sizes:
        models = {m: views[f"{m}@{size}"] for m in trained_methods(config.methods)}
        scored = cached_scores(list(models), test, out / "learning_curve" / f"{size}" / "scores.jsonl",
                               models=models, default_model=base, provenance=provenance(config, models))
        scoring += sum(s.total_seconds for s in scored.values())
        result = evaluate_scored(config, test, scored)
        for method in models:
            rows.append({"method": method, "train_answers": size,
                         **{k: result.methods[method][k].to_dict() for k in CURVE_METRICS}})
    own = {Path(p) for p in artifacts.values()} - {Path(p) for p in full.values()}
    summary = {"sizes": sizes, "test_answers": len(test), "results": rows,
               "seconds": {"training": sum(training_seconds(p) for p in own), "scoring": scoring}}
    atomic_write_text(out / "learning_curve.json", json.dumps(summary, indent=1))
    return summary
