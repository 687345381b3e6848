"""The study's cross-domain stage: learned methods trained on one dataset alone, tested on every listed one."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..methods.base import MethodSpec
from ..records import atomic_write_text
from ..training.trainer import training_seconds
from .cache import cached_scores
from .config import RunConfig
from .evaluate import evaluate_scored, provenance
from .stages import DatasetRecords

if TYPE_CHECKING:
    from ..models import LoadedModel

#: Metrics carried into the cross-domain table.
CROSS_DOMAIN_METRICS = ("ece", "brier", "auroc")


def learned_methods(methods: Sequence[str]) -> list[str]:
    """The methods that learn from graded answers (trained or fitted): those a domain shift can hurt."""
    return [m for m in methods if MethodSpec.parse(m).trained or MethodSpec.parse(m).requires_fit]


def cross_domain_sources(config: RunConfig) -> list[str]:
    """The dataset keys each learned method is trained on alone."""
    return [config.dataset(name).key for name in config.cross_domain.datasets] if config.cross_domain else []


def run_cross_domain(config: RunConfig, base: LoadedModel, data: Mapping[str, DatasetRecords],
                     views: Mapping[str, Mapping[str, LoadedModel]], artifacts: Mapping[str, Mapping[str, Path]],
                     out: Path) -> dict[str, Any]:
    """Score every learned method trained on each source dataset alone on every listed dataset's test answers.

    ``views[source][method]`` is the artifact view of a trained method trained on ``source`` alone
    (``artifacts`` the same as paths, for the training time). Returns (and writes to
    ``out/cross_domain.json``) ``{"methods", "datasets", "results": [{"method", "train", "test", metric: ...}]}``;
    rows with ``train == test`` are the in-domain reference.
    """
    names = cross_domain_sources(config)
    methods = learned_methods(config.methods)
    root = out / "cross_domain"
    rows: list[dict[str, Any]] = []
    seconds = {"training": sum(training_seconds(p) for source in names for p in artifacts[source].values()),
               "scoring": 0.0}
    for source in names:
        for target in names:
            scored = cached_scores(methods, data[target].test, root / f"{source}-to-{target}.scores.jsonl",
                                   fit_records=data[source].train, models=views[source], default_model=base,
                                   provenance=provenance(config, views[source]))
            seconds["scoring"] += sum(x.total_seconds for x in scored.values())
            result = evaluate_scored(config, data[target].test, scored)
            for method in methods:
                estimates = result.methods[method]
                rows.append({"method": method, "train": source, "test": target,
                             **{k: estimates[k].to_dict() for k in CROSS_DOMAIN_METRICS}})
    summary = {"methods": methods, "datasets": list(names), "results": rows, "seconds": seconds}
    atomic_write_text(out / "cross_domain.json", json.dumps(summary, indent=1))
    return summary
