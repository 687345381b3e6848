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

#: The probe strengths ``probe_c="cv"`` chooses among (scikit-learn's ``C``: inverse L2 strength).
PROBE_C_GRID: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def _probe(C: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))


def _folds(labels: np.ndarray, folds: int, seed: int):
    """Stratified folds when every fold can hold a sample of each class; otherwise plain shuffled folds."""
    from sklearn.model_selection import KFold, StratifiedKFold

    minority = int(min(labels.sum(), len(labels) - labels.sum()))
    k = max(2, min(folds, len(labels)))
    return StratifiedKFold(k, shuffle=True, random_state=seed) if minority >= k else KFold(k, shuffle=True,
                                                                                             random_state=seed)


def choose_probe_c(hidden: np.ndarray, correct: np.ndarray, *, folds: int = 5, seed: int = 0,
                   grid: Sequence[float] = PROBE_C_GRID) -> float:
    """The probe strength in ``grid`` with the lowest cross-validated Brier score on these samples.

    With few features per sample scikit-learn's default ``C=1`` can fit noise: on 600 pooled answers of
    SmolLM2-135M (576 features) its out-of-fold Brier score was worse than a constant's (docs/grace.md).
    Fewer samples of a class than folds: ``1.0``, scikit-learn's default (too few to choose by).
    """
    from sklearn.model_selection import GridSearchCV

    labels = (np.asarray(correct, dtype=float) >= 0.5).astype(int)
    if int(min(labels.sum(), len(labels) - labels.sum())) < folds:
        return 1.0
    search = GridSearchCV(_probe(1.0), {"logisticregression__C": list(grid)}, scoring="neg_brier_score",
                          cv=_folds(labels, folds, seed), refit=False)
    search.fit(np.asarray(hidden, dtype=float), labels)
    return float(search.best_params_["logisticregression__C"])


def out_of_fold_scores(hidden: np.ndarray, correct: np.ndarray, *, folds: int = 5, seed: int = 0,
                       C: float = 1.0) -> np.ndarray:
    """P(correct) for each sample from a logistic-regression probe fitted on the other folds.

    ``correct`` may hold partial credit; the probe learns ``correct >= 0.5``.
    With a single class present every score is that class's rate.
    """
    labels = (np.asarray(correct, dtype=float) >= 0.5).astype(int)
    n = len(labels)
    if n == 0 or labels.min() == labels.max():
        return np.full(n, float(labels.mean()) if n else 0.0)
    scores = np.empty(n)
    for train_idx, test_idx in _folds(labels, folds, seed).split(hidden, labels):
        train_labels = labels[train_idx]
        if train_labels.min() == train_labels.max():
            scores[test_idx] = train_labels[0]
            continue
        probe = _probe(C)
        probe.fit(hidden[train_idx], train_labels)
        scores[test_idx] = probe.predict_proba(hidden[test_idx])[:, 1]
    return scores


def equal_mass_bin_targets(scores: np.ndarray, correct: np.ndarray, bins: int = 10) -> np.ndarray:
    """Sort by score, cut into ``bins`` groups of (nearly) equal size, return each sample's group accuracy.

    Tied scores share the group of the first of them: cutting through a tie would split equal scores by
    input order (a fold scored as one constant, say) and hand them back their own labels.
    """
    scores = np.asarray(scores, dtype=float)
    correct = np.asarray(correct, dtype=float)
    n = len(scores)
    if n == 0:
        return np.empty(0)
    position_group = np.empty(n, dtype=np.int64)
    for k, positions in enumerate(np.array_split(np.arange(n), min(bins, n))):
        position_group[positions] = k
    group = position_group[np.searchsorted(np.sort(scores), scores, side="left")]
    sums = np.bincount(group, weights=correct)
    counts = np.bincount(group)
    return sums[group] / counts[group]


def soft_targets(hidden: np.ndarray | Sequence[Sequence[float]], correct: Sequence[float], *,
                 kind: TargetKind = "soft", bins: int = 10, folds: int = 5, seed: int = 0,
                 C: float = 1.0) -> np.ndarray:
    """Training targets in [0, 1] for each sample.

    ``kind="soft"``: out-of-fold probe scores (probe strength ``C``) → ``bins`` equal-mass bins → bin
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
    scores = out_of_fold_scores(hidden_arr, correct_arr, folds=folds, seed=seed, C=C)
    return equal_mass_bin_targets(scores, correct_arr, bins=bins)
