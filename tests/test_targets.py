"""Soft targets: out-of-fold probe scores, equal-mass bins, bin accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from certa.errors import InputError
from certa.training.targets import (
    PROBE_C_GRID,
    choose_probe_c,
    equal_mass_bin_targets,
    out_of_fold_scores,
    soft_targets,
)


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(300, 4))
    p = 1 / (1 + np.exp(-3 * hidden[:, 0]))
    correct = (rng.random(300) < p).astype(float)
    return hidden, correct, p


def test_out_of_fold_scores_match_sklearn_cross_val_predict(synthetic):
    hidden, correct, _ = synthetic
    ours = out_of_fold_scores(hidden, correct, folds=5, seed=3)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    ref = cross_val_predict(probe, hidden, correct.astype(int), method="predict_proba",
                            cv=StratifiedKFold(5, shuffle=True, random_state=3))[:, 1]
    np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_equal_mass_bins_hand_example():
    scores = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])
    correct = np.array([1, 0, 1, 0, 1, 1], dtype=float)
    # sorted by score: 0.1(0) 0.2(1) | 0.3(0) 0.5(1) | 0.7(1) 0.9(1) → bin accuracies 0.5, 0.5, 1.0
    targets = equal_mass_bin_targets(scores, correct, bins=3)
    np.testing.assert_allclose(targets, [1.0, 0.5, 0.5, 0.5, 1.0, 0.5])


def test_tied_scores_share_a_bin_instead_of_getting_their_labels_back():
    # a fold whose training part had one class is scored as one constant: those answers are tied
    scores = np.r_[np.full(20, 0.5), np.linspace(0.6, 0.9, 10)]
    correct = np.r_[np.ones(10), np.zeros(10), np.ones(10)]
    targets = equal_mass_bin_targets(scores, correct, bins=3)
    np.testing.assert_allclose(targets[:20], 0.5)          # not 1 for the first ten and 0 for the next
    np.testing.assert_allclose(targets[20:], 1.0)
    np.testing.assert_allclose(equal_mass_bin_targets(scores[::-1], correct[::-1], bins=3), targets[::-1])


def test_soft_targets_are_binned_accuracies(synthetic):
    hidden, correct, p = synthetic
    targets = soft_targets(hidden, correct, bins=10, seed=0)
    values = np.unique(targets)
    assert 2 <= len(values) <= 10
    # each target is the accuracy of the samples sharing it, so the overall mean is preserved
    for v in values:
        assert correct[targets == v].mean() == pytest.approx(v)
    assert targets.mean() == pytest.approx(correct.mean())
    # and they track the true probability of being correct
    assert np.corrcoef(targets, p)[0, 1] > 0.6


def test_binary_targets_and_single_class():
    hidden = np.zeros((6, 2))
    assert soft_targets(hidden, [1, 0, 1, 0, 0, 1], kind="binary").tolist() == [1, 0, 1, 0, 0, 1]
    np.testing.assert_allclose(soft_targets(hidden, [1, 1, 1, 1, 1, 1]), 1.0)


def test_errors_name_the_problem():
    with pytest.raises(InputError, match="one hidden-state vector per sample"):
        soft_targets(np.zeros((3, 2)), [1, 0])
    with pytest.raises(InputError, match="kind"):
        soft_targets(np.zeros((2, 2)), [1, 0], kind="fuzzy")


@pytest.fixture(scope="module")
def noisy():
    """One informative feature among 200 noise features, 200 samples: a probe at C=1 fits the noise."""
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(200, 201))
    correct = (rng.random(200) < 1 / (1 + np.exp(-2 * hidden[:, 0]))).astype(float)
    return hidden, correct


def test_a_cross_validated_probe_strength_fits_noise_less_than_sklearns_default(noisy):
    hidden, correct = noisy
    chosen = choose_probe_c(hidden, correct, folds=5, seed=0)
    assert chosen in PROBE_C_GRID and chosen < 1.0

    def brier(C):  # out of fold, on folds of another seed than the choice used
        return np.mean((out_of_fold_scores(hidden, correct, folds=5, seed=7, C=C) - correct) ** 2)

    assert brier(chosen) < brier(1.0) - 0.02


def test_the_probe_strength_reaches_the_targets(noisy):
    hidden, correct = noisy
    strong = soft_targets(hidden, correct, seed=0, C=1e-3)
    expected = equal_mass_bin_targets(out_of_fold_scores(hidden, correct, seed=0, C=1e-3), correct)
    np.testing.assert_array_equal(strong, expected)
    assert not np.array_equal(strong, soft_targets(hidden, correct, seed=0))


def test_too_few_of_a_class_to_choose_by_keeps_the_default():
    hidden = np.random.default_rng(2).normal(size=(40, 3))
    correct = np.zeros(40)
    correct[:3] = 1  # three correct answers cannot fill five folds
    assert choose_probe_c(hidden, correct, folds=5) == 1.0
