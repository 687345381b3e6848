"""Fitting helpers shared by the methods that learn from graded records (probe, Apricot, calibrators)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import CertaError, InputError
from ..records import Record
from .base import ConfidenceMethod


def correctness(records: Sequence[Record]) -> np.ndarray:
    """The graded correctness of each record, as floats in [0, 1]."""
    return np.array([float(r.correct) for r in records])


def fit_soft_logistic(features: Any, targets: np.ndarray, model: Any, *, who: str) -> Any:
    """Fit a logistic model (or a pipeline ending in one) to targets in [0, 1].

    Binary targets give ordinary logistic regression. Partial credit (0.6)
    becomes two weighted copies of the row, labelled 1 (weight 0.6) and 0
    (weight 0.4), which minimises the cross-entropy to the soft target.
    """
    import scipy.sparse as sp
    from sklearn.pipeline import Pipeline

    targets = np.asarray(targets, dtype=float)
    if targets.size == 0:
        raise InputError(f"{who}: no records to fit on")
    if not (targets > 0).any() or not (targets < 1).any():
        side = "correct" if (targets > 0).all() else "incorrect"
        raise CertaError(f"{who}: every training record is {side}; fitting needs both correct and incorrect ones")
    both = sp.vstack([features, features]).tocsr() if sp.issparse(features) else \
        np.concatenate([features, features])
    labels = np.r_[np.ones(len(targets)), np.zeros(len(targets))]
    weights = np.r_[targets, 1.0 - targets]
    keep = weights > 0
    last_step = model.steps[-1][0] if isinstance(model, Pipeline) else None
    weight_arg = {f"{last_step}__sample_weight" if last_step else "sample_weight": weights[keep]}
    return model.fit(both[keep], labels[keep], **weight_arg)


def not_fitted(method: ConfidenceMethod) -> CertaError:
    """The error for scoring with a method that has not been fitted yet."""
    return CertaError(f"method {method.name!r} must be fitted on graded training records before scoring")
