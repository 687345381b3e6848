"""Fitting and scoring several methods on the same records, with what each cost."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CertaError
from ..records import Record
from .base import MethodSpec, get_method
from .shared_encodings import DEFAULT_GB, shared_answer_encodings

if TYPE_CHECKING:
    from ..models import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class MethodScores:
    """One method's confidences on the evaluated records, with what they cost.

    ``seconds`` is scoring time, ``fit_seconds`` fitting time (0 for
    training-free methods), ``needs`` the method's ``Needs`` flags by name.
    """

    name: str
    scores: np.ndarray
    seconds: float
    cost: str
    diagnostics: dict[str, Any] = field(default_factory=dict)
    fit_seconds: float = 0.0
    needs: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        """Fitting and scoring together: what this method cost the run."""
        return self.seconds + self.fit_seconds

    def summary(self) -> dict[str, Any]:
        """Everything but the scores (what a score cache keeps beside them)."""
        return {"seconds": self.seconds, "fit_seconds": self.fit_seconds, "cost": self.cost,
                "needs": self.needs, "diagnostics": self.diagnostics}


def score_methods(
    methods: Sequence[str],
    records: Sequence[Record],
    *,
    fit_records: Sequence[Record] = (),
    models: Mapping[str, LoadedModel] | None = None,
    default_model: LoadedModel | None = None,
    shared_encodings_gb: float = DEFAULT_GB,
) -> dict[str, MethodScores]:
    """Fit (when needed) and score every method; ``models`` maps a method's base name to its own model
    (a trained method's artifact view), ``default_model`` serves the rest.

    The methods run one after another on the same records, so the read-outs that
    extend prompt + answer (GrACE, ConfTuner, verbalized) share one encoding of each
    answer, kept on the CPU within ``shared_encodings_gb`` (0: each encodes its own);
    the first of them to run pays for the encoding (:mod:`certa.methods.shared_encodings`).
    """
    models = models or {}
    results: dict[str, MethodScores] = {}
    fitting = any(MethodSpec.parse(name).requires_fit for name in methods)
    with shared_answer_encodings([default_model, *models.values()], records, max_gb=shared_encodings_gb) as shared:
        if shared is not None and fitting:
            shared.plan(fit_records)
        for name in methods:
            spec = MethodSpec.parse(name)
            method = get_method(name, model=models.get(spec.base, default_model))
            start = time.perf_counter()
            if method.requires_fit:
                if not fit_records:
                    raise CertaError(f"method {name!r} must be fitted, but no training records were given")
                method.fit(fit_records)
            fitted = time.perf_counter()
            scores = method(records)
            seconds = time.perf_counter() - fitted
            results[name] = MethodScores(name, scores, seconds, method.cost, dict(method.diagnostics()),
                                         fitted - start, method.needs.labels())
            log.info("scored %s in %.1fs", name, seconds)
    return results
