"""Monotone maps from a raw confidence to a calibrated one: Platt, beta and isotonic, pure and JSON-serialisable.

- ``"platt"``: ``sigmoid(a · logit(raw) + b)`` fitted by logistic regression (Platt, 1999,
  "Probabilistic outputs for support vector machines"); partial credit is fitted as a soft target.
  ``strength`` adds an L2 penalty on ``a`` (it pulls a read-out that does not rank the answers toward
  their mean accuracy) and ``nonnegative`` keeps the map from inverting a ranking.
- ``"beta"``: ``sigmoid(a · ln(raw) − b · ln(1 − raw) + c)`` with ``a, b ≥ 0`` (beta calibration: Kull,
  Silva Filho & Flach, 2017, "Beta calibration"). Platt's single slope must serve both tails at once, so a
  few raw confidences near 0 that are sometimes right flatten it everywhere; beta fits each tail its own
  slope. A negative coefficient is dropped and the other refitted, as the paper does.
- ``"isotonic"``: isotonic regression, the best non-decreasing step map from score to accuracy
  (Zadrozny & Elkan, 2002; scikit-learn's ``IsotonicRegression``, applied by linear interpolation
  between its fitted points, as scikit-learn does).

Used by the calibrator methods (``x+platt``, ``x+isotonic``), by training's final recalibration of a
trained read-out, and by the server's online recalibration from feedback.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from .errors import InputError, UnknownNameError
from .metrics import as_unit_array, check_inputs

Kind = Literal["isotonic", "platt", "beta"]
KINDS: tuple[str, ...] = ("isotonic", "platt", "beta")
#: Maps that are not fitted by :func:`fit_map`: the identity, and the constant mean grade ``choose_map`` falls back to.
_UNFITTED = ("identity", "constant")
_EPS = 1e-6   # keeps logit finite for raw confidences of exactly 0 or 1




@dataclass(frozen=True)
class CalibrationMap:
    """A fitted map from raw confidence to calibrated confidence; immutable and JSON-serialisable.

    ``params``: ``{"x": [...], "y": [...]}`` for isotonic (the fitted points, interpolated linearly
    and clipped at the ends), ``{"a": ..., "b": ...}`` for Platt, ``{"a": ..., "b": ..., "c": ...}`` for beta, ``{}`` for the identity.
    """

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    n_labels: int = 0
    fitted_at: float | None = None

    def __call__(self, conf: ArrayLike) -> np.ndarray:
        c = as_unit_array(np.atleast_1d(conf), "confidence")
        if self.kind == "identity":
            return c.copy()
        if self.kind == "constant":
            return np.full_like(c, self.params["p"])
        if self.kind == "isotonic":
            return np.interp(c, self.params["x"], self.params["y"])
        if self.kind == "platt":
            return expit(self.params["a"] * logit(c) + self.params["b"])
        if self.kind == "beta":
            return expit(_beta_features(c) @ np.array([self.params["a"], self.params["b"]]) + self.params["c"])
        raise UnknownNameError("calibration map", self.kind, (*_UNFITTED, *KINDS))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": {k: list(v) if isinstance(v, (list, tuple, np.ndarray)) else v
                                              for k, v in self.params.items()},
                "n_labels": self.n_labels, "fitted_at": self.fitted_at}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationMap:
        kind = data.get("kind")
        if kind not in (*_UNFITTED, *KINDS):
            raise UnknownNameError("calibration map", str(kind), (*_UNFITTED, *KINDS))
        params = dict(data.get("params") or {})
        needed = {"isotonic": ("x", "y"), "platt": ("a", "b"), "beta": ("a", "b", "c"), "constant": ("p",)}.get(kind, ())
        missing = [k for k in needed if k not in params]
        if missing:
            raise InputError(f"{kind} calibration map is missing the parameter {missing[0]!r}")
        if kind == "isotonic":
            params = {"x": tuple(float(v) for v in params["x"]), "y": tuple(float(v) for v in params["y"])}
        elif kind in ("platt", "beta", "constant"):
            params = {k: float(params[k]) for k in needed}
        return cls(kind, params, int(data.get("n_labels", 0)), data.get("fitted_at"))


IDENTITY = CalibrationMap("identity")


def _soft_logistic(features: np.ndarray, y: np.ndarray, strength: float) -> tuple[list[float], float]:
    """Logistic regression of grades ``y`` in [0, 1] on ``features``: (coefficients, intercept).

    Each answer becomes a positive row weighted by its credit and a negative row weighted by the
    rest, which minimises the cross-entropy to the grade. Unregularised unless ``strength`` > 0 (an
    L2 penalty on the coefficients): a few parameters cannot overfit much, and a penalty pulls the
    map toward the mean grade.
    """
    from sklearn.linear_model import LogisticRegression

    rows = np.concatenate([features, features])
    labels = np.r_[np.ones(len(y)), np.zeros(len(y))]
    weights = np.r_[y, 1.0 - y]
    keep = weights > 0
    model = LogisticRegression(C=1.0 / strength if strength > 0 else 1e6, max_iter=1000)
    model.fit(rows[keep], labels[keep], sample_weight=weights[keep])
    return [float(v) for v in model.coef_[0]], float(model.intercept_[0])


def _beta_features(c: np.ndarray) -> np.ndarray:
    """``[ln c, −ln(1 − c)]`` per confidence (c kept 1e-6 away from 0 and 1)."""
    clipped = np.clip(np.asarray(c, dtype=float), _EPS, 1.0 - _EPS)
    return np.column_stack([np.log(clipped), -np.log1p(-clipped)])


def _fit_beta(c: np.ndarray, y: np.ndarray, strength: float, constant: float) -> dict[str, float]:
    """Beta calibration's ``a, b ≥ 0`` and ``c``: a negative coefficient is dropped and the other refitted
    alone; with neither usable the map is the constant mean grade."""
    features = _beta_features(c)
    (a, b), intercept = _soft_logistic(features, y, strength)
    if a >= 0 and b >= 0:
        return {"a": a, "b": b, "c": intercept}
    if a >= 0 or b >= 0:
        keep = 0 if a >= 0 else 1
        (coef,), intercept = _soft_logistic(features[:, [keep]], y, strength)
        if coef >= 0:
            return {"a": coef * (keep == 0), "b": coef * (keep == 1), "c": intercept}
    return {"a": 0.0, "b": 0.0, "c": constant}


def logit(c: ArrayLike) -> np.ndarray:
    """log(c / (1 - c)), with c kept 1e-6 away from 0 and 1 so it stays finite."""
    clipped = np.clip(np.asarray(c, dtype=float), _EPS, 1.0 - _EPS)
    return np.log(clipped) - np.log1p(-clipped)


def expit(z: ArrayLike) -> np.ndarray:
    """The logistic function, without overflow for large |z|."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=float)))


