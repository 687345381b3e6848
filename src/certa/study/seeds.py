"""The study's seed replicates: the trained methods trained again with other seeds, scored on the same answers.

Training a read-out depends on its seed (the shuffling, the held-out share that
picks the stopping step, LoRA's initialisation); answers and the other methods
do not. So only the trained methods (and calibrated variants of them) are
retrained, and their test metrics are reported as mean ± sd over the study's
``seed`` and its ``seeds``, beside the bootstrap intervals of the main seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..methods.base import MethodSpec
from ..methods.runner import MethodScores
from ..training.trainer import training_seconds
from .cache import cached_scores
from .config import RunConfig
from .evaluate import evaluate_scored, provenance
from .stages import DatasetRecords

if TYPE_CHECKING:
    from ..models import LoadedModel

#: Metrics reported over seeds.
SEED_METRICS = ("ece", "brier", "auroc")


def seeded_methods(methods: list[str]) -> list[str]:
    """The methods whose scores depend on a training seed: the trained ones and calibrated variants of them."""
    return [m for m in methods if MethodSpec.parse(m).trained]


def run_seed_replicates(config: RunConfig, data: Mapping[str, DatasetRecords],
                        scored: Mapping[str, Mapping[str, MethodScores]],
                        views: Mapping[int, Mapping[str, LoadedModel]], base: LoadedModel, out: Path,
                        artifacts: Mapping[int, Mapping[str, Path]]) -> dict[str, Any]:
    """Per trained method, per dataset and pooled, each metric's value for every seed (the main seed first),
    and the seconds the further seeds' training (``artifacts``) and scoring took."""
    methods = seeded_methods(config.methods)
    pooled_train = [r for d in data.values() for r in d.train]
    by_seed = {config.seed: {name: {m: scored[name][m] for m in methods} for name in data}}
    for seed, seed_views in views.items():
        seeded = config.model_copy(update={"seed": seed})
        by_seed[seed] = {name: cached_scores(methods, d.test, out / name / f"scores.seed-{seed}.jsonl",
                                             fit_records=pooled_train, models=seed_views, default_model=base,
                                             provenance=provenance(seeded, seed_views))
                         for name, d in data.items()}
    values: dict[str, dict[str, dict[str, list[float]]]] = {m: {} for m in methods}
    for seed_scores in by_seed.values():
        for group, records, scores in _groups(data, seed_scores, methods):
            result = evaluate_scored(config, records, scores)
            for m in methods:
                for metric in SEED_METRICS:
                    values[m].setdefault(group, {}).setdefault(metric, []).append(result.methods[m][metric].value)
    seconds = {"training": sum(training_seconds(p) for paths in artifacts.values() for p in paths.values()),
               "scoring": sum(s.total_seconds for seed, per_dataset in by_seed.items() if seed != config.seed
                              for scores in per_dataset.values() for s in scores.values())}
    return {"seeds": list(by_seed), "metrics": list(SEED_METRICS), "values": values, "seconds": seconds}


def _groups(data: Mapping[str, DatasetRecords], seed_scores: Mapping[str, Mapping[str, MethodScores]],
            methods: list[str]):
    """(name, test records, scores) for each dataset and for all of them pooled."""
    for name, d in data.items():
        yield name, d.test, seed_scores[name]
    pooled_records = [r for d in data.values() for r in d.test]
    pooled = {m: MethodScores(m, np.concatenate([seed_scores[name][m].scores for name in data]), 0.0, "")
              for m in methods}
    yield "pooled", pooled_records, pooled


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of finite values."""
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else 0.0
