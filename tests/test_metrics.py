"""certa.metrics: hand-computed cases, scikit-learn cross-checks and input errors."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from certa import metrics
from certa.errors import InputError, UnknownNameError

# Six answers used by the hand-computed binning cases below.
HAND_CONF = np.array([0.10, 0.20, 0.25, 0.70, 0.75, 0.95])
HAND_CORRECT = np.array([0, 1, 1, 0, 0, 1], dtype=float)


def random_case(seed: int, n: int = 300, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Confidences with some signal; ``ties`` rounds them to one decimal so many values repeat."""
    rng = np.random.default_rng(seed)
    conf = rng.random(n)
    if ties:
        conf = np.round(conf, 1)
    correct = (rng.random(n) < 0.2 + 0.6 * conf).astype(float)
    return conf, correct


# --------------------------------------------------------------------------- scikit-learn agreement


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ranking_and_scoring_rules_match_sklearn(seed, ties):
    conf, correct = random_case(seed, ties=ties)
    assert metrics.auroc(conf, correct) == pytest.approx(roc_auc_score(correct, conf), abs=1e-12)
    assert metrics.auprc(conf, correct) == pytest.approx(average_precision_score(correct, conf), abs=1e-12)
    assert metrics.brier(conf, correct) == pytest.approx(brier_score_loss(correct, conf), abs=1e-12)
    inner = np.clip(conf, 0.01, 0.99)  # keep away from the clipping region, where the eps differ
    assert metrics.nll(inner, correct) == pytest.approx(log_loss(correct, inner), abs=1e-12)


@pytest.mark.parametrize("seed", [5, 6])
def test_ranking_metrics_match_sklearn_on_tiny_samples(seed):
    rng = np.random.default_rng(seed)
    conf = rng.choice([0.2, 0.5, 0.8], size=7)
    correct = np.array([1, 0, 1, 1, 0, 0, 1], dtype=float)
    assert metrics.auroc(conf, correct) == pytest.approx(roc_auc_score(correct, conf))
    assert metrics.auprc(conf, correct) == pytest.approx(average_precision_score(correct, conf))


def test_ranking_metrics_threshold_partial_credit_at_one_half():
    conf = np.array([0.9, 0.8, 0.4, 0.3, 0.6])
    soft = np.array([0.5, 0.7, 0.49, 0.0, 0.2])
    hard = (soft >= 0.5).astype(float)
    assert metrics.auroc(conf, soft) == metrics.auroc(conf, hard) == pytest.approx(roc_auc_score(hard, conf))
    assert metrics.auprc(conf, soft) == pytest.approx(average_precision_score(hard, conf))


@pytest.mark.parametrize("correct", [np.ones(5), np.zeros(5)])
def test_ranking_metrics_are_nan_for_a_single_class(correct):
    conf = np.linspace(0.1, 0.9, 5)
    assert math.isnan(metrics.auroc(conf, correct))
    assert math.isnan(metrics.auprc(conf, correct))


def test_nll_clips_a_fully_confident_mistake():
    assert metrics.nll([1.0], [0.0]) == pytest.approx(-math.log(1e-7))
    assert metrics.nll([0.0, 1.0], [0.0, 1.0]) == pytest.approx(-math.log(1 - 1e-7))


# --------------------------------------------------------------------------- binned calibration


def test_ece_equal_width_hand_case():
    # 4 equal-width bins [0,.25) [.25,.5) [.5,.75) [.75,1]; 0.25 and 0.75 sit on an edge and go up.
    #   bin 0: {.10 ✗, .20 ✓}  conf .15,  acc .5, gap .35, weight 2/6
    #   bin 1: {.25 ✓}          conf .25,  acc 1,  gap .75, weight 1/6
    #   bin 2: {.70 ✗}          conf .70,  acc 0,  gap .70, weight 1/6
    #   bin 3: {.75 ✗, .95 ✓}   conf .85,  acc .5, gap .35, weight 2/6
    # ECE = (2*.35 + .75 + .70 + 2*.35) / 6 = 2.85 / 6 = .475 ; MCE = .75
    assert metrics.ece(HAND_CONF, HAND_CORRECT, n_bins=4) == pytest.approx(0.475)
    assert metrics.mce(HAND_CONF, HAND_CORRECT, n_bins=4) == pytest.approx(0.75)


