"""Monotone maps from a raw confidence to a calibrated one: Platt and isotonic, pure and JSON-serialisable.

- ``"platt"``: ``sigmoid(a · logit(raw) + b)`` fitted by logistic regression (Platt, 1999,
  "Probabilistic outputs for support vector machines"); partial credit is fitted as a soft target.
  ``strength`` adds an L2 penalty on ``a`` (it pulls a read-out that does not rank the answers toward
  their mean accuracy) and ``nonnegative`` keeps the map from inverting a ranking.
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

Kind = Literal["isotonic", "platt"]
KINDS: tuple[str, ...] = ("isotonic", "platt")
_EPS = 1e-6   # keeps logit finite for raw confidences of exactly 0 or 1




@dataclass(frozen=True)
class CalibrationMap:
    """A fitted map from raw confidence to calibrated confidence; immutable and JSON-serialisable.

    ``params``: ``{"x": [...], "y": [...]}`` for isotonic (the fitted points, interpolated linearly
    and clipped at the ends), ``{"a": ..., "b": ...}`` for Platt, ``{}`` for the identity.
    """

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    n_labels: int = 0
    fitted_at: float | None = None

    def __call__(self, conf: ArrayLike) -> np.ndarray:
        c = as_unit_array(np.atleast_1d(conf), "confidence")
        if self.kind == "identity":
            return c.copy()
        if self.kind == "isotonic":
            return np.interp(c, self.params["x"], self.params["y"])
        if self.kind == "platt":
            return expit(self.params["a"] * logit(c) + self.params["b"])
        raise UnknownNameError("calibration map", self.kind, ("identity", *KINDS))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": {k: list(v) if isinstance(v, (list, tuple, np.ndarray)) else v
                                              for k, v in self.params.items()},
                "n_labels": self.n_labels, "fitted_at": self.fitted_at}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationMap:
        kind = data.get("kind")
        if kind not in ("identity", *KINDS):
            raise UnknownNameError("calibration map", str(kind), ("identity", *KINDS))
        params = dict(data.get("params") or {})
        needed = {"isotonic": ("x", "y"), "platt": ("a", "b")}.get(kind, ())
        missing = [k for k in needed if k not in params]
        if missing:
            raise InputError(f"{kind} calibration map is missing the parameter {missing[0]!r}")
        if kind == "isotonic":
            params = {"x": tuple(float(v) for v in params["x"]), "y": tuple(float(v) for v in params["y"])}
        elif kind == "platt":
            params = {"a": float(params["a"]), "b": float(params["b"])}
        return cls(kind, params, int(data.get("n_labels", 0)), data.get("fitted_at"))


IDENTITY = CalibrationMap("identity")


def logit(c: ArrayLike) -> np.ndarray:
    """log(c / (1 - c)), with c kept 1e-6 away from 0 and 1 so it stays finite."""
    clipped = np.clip(np.asarray(c, dtype=float), _EPS, 1.0 - _EPS)
    return np.log(clipped) - np.log1p(-clipped)


def expit(z: ArrayLike) -> np.ndarray:
    """The logistic function, without overflow for large |z|."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=float)))


def fit_map(raw_conf: ArrayLike, correct: ArrayLike, kind: Kind = "isotonic", *, strength: float = 0.0,
            nonnegative: bool = False) -> CalibrationMap:
    """Fit an isotonic or Platt map from raw confidences to grades in [0, 1] (partial credit allowed).

    Platt needs both some credit and some error among the grades (an InputError otherwise);
    isotonic fits a constant map when all grades agree. ``strength`` (Platt) is the L2 penalty on the
    slope (0: nearly none); ``nonnegative`` (Platt) replaces a negative slope by the constant map at
    the mean grade.
    """
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

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
        raise InputError(f"Platt scaling needs both correct and wrong answers, but all {y.size} labels are {side}")
    # Soft targets: each answer becomes a positive row weighted by its credit and a negative row
    # weighted by the rest, which minimises the cross-entropy to the grade. Unregularised by default:
    # two parameters cannot overfit much, and a penalty pulls the slope toward 0.
    z = logit(c)[:, None]
    features = np.concatenate([z, z])
    labels = np.r_[np.ones(c.size), np.zeros(c.size)]
    weights = np.r_[y, 1.0 - y]
    keep = weights > 0
    model = LogisticRegression(C=1.0 / strength if strength > 0 else 1e6, max_iter=1000)
    model.fit(features[keep], labels[keep], sample_weight=weights[keep])
    a, b = float(model.coef_[0, 0]), float(model.intercept_[0])
    if nonnegative and a < 0:
        a, b = 0.0, float(logit(np.array([float(y.mean())]))[0])
    return CalibrationMap("platt", {"a": a, "b": b}, int(c.size), now)
