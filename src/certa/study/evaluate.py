"""Turning a study's cached scores into evaluations, and naming what each method's scores depend on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..evaluation import EvaluationResult, evaluate
from ..methods.base import MethodSpec
from ..methods.runner import MethodScores
from ..records import Record
from .config import RunConfig

if TYPE_CHECKING:
    from ..models import LoadedModel


def evaluate_scored(config: RunConfig, records: Sequence[Record], scored: Mapping[str, MethodScores]
                    ) -> EvaluationResult:
    """Evaluate cached scores with the study's bins, bootstrap and seed."""
    return evaluate(records, {m: s.scores for m, s in scored.items()}, n_bins=config.evaluation.n_bins,
                    n_bootstrap=config.evaluation.n_bootstrap, seed=config.seed)


def provenance(config: RunConfig, views: Mapping[str, LoadedModel]) -> dict[str, str]:
    """What each method's scores depend on besides the records: the base model, or its artifact's id."""
    out = {MethodSpec.parse(m).base: config.model for m in config.methods}
    for name, view in views.items():
        out[name] = view.artifact_id or config.model
    return out