def test_ece_equal_mass_hand_case():
    # 3 equal-mass bins of two answers each, in confidence order:
    #   {.10 ✗, .20 ✓}  conf .15,  acc .5, gap .35
    #   {.25 ✓, .70 ✗}  conf .475, acc .5, gap .025
    #   {.75 ✗, .95 ✓}  conf .85,  acc .5, gap .35
    # ACE = (.35 + .025 + .35) / 3 = .725 / 3 ; MCE = .35
    assert metrics.ece(HAND_CONF, HAND_CORRECT, n_bins=3, strategy="quantile") == pytest.approx(0.725 / 3)
    assert metrics.mce(HAND_CONF, HAND_CORRECT, n_bins=3, strategy="quantile") == pytest.approx(0.35)


def test_ece_averages_partial_credit():
    # Both answers fall in bin [.5, .6): mean confidence .5, mean correctness (.3 + .9) / 2 = .6.
    assert metrics.ece([0.5, 0.5], [0.3, 0.9]) == pytest.approx(0.1)


def _exact_chance_ece(conf: np.ndarray, p_correct: np.ndarray, n_bins: int,
                      strategy: str = "uniform") -> tuple[float, float]:
    """Mean and sd of the ECE over every possible grading, each weighted by its probability."""
    values, weights = [], []
    for bits in itertools.product((0.0, 1.0), repeat=conf.size):
        y = np.array(bits)
        weights.append(float(np.prod(np.where(y == 1.0, p_correct, 1.0 - p_correct))))
        values.append(metrics.ece(conf, y, n_bins, strategy))
    mean = float(np.dot(weights, values))
    return mean, math.sqrt(float(np.dot(weights, (np.array(values) - mean) ** 2)))


def test_ece_by_chance_matches_the_exact_expectation_over_gradings():
    conf = np.array([0.1, 0.35, 0.4, 0.8, 0.9, 0.55, 0.35])
    for p_correct, strategy in ((None, "uniform"), (np.array([0.3, 0.1, 0.9, 0.5, 0.95, 0.0, 0.7]), "uniform"),
                                (None, "quantile")):
        want_mean, want_sd = _exact_chance_ece(conf, conf if p_correct is None else p_correct, 4, strategy)
        mean, sd = metrics.ece_by_chance(conf, p_correct, n_bins=4, strategy=strategy, n_draws=40_000, seed=1)
        assert mean == pytest.approx(want_mean, abs=4 * want_sd / math.sqrt(40_000))
        assert sd == pytest.approx(want_sd, rel=0.03)
    # A calibrated reader is not at 0 on few answers: two answers at .5 in one bin are both right or
    # both wrong half the time (ECE .5) and split otherwise (ECE 0).
    assert metrics.ece_by_chance([0.5, 0.5], n_draws=40_000)[0] == pytest.approx(0.25, abs=0.01)


def test_ece_by_chance_is_zero_for_certain_grades_and_checks_its_input():
    assert metrics.ece_by_chance([0.0, 1.0, 1.0], n_draws=5) == (0.0, 0.0)
    with pytest.raises(InputError, match="p_correct has 2 values for 3"):
        metrics.ece_by_chance([0.2, 0.4, 0.6], [0.5, 0.5])
    with pytest.raises(InputError, match=r"p_correct\[1\]"):
        metrics.ece_by_chance([0.2, 0.4], [0.5, float("nan")])
    with pytest.raises(InputError, match="n_draws"):
        metrics.ece_by_chance([0.2, 0.4], n_draws=0)