def fit_map(raw_conf: ArrayLike, correct: ArrayLike, kind: Kind = "isotonic", *, strength: float = 0.0,
            nonnegative: bool = False) -> CalibrationMap:
    """Fit an isotonic, Platt or beta map from raw confidences to grades in [0, 1] (partial credit allowed).

    Platt and beta need both some credit and some error among the grades (an InputError otherwise);
    isotonic fits a constant map when all grades agree. ``strength`` (Platt, beta) is the L2 penalty on
    the coefficients (0: nearly none); ``nonnegative`` (Platt) replaces a negative slope by the constant
    map at the mean grade (beta keeps its coefficients non-negative always).
    """
    from sklearn.isotonic import IsotonicRegression

    if kind not in KINDS:
        raise UnknownNameError("calibration map", str(kind), KINDS)
    c, y = check_inputs(raw_conf, correct)
    now = time.time()
    if kind == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(c, y)
        params = {"x": tuple(map(float, iso.X_thresholds_)), "y": tuple(map(float, iso.y_thresholds_))}
        return CalibrationMap("isotonic", params, int(c.size), now)
    if not (y > 0).any() or not (y < 1).any():
        side = "correct" if (y > 0).all() else "wrong"
        raise InputError(f"{kind.capitalize()} scaling needs both correct and wrong answers, but all {y.size} labels are {side}")
    constant = float(logit(np.array([float(y.mean())]))[0])
    if kind == "beta":
        return CalibrationMap("beta", _fit_beta(c, y, strength, constant), int(c.size), now)
    (a,), b = _soft_logistic(logit(c)[:, None], y, strength)
    if nonnegative and a < 0:
        a, b = 0.0, constant
    return CalibrationMap("platt", {"a": a, "b": b}, int(c.size), now)


def choose_map(raw_conf: ArrayLike, correct: ArrayLike, kinds: tuple[str, ...] = ("platt", "beta"), *,
               folds: int = 5, strength: float = 1.0, seed: int = 0,
               base_rate: float | None = None) -> tuple[CalibrationMap, dict[str, float]]:
    """The map of a trained read-out, chosen on held-out labels by out-of-fold Brier score; refitted on all.

    Each candidate is fitted on ``folds - 1`` stratified folds and scored on the one left out. A map
    among ``kinds`` replaces the identity only when its mean per-answer gain exceeds one standard error
    of that gain: a map that fits noise (or, like a log-loss fit pulled by a few confident mistakes,
    fits the wrong thing) must not replace confidences that are already about right. And when the
    choice does no better than the constant mean grade, the constant is returned: a read-out with no
    signal on these answers (a model at chance on a multiple-choice set) would otherwise spread
    confidences that only look informative. That constant is ``base_rate`` when given (the accuracy of
    every training answer: a constant needs no held-out answers, and more answers estimate it better),
    else the held-out labels' mean. Returns the map and each candidate's out-of-fold Brier score; with
    fewer than ``folds`` labels of either kind the identity is kept.
    """
    from sklearn.model_selection import StratifiedKFold

    c, y = check_inputs(raw_conf, correct)
    hard = y >= 0.5
    if min(int(hard.sum()), int((~hard).sum())) < folds:
        return IDENTITY, {}
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(c, hard))
    identity_error = (c - y) ** 2
    brier = {"identity": float(identity_error.mean())}
    best, best_gain = "identity", 0.0
    constant = np.empty_like(c)
    for fit_rows, held_rows in splits:
        constant[held_rows] = y[fit_rows].mean()
    brier["constant"] = float(np.mean((constant - y) ** 2))
    for kind in kinds:
        out = np.empty_like(c)
        for fit_rows, held_rows in splits:
            out[held_rows] = fit_map(c[fit_rows], y[fit_rows], kind, strength=strength, nonnegative=True)(c[held_rows])
        gain = identity_error - (out - y) ** 2
        brier[kind] = float(np.mean((out - y) ** 2))
        if gain.mean() > max(best_gain, gain.std(ddof=1) / np.sqrt(gain.size)):
            best, best_gain = kind, float(gain.mean())
    if brier[best] >= brier["constant"]:
        p = float(y.mean()) if base_rate is None else float(base_rate)
        return CalibrationMap("constant", {"p": p}, int(c.size), time.time()), brier
    if best == "identity":
        return IDENTITY, brier
    return fit_map(c, y, best, strength=strength, nonnegative=True), brier
