"""Online recalibration: refit a monotone map from raw confidence to accuracy as labels arrive.

A served model's confidences drift when its traffic drifts. :class:`OnlineRecalibrator` keeps a
map ``raw confidence -> calibrated confidence`` fitted on the labelled answers stored so far
(:mod:`certa.serving.feedback`) and refits it after every ``every`` new labels, never on fewer than
``min_labels``. The map is either

- ``"isotonic"``: isotonic regression, the best non-decreasing step map from score to accuracy
  (Zadrozny & Elkan, 2002, "Transforming classifier scores into accurate multiclass probability
  estimates"; scikit-learn's ``IsotonicRegression``, applied by linear interpolation between its
  fitted points, as scikit-learn does);
- ``"platt"``: ``sigmoid(a · logit(raw) + b)`` fitted by logistic regression (Platt, 1999,
  "Probabilistic outputs for support vector machines"); partial credit is fitted as a soft target;
- ``"beta"``: ``sigmoid(a · ln raw − b · ln(1 − raw) + c)`` with ``a, b ≥ 0``, one slope per tail (Kull et
  al., 2017, "Beta calibration"), for read-outs whose two ends are miscalibrated differently.

Every map is non-decreasing, so the ranking of answers (and AUROC) is kept, up to the ties an
isotonic step creates. The map is always fitted on the *raw* confidence the method produced, never
on an earlier map's output, so refits do not compound.

Thread safety: the current map and its report are one immutable object swapped in a single
assignment, so a caller of :meth:`OnlineRecalibrator.apply` always uses one whole map, the old or
the new, never a mixture; refits are serialised by a lock, so concurrent callers of
:meth:`OnlineRecalibrator.update` fit at most once per due batch.

Each refit reports the expected calibration error (:func:`certa.metrics.ece`) on the labels it was
fitted on: of the raw confidences (``ece_before``), of the map previously in use
(``ece_previous``), of the new map in-sample (``ece_after``, optimistic, isotonic most of all) and
cross-fitted (``ece_after_cv``: each label mapped by a map fitted on the other folds), the honest
estimate of what the new map will do on the next answers.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import InputError, UnknownNameError
from ..metrics import check_inputs, ece
from ..recalibration import IDENTITY, KINDS, CalibrationMap, Kind, fit_map

if TYPE_CHECKING:
    from .feedback import FeedbackStore

__all__ = ["OnlineRecalibrator", "RecalibrationReport"]


@dataclass(frozen=True)
class RecalibrationReport:
    """The state an operator asks for (``GET /v1/calibration``): the map in use and how it was judged.

    ``n_labels`` is the label count at the last :meth:`OnlineRecalibrator.update`, ``n_labels_at_fit``
    the count when the current map was fitted (it saw at most ``max_labels`` of them) and
    ``n_labels_at_attempt`` when a refit was last due; the ECEs are those of the last refit (None
    before the first). ``skipped`` says why the last due refit did not replace the map.
    """

    kind: str
    every: int
    min_labels: int
    max_labels: int | None
    n_bins: int
    map: dict[str, Any]
    n_labels: int = 0
    n_labels_at_fit: int = 0
    n_labels_at_attempt: int = 0
    refits: int = 0
    ece_before: float | None = None
    ece_previous: float | None = None
    ece_after: float | None = None
    ece_after_cv: float | None = None
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class OnlineRecalibrator:
    """Refit a calibration map on the stored labels after every ``every`` new ones (never below ``min_labels``).

    Parameters
    ----------
    kind : {"isotonic", "platt", "beta"}
        The map to fit.
    every : int, default=50
        Refit once at least this many labels arrived since the last fit.
    min_labels : int, default=50
        Never fit on fewer labels; until then the identity map is used.
    max_labels : int, optional
        Fit on the most recent ``max_labels`` labels only (oldest dropped), to follow drift.
    n_bins : int, default=10
        Equal-width bins of the reported ECE.
    cv_folds : int, default=5
        Folds of the cross-fitted ``ece_after_cv``.

    Feed it every labelled answer with :meth:`update` (or :meth:`refresh` from a feedback store)
    and map served confidences with :meth:`apply`.
    """

    def __init__(self, kind: Kind = "isotonic", *, every: int = 50, min_labels: int = 50,
                 max_labels: int | None = None, n_bins: int = 10, cv_folds: int = 5):
        if kind not in KINDS:
            raise UnknownNameError("calibration map", str(kind), KINDS)
        for name, value, low in (("every", every, 1), ("min_labels", min_labels, 2), ("n_bins", n_bins, 1),
                                 ("cv_folds", cv_folds, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InputError(f"{name} must be an integer of at least {low}, got {value!r}")
        if max_labels is not None and (not isinstance(max_labels, int) or max_labels < min_labels):
            raise InputError(f"max_labels must be None or an integer of at least min_labels={min_labels}, "
                             f"got {max_labels!r}")
        self.kind, self.every, self.min_labels, self.max_labels = kind, every, min_labels, max_labels
        self.n_bins, self.cv_folds = n_bins, cv_folds
        self._fit_lock = threading.Lock()
        self._state: tuple[CalibrationMap, RecalibrationReport] = (
            IDENTITY, RecalibrationReport(kind, every, min_labels, max_labels, n_bins, IDENTITY.to_dict()))

    @property
    def current(self) -> CalibrationMap:
        """The map in use now."""
        return self._state[0]

    def apply(self, raw_conf: ArrayLike) -> np.ndarray:
        """Calibrated confidences: the current map applied to raw ones (one whole map, even mid-refit)."""
        return self._state[0](raw_conf)

    def report(self) -> RecalibrationReport:
        return self._state[1]

    def update(self, raw_conf: ArrayLike, correct: ArrayLike) -> bool:
        """Give the recalibrator *all* labels stored so far (oldest first); refit when due.

        Returns True when a new map was swapped in. A refit is due when there are at least
        ``min_labels`` labels and ``every`` more than when the last refit was due.
        """
        c, y = (np.asarray(raw_conf, dtype=float), np.asarray(correct, dtype=float))
        if c.size == 0 and y.size == 0:
            return False
        c, y = check_inputs(c, y)
        with self._fit_lock:
            previous, report = self._state
            n = int(c.size)
            due = n >= self.min_labels and n - report.n_labels_at_attempt >= self.every
            if not due:
                self._state = (previous, _replace(report, n_labels=n))
                return False
            if self.max_labels is not None:
                c, y = c[-self.max_labels:], y[-self.max_labels:]
            try:
                new = fit_map(c, y, self.kind)       # type: ignore[arg-type]
            except InputError as e:
                self._state = (previous, _replace(report, n_labels=n, n_labels_at_attempt=n, skipped=str(e)))
                return False
            self._state = (new, _replace(
                report, map=new.to_dict(), n_labels=n, n_labels_at_fit=n, n_labels_at_attempt=n,
                refits=report.refits + 1,
                ece_before=ece(c, y, self.n_bins), ece_previous=ece(previous(c), y, self.n_bins),
                ece_after=ece(new(c), y, self.n_bins), ece_after_cv=self._cross_fitted_ece(c, y), skipped=None))
            return True

    def refresh(self, store: FeedbackStore, **filters: Any) -> bool:
        """:meth:`update` with the labelled answers of a feedback store (their raw confidences).

        ``filters`` go to :meth:`certa.serving.feedback.FeedbackStore.labelled` (``method``, ``model``).
        """
        pairs = store.labelled(**filters)
        return self.update(pairs.raw_confidence, pairs.correct)

    def _cross_fitted_ece(self, c: np.ndarray, y: np.ndarray) -> float | None:
        folds = min(self.cv_folds, c.size)
        from sklearn.model_selection import KFold

        mapped = np.empty_like(c)
        try:
            for train, held in KFold(folds, shuffle=True, random_state=0).split(c):
                mapped[held] = fit_map(c[train], y[train], self.kind)(c[held])   # type: ignore[arg-type]
        except InputError:      # a fold with a single class (Platt): no honest estimate
            return None
        return ece(mapped, y, self.n_bins)


def _replace(report: RecalibrationReport, **changes: Any) -> RecalibrationReport:
    return RecalibrationReport(**{**asdict(report), **changes})