def test_equal_mass_bins_keep_ties_together_and_ignore_input_order():
    conf = np.array([0.3, 0.3, 0.3, 0.3, 0.8, 0.9])
    correct = np.array([1, 0, 0, 0, 1, 1], dtype=float)
    bins = metrics.reliability_bins(conf, correct, n_bins=3, strategy="quantile")
    # The four tied answers share the first bin, which leaves the middle bin empty.
    assert bins.count.tolist() == [4, 0, 2]
    assert bins.accuracy[0] == pytest.approx(0.25) and math.isnan(bins.accuracy[1])
    perm = np.random.default_rng(0).permutation(conf.size)
    assert metrics.ece(conf[perm], correct[perm], 3, "quantile") == pytest.approx(
        metrics.ece(conf, correct, 3, "quantile"))


def test_constant_confidence_gives_the_gap_to_accuracy_under_both_strategies():
    correct = np.array([1, 1, 0, 1, 0, 0, 0, 1, 0, 0], dtype=float)  # accuracy .4
    for strategy in metrics.STRATEGIES:
        assert metrics.ece(np.full(10, 0.7), correct, strategy=strategy) == pytest.approx(0.3)


def test_reliability_bins_summarise_each_bin():
    conf, correct = random_case(3, n=200)
    bins = metrics.reliability_bins(conf, correct, n_bins=5)
    assert bins.n_bins == 5 and bins.count.sum() == 200
    np.testing.assert_allclose(bins.edges, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    in_first = conf < 0.2
    assert bins.count[0] == in_first.sum()
    assert bins.confidence[0] == pytest.approx(conf[in_first].mean())
    assert bins.accuracy[0] == pytest.approx(correct[in_first].mean())
    quantile = metrics.reliability_bins(conf, correct, n_bins=5, strategy="quantile")
    assert quantile.count.tolist() == [40] * 5
    assert np.all(np.diff(quantile.edges) >= 0) and quantile.edges[0] == 0 and quantile.edges[-1] == 1
    for k in range(5):  # every answer lies inside its bin's edges
        members = np.sort(conf)[40 * k: 40 * (k + 1)]
        assert quantile.edges[k] <= members.min() and members.max() <= quantile.edges[k + 1]


def test_brier_decomposition_identity_when_confidence_is_constant_within_bins():
    rng = np.random.default_rng(7)
    conf = (rng.integers(0, 10, size=500) + 0.5) / 10   # bin centres of 10 equal-width bins
    correct = (rng.random(500) < conf).astype(float)
    dec = metrics.brier_decomposition(conf, correct, n_bins=10)
    assert dec.brier == pytest.approx(metrics.brier(conf, correct))
    assert dec.reliability - dec.resolution + dec.uncertainty == pytest.approx(dec.brier, abs=1e-12)
    p = correct.mean()
    assert dec.uncertainty == pytest.approx(p * (1 - p))
    assert dec.reliability >= 0 and dec.resolution >= 0


# --------------------------------------------------------------------------- risk-coverage


def test_aurc_of_a_perfect_ranking_is_the_known_minimum():
    # y = [1, 1, 0, 0] ranked perfectly: risk at k = 1..4 is 0, 0, 1/3, 2/4 -> mean 5/24.
    assert metrics.aurc([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]) == pytest.approx(5 / 24)
    rng = np.random.default_rng(1)
    correct = (rng.random(2000) < 0.7).astype(float)
    conf = 0.5 * correct + 0.4 * rng.random(2000)        # every correct answer outranks every wrong one
    n, m = correct.size, int(correct.sum())
    exact = sum((k - m) / k for k in range(m + 1, n + 1)) / n
    assert metrics.aurc(conf, correct) == pytest.approx(exact)
    r = 1 - m / n
    assert exact == pytest.approx(r + (1 - r) * math.log(1 - r), abs=2e-3)  # large-n closed form
    assert metrics.aurc(1 - conf, correct) > exact


def test_risk_coverage_curve_averages_over_tied_confidences():
    conf = np.full(4, 0.6)
    correct = np.array([1, 0, 1, 1], dtype=float)
    coverage, risk, thresholds = metrics.risk_coverage_curve(conf, correct)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, 0.25)  # a tie keeps the overall error rate at every coverage
    np.testing.assert_allclose(thresholds, 0.6)


