"""Post-hoc calibrators: learn a monotone map from a base method's scores to accuracy.

``get_method("sequence_likelihood+platt")`` (or ``Platt(base=...)``) wraps a
base method; ``fit(records)`` fits the base when it needs fitting and then the
1-D mapping on graded records (use a calibration split, not the test split);
``score`` is the mapping applied to the base method's scores. A base that is
itself fitted on these records would hand the mapping over-confident
in-sample scores, so such a base is cross-fitted: the mapping learns from
out-of-fold scores and the base is then refitted on all records. The folds
are stratified on ``correct >= 0.5`` and there are at most as many as the
rarer class has records (and at least 2), so every fold's training part holds
both correct and incorrect answers. Cross-fitting with a single correct (or a
single incorrect) record is impossible and raises a one-line ``CertaError``;
fit the base yourself and pass the fitted instance to skip cross-fitting.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CertaError, InputError
from ..recalibration import expit, fit_map, logit
from ..records import Record
from .base import ConfidenceMethod, Needs, check_scores, method_class, register
from .fitting import correctness, not_fitted

if TYPE_CHECKING:
    from ..models import LoadedModel

_EPS = 1e-6  # keeps logit finite for scores of exactly 0 or 1
_LOG_T_BOUND = 5.0


class CalibrationWarning(UserWarning):
    """A calibrator fitted, but to something a user should not trust (e.g. a temperature at its bound)."""


class Calibrator(ConfidenceMethod):
    """Base class: a fitted 1-D map applied to the scores of a ``base`` method.

    ``base`` is a method name or a method instance (an already-fitted instance
    is used as is); ``base_options`` go to the base method's constructor;
    ``folds`` is the number of cross-fitting folds for a base that needs fitting
    (stratified on ``correct >= 0.5``; fewer when the rarer class has fewer records).
    """

    needs = Needs.FIT
    cost = "the base method's cost, plus a 1-D map; fit: on graded calibration records"
    is_calibrator = True

    def __init__(self, model: LoadedModel | None = None, base: str | ConfidenceMethod = "sequence_likelihood",
                 *, base_options: dict[str, Any] | None = None, folds: int = 5):
        super().__init__(model, base=base, base_options=base_options, folds=folds)
        if folds < 2:
            raise InputError(f"folds must be at least 2, got {folds}")
        self.base = base if isinstance(base, ConfidenceMethod) else \
            method_class(base)(model=model, **(base_options or {}))
        self.folds = folds
        self.needs = self.base.needs | Needs.FIT  # type: ignore[misc]  # per instance: depends on the base
        self.fit_needs = self.base.fit_needs | (self.base.needs & ~Needs.FIT)  # type: ignore[misc]
        self.cost = f"{self.base.cost}; plus a fitted 1-D map"  # type: ignore[misc]

    def fit(self, records: Sequence[Record]) -> Calibrator:
        targets = correctness(records)
        if self.base.requires_fit and not self.base.fitted:
            scores = self._out_of_fold_scores(records)
            self.base.fit(records)
        else:
            scores = self._base_scores(records)
        self._fit_map(scores, targets)
        self.fitted = True
        return self

    def score(self, records: Sequence[Record]) -> np.ndarray:
        if not self.fitted:
            raise not_fitted(self)
        return self._apply_map(self._base_scores(records))

    def _base_scores(self, records: Sequence[Record]) -> np.ndarray:
        return check_scores(self.base.score(records), len(records), self.base.name)

    def _out_of_fold_scores(self, records: Sequence[Record]) -> np.ndarray:
        from sklearn.model_selection import StratifiedKFold

        if len(records) < 2:
            raise InputError(f"{self.name}: {len(records)} records are too few for cross-fitting")
        strata = (correctness(records) >= 0.5).astype(int)
        counts = np.bincount(strata, minlength=2)
        present = counts[counts > 0]
        if len(present) == 2 and present.min() < 2:
            side = "correct" if counts[1] < 2 else "incorrect"
            raise CertaError(
                f"{self.name}: cross-fitting {self.base.name!r} needs at least 2 {side} records, got "
                f"{int(present.min())} of {len(records)}; add records, or fit the base first and pass it fitted")
        # As many folds as the rarer class has members, so each fold's training part holds both classes.
        folds = max(2, min(self.folds, int(present.min())))
        scores = np.empty(len(records))
        splitter = StratifiedKFold(folds, shuffle=True, random_state=0)
        for train, held_out in splitter.split(np.zeros(len(records)), strata):
            # A fresh base per fold, built with the same options as the one being wrapped.
            fold_base = type(self.base)(model=self.base.model, **self.base.options)
            fold_base.fit([records[i] for i in train])
            scores[held_out] = check_scores(
                fold_base.score([records[i] for i in held_out]), len(held_out), self.base.name
            )
        return scores

    def _fit_map(self, scores: np.ndarray, targets: np.ndarray) -> None:
        raise NotImplementedError

    def _apply_map(self, scores: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@register("platt")
class Platt(Calibrator):
    """Platt scaling: sigmoid(a · logit(score) + b), fitted by logistic regression."""

    def _fit_map(self, scores: np.ndarray, targets: np.ndarray) -> None:
        self._map = fit_map(scores, targets, "platt")

    def _apply_map(self, scores: np.ndarray) -> np.ndarray:
        return self._map(scores)


@register("temperature")
class Temperature(Calibrator):
    """Temperature scaling: sigmoid(logit(score) / T), one T > 0 minimising the log loss.

    Keeps the ranking of the base scores (AUROC unchanged) and maps 0.5 to 0.5.
    """

    def _fit_map(self, scores: np.ndarray, targets: np.ndarray) -> None:
        z = logit(scores)

        def log_loss(log_t: float) -> float:
            p = np.clip(expit(z / np.exp(log_t)), _EPS, 1.0 - _EPS)
            return float(-np.mean(targets * np.log(p) + (1.0 - targets) * np.log1p(-p)))

        # T in [e^-5, e^5] covers any useful sharpening or flattening; a fit at the edge means the
        # scores carry (almost) no usable ranking, and the map has flattened them to a constant 0.5.
        from scipy.optimize import minimize_scalar

        log_t = float(minimize_scalar(log_loss, bounds=(-_LOG_T_BOUND, _LOG_T_BOUND), method="bounded").x)
        self.at_bound = abs(log_t) > _LOG_T_BOUND - 0.01
        if self.at_bound:
            warnings.warn(
                f"{self.name}: the fitted temperature hit its bound (T = e^{log_t:+.1f}), so every confidence "
                f"is now close to 0.5: the scores of {self.base.name!r} cannot be calibrated by a temperature "
                "alone (logit/T keeps 0.5 at 0.5 and these scores need another centre); use platt or isotonic",
                CalibrationWarning, stacklevel=3)
        self.temperature = float(np.exp(log_t))

    def diagnostics(self) -> dict[str, Any]:
        return {"temperature": getattr(self, "temperature", None), "at_bound": getattr(self, "at_bound", None)}

    def _apply_map(self, scores: np.ndarray) -> np.ndarray:
        return expit(logit(scores) / self.temperature)


@register("isotonic")
class Isotonic(Calibrator):
    """Isotonic regression: the best non-decreasing step map from score to accuracy (scikit-learn)."""

    def _fit_map(self, scores: np.ndarray, targets: np.ndarray) -> None:
        self._map = fit_map(scores, targets, "isotonic")

    def _apply_map(self, scores: np.ndarray) -> np.ndarray:
        return self._map(scores)
