"""Evaluate every confidence method on the same graded answers, with bootstrap intervals.

``evaluate(records, {"method": confidences, ...})`` returns an
:class:`EvaluationResult`: per-method ECE, adaptive ECE, MCE, Brier, NLL,
AUROC, AUPRC and AURC, each with a 95% percentile-bootstrap interval, plus the
accuracy of the answers. It saves as ``metrics.json``, renders as a
self-contained ``report.html`` and prints as a rich table.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from .. import metrics
from ..errors import InputError, UnknownNameError
from ..records import Record, atomic_write_text
from ..versions import package_versions
from .estimate import Estimate
from .frames import metrics_to_pandas, scores_to_pandas
from .report import write_report
from .specs import CI_LEVEL, METRICS, metric_spec
from .table import metric_table, to_rich

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table

@dataclass
class EvaluationResult:
    """Metrics of several confidence methods on the same graded answers.

    ``methods[name][metric]`` is an :class:`Estimate` for each metric in
    :data:`METRICS`. ``correct`` and ``scores`` keep the inputs so the report
    can draw reliability diagrams and risk-coverage curves; they are not
    written to ``metrics.json``.
    """

    n: int
    n_bins: int
    accuracy: Estimate
    methods: dict[str, dict[str, Estimate]]
    correct: np.ndarray
    scores: dict[str, np.ndarray]
    n_bootstrap: int = 1000
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    extra_per_method: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=package_versions)

    def to_dict(self) -> dict[str, Any]:
        """Everything in ``metrics.json``: strict JSON types, NaN as ``None``."""
        return {
            "n": self.n,
            "n_bins": self.n_bins,
            "accuracy": self.accuracy.to_dict(),
            "ci": {"method": "percentile bootstrap", "level": CI_LEVEL,
                   "n_resamples": self.n_bootstrap, "seed": self.seed},
            "metrics": {name: {"description": spec.description, "higher_is_better": spec.higher_is_better}
                        for name, spec in METRICS.items()},
            "methods": {name: self._method_dict(name) for name in self.methods},
            "extra": self.extra,
            "versions": self.versions,
        }

    def _method_dict(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {metric: est.to_dict() for metric, est in self.methods[name].items()}
        out["mean_confidence"] = float(np.mean(self.scores[name]))
        out["reliability"] = metrics.reliability_bins(self.scores[name], self.correct, self.n_bins).to_dict()
        if name in self.extra_per_method:
            out["extra"] = self.extra_per_method[name]
        return out

    def save(self, directory: str | os.PathLike[str], *, report_title: str | None = None) -> Path:
        """Write ``directory/metrics.json`` atomically and return its path.

        With ``report_title``, ``directory/report.html`` is written too, before
        the metrics: a ``metrics.json`` always comes with its report.
        """
        try:
            text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False, default=_json_default)
        except (TypeError, ValueError) as exc:  # a caller's `extra` holds something JSON cannot write
            raise InputError(f"cannot write metrics.json: {exc}") from None
        if report_title is not None:
            self.to_html(Path(directory) / "report.html", title=report_title)
        return atomic_write_text(Path(directory) / "metrics.json", text)

    def to_html(self, path: str | os.PathLike[str], title: str = "certa calibration report") -> Path:
        """Write a self-contained HTML report (tables and embedded PNG figures) and return its path."""
        return write_report(self, path, title=title)

    def to_pandas(self, *, long: bool = False) -> pd.DataFrame:
        """The metrics as a DataFrame (one row per method, or per method and metric with ``long``); needs pandas."""
        return metrics_to_pandas(self, long=long)

    def scores_to_pandas(self) -> pd.DataFrame:
        """One row per answer: its correctness and every method's confidence; needs pandas."""
        return scores_to_pandas(self)

    def ranked(self, metric: str = "brier") -> list[str]:
        """Method names from best to worst on ``metric``; undefined values last."""
        higher = metric_spec(metric).higher_is_better

        def key(name: str) -> tuple[bool, float]:
            value = self.methods[name][metric].value
            return (not math.isfinite(value), -value if higher else value)

        return sorted(self.methods, key=key)

    def best(self, metric: str) -> str:
        """The method with the best value of ``metric`` (lowest, or highest for AUROC/AUPRC)."""
        return self.ranked(metric)[0]

    def winners(self) -> dict[str, str]:
        """Metric -> best method, for metrics where some method has a value; empty with one method."""
        if len(self.methods) < 2:
            return {}
        return {metric: best for metric in METRICS
                if math.isfinite(self.methods[best := self.best(metric)][metric].value)}

    def table(self, sort_by: str = "brier", digits: int = 3, metrics: Sequence[str] = tuple(METRICS)) -> Table:
        """A ``rich.table.Table``: one row per method, best on ``sort_by`` first; best per column in bold."""
        title = (f"n={self.n}, accuracy {self.accuracy.format(digits)}, "
                 f"{self.n_bins} bins, {CI_LEVEL:.0%} bootstrap CI")
        return to_rich(metric_table(self, metrics, sort_by), title=title, digits=digits)