@pytest.mark.parametrize("ties", [False, True])
def test_aurc_is_the_mean_of_the_risk_coverage_curve(ties):
    # aurc uses a closed form over tied levels; the curve is built answer by answer.
    conf, correct = random_case(8, n=257, ties=ties)
    correct[::7] = 0.5  # partial credit counts as loss 0.5
    assert metrics.aurc(conf, correct) == pytest.approx(metrics.risk_coverage_curve(conf, correct)[1].mean())


def test_risk_coverage_curve_hand_case():
    # Sorted by confidence: .9 ✓, .7 ✗, .7 ✓, .2 ✗. The tie at .7 contributes its mean loss .5 per answer.
    coverage, risk, thresholds = metrics.risk_coverage_curve([0.7, 0.2, 0.9, 0.7], [0, 0, 1, 1])
    np.testing.assert_allclose(risk, [0 / 1, 0.5 / 2, 1 / 3, 2 / 4])
    np.testing.assert_allclose(thresholds, [0.9, 0.7, 0.7, 0.2])


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_is_deterministic_and_contains_the_estimate():
    conf, correct = random_case(11, n=400)
    for fn in (metrics.auroc, metrics.brier, metrics.accuracy):
        low, high = metrics.bootstrap_ci(fn, conf, correct, n_resamples=300, seed=3)
        assert low < fn(conf, correct) < high
        assert (low, high) == metrics.bootstrap_ci(fn, conf, correct, n_resamples=300, seed=3)
    assert metrics.bootstrap_ci(metrics.auroc, conf, correct, n_resamples=300, seed=4) != (low, high)


def test_bootstrap_ci_narrows_with_more_data_and_widens_with_coverage():
    small, big = random_case(2, n=100), random_case(2, n=1600)
    width = [np.subtract(*metrics.bootstrap_ci(metrics.brier, *case, n_resamples=200)[::-1])
             for case in (small, big)]
    assert width[1] < width[0] / 2
    narrow = metrics.bootstrap_ci(metrics.brier, *small, n_resamples=200, alpha=0.5)
    wide = metrics.bootstrap_ci(metrics.brier, *small, n_resamples=200, alpha=0.05)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_bootstrap_ci_is_nan_when_the_metric_is_never_defined():
    low, high = metrics.bootstrap_ci(metrics.auroc, [0.2, 0.4, 0.9], [1, 1, 1], n_resamples=20)
    assert math.isnan(low) and math.isnan(high)


@pytest.mark.parametrize("ties", [False, True])
def test_batched_bootstrap_matches_the_one_by_one_bootstrap(ties):
    # bootstrap_metrics evaluates resamples as weighted samples; bootstrap_ci calls the public
    # function on each resample. Same seed, same resamples: the intervals must agree.
    conf, correct = random_case(4, n=150, ties=ties)
    fast = metrics.bootstrap_metrics(conf, correct, n_bins=7, n_resamples=150, seed=9)
    one_by_one = {
        "accuracy": metrics.accuracy, "brier": metrics.brier, "nll": metrics.nll,
        "ece": functools.partial(metrics.ece, n_bins=7),
        "ace": functools.partial(metrics.ece, n_bins=7, strategy="quantile"),
        "mce": functools.partial(metrics.mce, n_bins=7),
        "auroc": metrics.auroc, "auprc": metrics.auprc, "aurc": metrics.aurc,
    }
    assert set(fast) == set(one_by_one)
    for name, fn in one_by_one.items():
        value, low, high = fast[name]
        assert value == pytest.approx(fn(conf, correct), abs=1e-12), name
        assert (low, high) == pytest.approx(metrics.bootstrap_ci(fn, conf, correct, 150, seed=9), abs=1e-12), name


