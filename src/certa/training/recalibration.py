"""The final recalibration of a trained read-out: c' = sigmoid(a · logit(c) + b), fitted on held-out answers.

Pure functions: ``fit_platt`` learns (a, b) by L2-regularised logistic
regression (the penalty pulls a toward 0, so a read-out that does not rank the
held-out answers is flattened toward their accuracy instead of trusted), and
``apply_recalibration`` applies a stored map. The map is monotone in c when
a ≥ 0, so it never changes how a read-out ranks answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

_EPS = 1e-6


def _logit(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, dtype=float), _EPS, 1 - _EPS)
    return np.log(c) - np.log1p(-c)


def fit_platt(confidences: np.ndarray, correct: np.ndarray, *, strength: float = 1.0) -> dict[str, Any]:
    """(a, b) of the Platt map from read-outs to correctness; ``strength`` is the L2 penalty on a (1/C)."""
    from sklearn.linear_model import LogisticRegression

    x = _logit(confidences)[:, None]
    y = (np.asarray(correct, dtype=float) >= 0.5).astype(int)
    model = LogisticRegression(C=1.0 / strength).fit(x, y)
    a = max(float(model.coef_[0, 0]), 0.0)  # a negative slope would invert the read-out's ranking
    b = float(model.intercept_[0]) if a > 0 else float(_logit(np.array([y.mean()]))[0])
    return {"kind": "platt", "a": a, "b": b}


def apply_recalibration(confidences: np.ndarray, recalibration: Mapping[str, Any] | None) -> np.ndarray:
    """Apply a stored map (``None`` or ``{"kind": "none"}``: the read-out as it is)."""
    c = np.asarray(confidences, dtype=float)
    if not recalibration or recalibration.get("kind", "none") == "none":
        return c
    z = recalibration["a"] * _logit(c) + recalibration["b"]
    return 0.5 * (1.0 + np.tanh(0.5 * z))