def _json_default(obj: Any) -> Any:
    # Callers put numpy scalars/arrays and paths into `extra`; write them as plain JSON values.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"extra value of type {type(obj).__name__} is not JSON serialisable")


def _correctness(records_or_correct: Sequence[Record] | ArrayLike) -> np.ndarray:
    items = list(records_or_correct) if not isinstance(records_or_correct, np.ndarray) else records_or_correct
    if len(items) and all(hasattr(r, "correct") for r in items):
        items = [r.correct for r in items]
    correct = metrics.as_unit_array(items, "correct")
    if correct.size == 0:
        raise InputError("evaluate() got no records: there is nothing to evaluate")
    return correct


def _estimates(conf: np.ndarray, correct: np.ndarray, names: Sequence[str], n_bins: int,
               n_bootstrap: int, seed: int) -> dict[str, Estimate]:
    found = metrics.bootstrap_metrics(conf, correct, names, n_bins=n_bins, n_resamples=n_bootstrap,
                                      alpha=1.0 - CI_LEVEL, seed=seed)
    return {name: Estimate(*found[name]) for name in names}


def evaluate(
    records_or_correct: Sequence[Record] | ArrayLike,
    scores: Mapping[str, ArrayLike],
    *,
    n_bins: int = 10,
    n_bootstrap: int = 1000,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
    extra_per_method: Mapping[str, dict[str, Any]] | None = None,
) -> EvaluationResult:
    """Evaluate each method's confidences against the same correctness.

    Parameters
    ----------
    records_or_correct : sequence of Record or array-like of shape (n,)
        Graded records (their ``.correct`` is used) or the correctness itself,
        in [0, 1].
    scores : mapping of str to array-like of shape (n,)
        Method name -> one confidence in [0, 1] per answer, in the same order.
    n_bins : int, default=10
        Bins for ECE, adaptive ECE, MCE and the reliability diagrams.
    n_bootstrap : int, default=1000
        Bootstrap resamples for the 95% intervals; 0 skips them (NaN bounds).
        Every method is resampled with the same indices (paired comparison).
    seed : int, default=0
        Seed of the bootstrap.
    extra : dict, optional
        Anything that should travel with the numbers: config, dataset, model,
        parse-failure counts. Must be JSON serialisable.
    extra_per_method : mapping of str to dict, optional
        The same, per method (e.g. fit time, parse failures of that method).

    Returns
    -------
    EvaluationResult
    """
    correct = _correctness(records_or_correct)
    if not scores:
        raise InputError("evaluate() got no scores: pass {method name: confidences}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise InputError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    unknown = set(extra_per_method or {}) - set(scores)
    if unknown:
        raise UnknownNameError("method in extra_per_method", sorted(unknown)[0], scores)
    arrays: dict[str, np.ndarray] = {}
    results: dict[str, dict[str, Estimate]] = {}
    for name, conf in scores.items():
        try:
            arrays[name], _ = metrics.check_inputs(conf, correct)
        except InputError as exc:
            raise InputError(f"method {name!r}: {exc}") from None
        results[name] = _estimates(arrays[name], correct, list(METRICS), n_bins, n_bootstrap, seed)
    # Accuracy ignores the confidences; the same seed gives it the resamples every method saw.
    acc = _estimates(correct, correct, ["accuracy"], n_bins, n_bootstrap, seed)["accuracy"]
    return EvaluationResult(
        n=int(correct.size), n_bins=n_bins, accuracy=acc, methods=results, correct=correct, scores=arrays,
        n_bootstrap=n_bootstrap, seed=seed, extra=dict(extra or {}),
        extra_per_method={k: dict(v) for k, v in (extra_per_method or {}).items()},
    )
