"""What a finished study produced: the evaluations and where everything lies."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluation import EvaluationResult


@dataclass
class StudyResult:
    """The pooled evaluation, one per dataset, per-method costs, artifacts and the optional stages' summaries."""

    out: Path
    evaluation: EvaluationResult
    by_dataset: dict[str, EvaluationResult]
    costs: dict[str, dict[str, Any]]
    artifacts: dict[str, Path]
    cross_domain: dict[str, Any] = field(default_factory=dict)
    scaling: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    seeds: dict[str, Any] = field(default_factory=dict)
    learning_curve: dict[str, Any] = field(default_factory=dict)
    markdown: Path | None = None