def test_bootstrap_metrics_without_resamples_gives_points_only():
    conf, correct = random_case(4, n=50)
    value, low, high = metrics.bootstrap_metrics(conf, correct, ["brier"], n_resamples=0)["brier"]
    assert value == pytest.approx(metrics.brier(conf, correct)) and math.isnan(low) and math.isnan(high)
    with pytest.raises(UnknownNameError, match="metric 'ecee'"):
        metrics.bootstrap_metrics(conf, correct, ["ecee"])


# --------------------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    ("conf", "correct", "message"),
    [
        ([0.1, 0.2], [1.0], r"confidence has 2 values but correct has 1"),
        ([], [], r"empty"),
        ([0.1, float("nan")], [1, 0], r"confidence\[1\] is nan"),
        ([0.1, 0.2], [1, float("inf")], r"correct\[1\] is inf"),
        ([0.1, 1.2], [1, 0], r"confidence\[1\] = 1.2 is outside \[0, 1\]"),
        ([0.1, 0.2], [1, -1], r"correct\[1\] = -1 is outside \[0, 1\]"),
        ([[0.1, 0.2]], [[1, 0]], r"one-dimensional"),
        (["high", "low"], [1, 0], r"confidence must be an array of numbers"),
    ],
)
def test_bad_inputs_raise_one_line_input_errors(conf, correct, message):
    for fn in (metrics.ece, metrics.brier, metrics.auroc, metrics.aurc):
        with pytest.raises(InputError, match=message) as info:
            fn(conf, correct)
        assert "\n" not in str(info.value)


def test_bad_parameters_are_named():
    conf, correct = [0.2, 0.8], [0, 1]
    with pytest.raises(InputError, match="n_bins must be a positive integer"):
        metrics.ece(conf, correct, n_bins=0)
    with pytest.raises(UnknownNameError, match="binning strategy 'quantiles'.*Did you mean 'quantile'"):
        metrics.ece(conf, correct, strategy="quantiles")
    with pytest.raises(InputError, match="alpha must be in"):
        metrics.bootstrap_ci(metrics.brier, conf, correct, alpha=1.5)
    with pytest.raises(InputError, match="n_resamples must be a non-negative integer"):
        metrics.bootstrap_ci(metrics.brier, conf, correct, n_resamples=-1)
    with pytest.raises(InputError, match="eps must be in"):
        metrics.nll(conf, correct, eps=0.0)


def test_paired_difference_matches_a_naive_paired_bootstrap():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80).astype(float)
    a = np.clip(0.6 * y + rng.uniform(0, 0.4, 80), 0, 1)
    b = rng.uniform(0, 1, 80)
    value, low, high = metrics.paired_difference("brier", a, b, y, n_resamples=300, seed=5)
    assert value == pytest.approx(metrics.brier(a, y) - metrics.brier(b, y))
    rows = np.random.default_rng(5).integers(0, 80, size=(300, 80))
    diffs = [metrics.brier(a[r], y[r]) - metrics.brier(b[r], y[r]) for r in rows]
    assert (low, high) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])))
    assert high < 0  # a is clearly better


def test_paired_difference_of_a_method_with_itself_is_exactly_zero():
    rng = np.random.default_rng(0)
    y, c = rng.integers(0, 2, 50).astype(float), rng.uniform(0, 1, 50)
    assert metrics.paired_difference("auroc", c, c, y, n_resamples=100) == (0.0, 0.0, 0.0)


def test_paired_mean_difference_resamples_pairs_together():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2, 60).astype(float), rng.integers(0, 2, 60).astype(float)
    value, low, high = metrics.paired_mean_difference(a, b, n_resamples=200, seed=2)
    assert value == pytest.approx(a.mean() - b.mean())
    rows = np.random.default_rng(2).integers(0, 60, size=(200, 60))
    assert (low, high) == pytest.approx(tuple(np.quantile([(a[r] - b[r]).mean() for r in rows], [0.025, 0.975])))
    with pytest.raises(InputError, match="equal, non-zero length"):
        metrics.paired_mean_difference(a, b[:10])
    with pytest.raises(InputError, match=r"item 59 are nan and .*; both must be finite"):  # not a NaN estimate
        metrics.paired_mean_difference(np.r_[a[:59], np.nan], b)
