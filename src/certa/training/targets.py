"""Soft, accuracy-linked training targets for confidence training (the ActCab recipe).

A logistic-regression probe on the base model's hidden states predicts
correctness with K-fold cross-fitting, so every sample gets a score from a
probe that never saw it. Samples are grouped into equal-mass bins by that
score and each sample's target is the empirical accuracy of its bin: a
confidence that is calibrated by construction and still separates easy from
hard questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from ..errors import InputError

TargetKind = Literal["soft", "binary"]


def out_of_fold_scores(hidden: np.ndarray, correct: np.ndarray, *, folds: int = 5, seed: int = 0,
                       C: float = 1.0) -> np.ndarray:
    """P(correct) for each sample from a logistic-regression probe fitted on the other folds.

    ``correct`` may hold partial credit; the probe learns ``correct >= 0.5``.
    With a single class present every score is that class's rate.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = (np.asarray(correct, dtype=float) >= 0.5).astype(int)
    n = len(labels)
    minority = int(min(labels.sum(), n - labels.sum()))
    if minority == 0:
        return np.full(n, float(labels.mean()))
    k = max(2, min(folds, n))
    # Stratify when every fold can hold a sample of each class; otherwise plain shuffled folds.
    splitter = (StratifiedKFold(k, shuffle=True, random_state=seed) if minority >= k
                else KFold(k, shuffle=True, random_state=seed))
    scores = np.empty(n)
    for train_idx, test_idx in splitter.split(hidden, labels):
        train_labels = labels[train_idx]
        if train_labels.min() == train_labels.max():
            scores[test_idx] = train_labels[0]
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
        probe.fit(hidden[train_idx], train_labels)
        scores[test_idx] = probe.predict_proba(hidden[test_idx])[:, 1]
    return scores


def equal_mass_bin_targets(scores: np.ndarray, correct: np.ndarray, bins: int = 10) -> np.ndarray:
    """Sort by score, cut into ``bins`` groups of (nearly) equal size, return each sample's group accuracy."""
    scores = np.asarray(scores, dtype=float)
    correct = np.asarray(correct, dtype=float)
    order = np.argsort(scores, kind="stable")
    targets = np.empty(len(scores))
    for group in np.array_split(order, min(bins, len(scores))):
        targets[group] = correct[group].mean()
    return targets


def soft_targets(hidden: np.ndarray | Sequence[Sequence[float]], correct: Sequence[float], *,
                 kind: TargetKind = "soft", bins: int = 10, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Training targets in [0, 1] for each sample.

    ``kind="soft"``: out-of-fold probe scores → ``bins`` equal-mass bins → bin
    accuracy. ``kind="binary"``: the correctness itself.
    """
    correct_arr = np.asarray(correct, dtype=float)
    if kind == "binary":
        return correct_arr.copy()
    if kind != "soft":
        raise InputError(f"targets: kind is {kind!r}; expected 'soft' or 'binary'")
    hidden_arr = np.asarray(hidden, dtype=float)
    if hidden_arr.ndim != 2 or len(hidden_arr) != len(correct_arr):
        raise InputError(f"targets: expected one hidden-state vector per sample, got shape {hidden_arr.shape} "
                         f"for {len(correct_arr)} samples")
    if bins < 1:
        raise InputError(f"targets: bins must be >= 1, got {bins}")
    scores = out_of_fold_scores(hidden_arr, correct_arr, folds=folds, seed=seed)
    return equal_mass_bin_targets(scores, correct_arr, bins=bins)
