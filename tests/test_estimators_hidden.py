"""The hidden-state density family (issue 18): Mahalanobis and relative Mahalanobis distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from certa.errors import CertaError, InputError
from certa.methods import get_method, method_class, method_names
from certa.methods.hidden.mahalanobis import fit_gaussian, mahalanobis_sq, relative_mahalanobis_sq
from certa.records import Record

# Four states around the origin: variance 0.5 along x, 2 along y (maximum-likelihood, divided by N).
CROSS = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])


def record(id: str, state, correct: float = 0.0) -> Record:
    return Record(id=id, prompt="", response="r", hidden_state=list(map(float, state)), correct=correct)


def test_the_family_is_registered_and_describes_itself():
    assert {"mahalanobis", "relative_mahalanobis"} <= set(method_names())
    for name in ("mahalanobis", "relative_mahalanobis"):
        assert method_class(name).describe() and method_class(name).cost


def test_mahalanobis_by_hand():
    mean, precision = fit_gaussian(CROSS, shrinkage=0.0)
    np.testing.assert_allclose(mean, [0, 0], atol=1e-12)
    np.testing.assert_allclose(precision, np.diag([2.0, 0.5]))
    # (1, 1): 1^2 / 0.5 + 1^2 / 2 = 2.5.
    assert mahalanobis_sq([[1.0, 1.0]], mean, precision)[0] == pytest.approx(2.5)
    # Shrinkage 0.5 toward (trace / D) I = 1.25 I: variances 0.875 and 1.625.
    mean, precision = fit_gaussian(CROSS, shrinkage=0.5)
    assert mahalanobis_sq([[1.0, 1.0]], mean, precision)[0] == pytest.approx(1 / 0.875 + 1 / 1.625)


def test_mahalanobis_agrees_with_scipy_and_ledoit_wolf_with_scikit_learn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)) @ rng.normal(size=(5, 5)) + 3.0
    mean, precision = fit_gaussian(x, shrinkage=0.0)
    np.testing.assert_allclose(precision, np.linalg.inv(np.cov(x.T, bias=True)), rtol=1e-8)
    y = rng.normal(size=(4, 5))
    expected = [scipy_mahalanobis(row, mean, precision) ** 2 for row in y]
    np.testing.assert_allclose(mahalanobis_sq(y, mean, precision), expected)
    _, auto = fit_gaussian(x)  # "auto": Ledoit-Wolf shrinkage
    np.testing.assert_allclose(auto, LedoitWolf().fit(x).precision_, rtol=1e-6)


def test_fewer_states_than_dimensions_still_give_finite_distances():
    rng = np.random.default_rng(1)
    mean, precision = fit_gaussian(rng.normal(size=(10, 40)))
    assert np.all(np.isfinite(mahalanobis_sq(rng.normal(size=(3, 40)), mean, precision)))


def test_fit_gaussian_rejects_what_it_cannot_fit():
    with pytest.raises(InputError, match="at least 2 states"):
        fit_gaussian(np.ones((1, 3)))
    with pytest.raises(InputError, match="shrinkage"):
        fit_gaussian(CROSS, shrinkage=2.0)
    with pytest.raises(CertaError, match="no spread"):
        fit_gaussian(np.ones((4, 3)))


def test_mahalanobis_method_maps_distance_through_one_over_one_plus():
    train = [record(f"t{i}", s) for i, s in enumerate(CROSS)]
    method = get_method("mahalanobis", shrinkage=0.0).fit(train)
    near, far = record("near", [0.5, 0.0]), record("far", [3.0, 3.0])
    # d^2 = 0.25 * 2 = 0.5 and 9 * 2 + 9 * 0.5 = 22.5; D = 2.
    np.testing.assert_allclose(method([near, far]), [1 / (1 + 0.5 / 2), 1 / (1 + 22.5 / 2)])


def test_mahalanobis_can_fit_on_correct_answers_only():
    train = [record("a", [1, 0], 1.0), record("b", [-1, 0], 1.0), record("c", [0, 2], 1.0),
             record("d", [0, -2], 1.0), record("e", [10, 10], 0.0)]
    correct_only = get_method("mahalanobis", fit_on="correct", shrinkage=0.0).fit(train)
    assert correct_only([record("x", [1, 1])])[0] == pytest.approx(1 / (1 + 2.5 / 2))
    with pytest.raises(InputError, match="fit_on"):
        get_method("mahalanobis", fit_on="wrong")


def test_relative_mahalanobis_by_hand():
    correct = [record(f"c{i}", s + [2.0, 0.0], 1.0) for i, s in enumerate(CROSS)]
    wrong = [record(f"w{i}", s - [2.0, 0.0], 0.0) for i, s in enumerate(CROSS)]
    method = get_method("relative_mahalanobis", shrinkage=0.0).fit(correct + wrong)
    x = np.array([[1.0, 1.0]])
    fg = fit_gaussian(CROSS + [2.0, 0.0], 0.0)
    bg = fit_gaussian(np.r_[CROSS + [2.0, 0.0], CROSS - [2.0, 0.0]], 0.0)
    rmd = relative_mahalanobis_sq(x, fg, bg)[0]
    # foreground: mean (2, 0), variances 0.5, 2 -> (1-2)^2/0.5 + 1/2 = 2.5;
    # background (all 8): mean 0, var_x = (9+1+4+4+1+9+4+4)/8 = 4.5, var_y = 16/8 = 2, no covariance
    # -> 1/4.5 + 1/2 = 0.722222; RMD = 2.5 - 0.722222 = 1.777778.
    assert rmd == pytest.approx(2.5 - (1 / 4.5 + 0.5))
    assert method([record("x", x[0])])[0] == pytest.approx(1 / (1 + math.exp(rmd / 2)))
    toward_correct, toward_wrong = method([record("p", [2.0, 0.0]), record("n", [-2.0, 0.0])])
    assert toward_correct > 0.5 > toward_wrong


def test_relative_mahalanobis_separates_correct_from_wrong_states():
    rng = np.random.default_rng(3)

    def states(n, seed_shift):
        correct = rng.random(n) < 0.5
        x = rng.normal(size=(n, 8))
        x[correct, 0] += 2.5  # correct answers sit along one direction...
        x[~correct] *= 1.8    # ...wrong ones are more spread out
        return [record(f"{seed_shift}{i}", row, float(c)) for i, (row, c) in enumerate(zip(x, correct, strict=True))]

    train, test = states(300, "t"), states(300, "s")
    labels = [r.correct for r in test]
    assert roc_auc_score(labels, get_method("relative_mahalanobis").fit(train)(test)) > 0.9
    assert roc_auc_score(labels, get_method("mahalanobis", fit_on="correct").fit(train)(test)) > 0.8


def test_hidden_methods_explain_what_is_missing():
    with pytest.raises(CertaError, match="must be fitted"):
        get_method("mahalanobis")([record("a", [1, 2])])
    with pytest.raises(CertaError, match="1 correct training record"):
        get_method("relative_mahalanobis").fit([record("a", [1, 2], 1.0), record("b", [2, 1], 0.0),
                                                record("c", [0, 1], 0.0)])
    method = get_method("mahalanobis").fit([record(f"t{i}", s) for i, s in enumerate(CROSS)])
    with pytest.raises(CertaError, match="size 3.*size 2"):
        method([record("x", [1, 2, 3])])
    with pytest.raises(CertaError, match="'y'.*hidden_state"):
        method([Record(id="y", prompt="", response="r")])
