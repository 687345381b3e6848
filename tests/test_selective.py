"""Selective answering (certa.uses.selective): p-values by hand, the procedure on hand-made data,
edge cases, and the finite-sample guarantee by simulation on streams with a known error curve."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from certa.errors import CertaError, InputError
from certa.uses.selective import (
    SelectiveThreshold,
    apply_threshold,
    binomial_pvalue,
    certify_threshold,
    coverage_at_target_error,
    coverage_table,
    default_min_kept,
    hoeffding_bentkus_pvalue,
    hoeffding_pvalue,
    lowest_certifiable_error,
    min_certifiable_count,
    pvalues,
    select_threshold,
)

# --------------------------------------------------------------------------- p-values


def test_binomial_pvalue_is_the_binomial_cdf_summed_by_hand():
    n, k, alpha = 50, 3, 0.1
    by_hand = sum(math.comb(n, i) * alpha**i * (1 - alpha) ** (n - i) for i in range(k + 1))
    assert binomial_pvalue(k, n, alpha) == pytest.approx(by_hand, rel=1e-12)
    assert binomial_pvalue(k, n, alpha) == pytest.approx(binom.cdf(k, n, alpha), rel=1e-12)
    ks, ns = np.array([0, 2, 10]), np.array([29, 40, 60])
    np.testing.assert_allclose(binomial_pvalue(ks, ns, 0.2), binom.cdf(ks, ns, 0.2), rtol=1e-12)
    assert binomial_pvalue(0, 0, 0.1) == 1.0   # nothing kept: nothing learnt


def test_hoeffding_pvalue_by_hand():
    n, r, a = 200, 0.05, 0.1
    kl = r * math.log(r / a) + (1 - r) * math.log((1 - r) / (1 - a))
    assert hoeffding_pvalue(r, n, a) == pytest.approx(math.exp(-n * kl), rel=1e-12)
    assert hoeffding_pvalue(0.0, n, a) == pytest.approx((1 - a) ** n, rel=1e-12)   # KL(0 || a) = -log(1 - a)
    assert hoeffding_pvalue(0.3, n, a) == 1.0          # an observed risk above alpha proves nothing


def test_hoeffding_bentkus_is_the_smaller_of_hoeffding_and_e_times_the_binomial_tail():
    n, a = 200, 0.1
    for r in (0.0, 0.02, 0.05, 0.0725, 0.09):
        bentkus = math.e * binom.cdf(math.ceil(n * r - 1e-9), n, a)
        expected = min(hoeffding_pvalue(r, n, a), bentkus, 1.0)
        assert hoeffding_bentkus_pvalue(r, n, a) == pytest.approx(expected, rel=1e-12)
    # Bentkus wins in the middle of the range, Hoeffding at zero observed risk
    assert hoeffding_bentkus_pvalue(0.05, n, a) < hoeffding_pvalue(0.05, n, a)
    assert hoeffding_bentkus_pvalue(0.0, n, a) == pytest.approx((1 - a) ** n)


def test_pvalues_dispatch_and_the_binomial_is_tightest_for_binary_losses():
    loss_sum, n, a = np.array([5.0, 8.0]), np.array([100, 120]), 0.1
    exact = pvalues(loss_sum, n, a, "binomial")
    np.testing.assert_allclose(exact, binom.cdf(loss_sum, n, a))
    assert np.all(exact <= pvalues(loss_sum, n, a, "hoeffding_bentkus"))
    assert np.all(pvalues(loss_sum, n, a, "hoeffding_bentkus") <= pvalues(loss_sum, n, a, "hoeffding"))
    with pytest.raises(CertaError, match="unknown bound"):
        pvalues(loss_sum, n, a, "chernoff")


def test_min_certifiable_count_is_where_zero_errors_first_certifies():
    # (1 - 0.1) ** 28 = 0.0523 > 0.05 >= (1 - 0.1) ** 29 = 0.0471
    assert min_certifiable_count(0.1, 0.05) == 29
    for bound in ("binomial", "hoeffding_bentkus", "hoeffding"):
        n = min_certifiable_count(0.2, 0.01, bound)
        assert pvalues(0.0, n, 0.2, bound) <= 0.01 < pvalues(0.0, n - 1, 0.2, bound)


def test_default_min_kept_certifies_half_the_target_and_no_fewer_answers_do():
    n = default_min_kept(0.1, 0.05, "binomial")
    assert n == 76
    assert binom.cdf(math.floor(0.05 * n), n, 0.1) <= 0.05
    assert all(binom.cdf(math.floor(0.05 * m), m, 0.1) > 0.05 for m in range(29, n))


# --------------------------------------------------------------------------- the procedure by hand

CONF = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
GOOD = [1, 1, 1, 0, 1, 0, 0, 0]


def test_select_threshold_by_hand():
    # target 0.5, delta 0.2: zero errors certify from 3 answers on (0.5**3 = 0.125 <= 0.2);
    # top 3: 0 errors, p = 0.125 -> certified; top 4: 1 error, p = P(Binom(4, .5) <= 1) = 5/16 -> stop.
    t = select_threshold(CONF, GOOD, 0.5, 0.2, starts=1)
    assert (t.threshold, t.n_kept, t.coverage, t.error, t.min_kept) == (0.7, 3, 3 / 8, 0.0, 3)
    assert t.bound == "binomial" and t.n_calibration == 8
    # a first test that fails ends the sequence: nothing certified
    with pytest.raises(InputError, match="no confidence threshold certifies"):
        select_threshold(CONF, GOOD, 0.5, 0.2, starts=1, min_kept=4)


def test_a_second_start_certifies_what_the_first_sequence_cannot_reach():
    # 200 answers: the 40 most confident have 8 errors (20%), the other 160 none. One sequence from
    # the top at target 0.1 stops at once; a second start at "keep all" (4% error) certifies it.
    conf = np.linspace(1.0, 0.005, 200)
    correct = np.ones(200)
    correct[np.arange(0, 40, 5)] = 0
    with pytest.raises(InputError):
        select_threshold(conf, correct, 0.1, 0.05, starts=1, min_kept=40)
    t = select_threshold(conf, correct, 0.1, 0.05, starts=2, min_kept=40)
    assert t.coverage == 1.0 and t.error == pytest.approx(0.04) and t.threshold == 0.005
    # each sequence runs at delta / 2: the first fails, the second (a single test) passes
    assert binom.cdf(8, 40, 0.1) > 0.025 >= binom.cdf(8, 200, 0.1)


def test_certify_threshold_is_select_threshold_without_the_error():
    assert certify_threshold(CONF, GOOD, 0.5, 0.2, starts=1) == select_threshold(CONF, GOOD, 0.5, 0.2, starts=1)
    assert certify_threshold(CONF, GOOD, 0.5, 0.2, starts=1, min_kept=4) is None
    with pytest.raises(InputError, match="target_error must be"):
        certify_threshold(CONF, GOOD, 2.0)


def test_ties_are_kept_or_dropped_together_and_order_does_not_matter():
    rng = np.random.default_rng(3)
    conf = np.round(rng.random(600), 1)      # 11 distinct values: heavy ties
    correct = (rng.random(600) < 0.55 + 0.45 * conf).astype(float)
    t = select_threshold(conf, correct, 0.15)
    assert t.n_kept == int(np.sum(conf >= t.threshold))
    assert t.threshold in set(conf.tolist())
    perm = rng.permutation(600)
    assert select_threshold(conf[perm], correct[perm], 0.15) == t


def test_threshold_is_monotone_in_target_and_delta_for_a_fixed_start():
    rng = np.random.default_rng(7)
    for _ in range(20):
        conf = rng.random(400)
        correct = (rng.random(400) < 0.5 + 0.5 * conf).astype(float)
        previous = 1.1
        for target in (0.08, 0.1, 0.15, 0.2, 0.3):
            found = certify_threshold(conf, correct, target, 0.05, min_kept=120)
            t = 1.1 if found is None else found.threshold
            assert t <= previous
            previous = t
        by_delta = [certify_threshold(conf, correct, 0.2, d, min_kept=120) for d in (0.01, 0.05, 0.2)]
        by_delta = [1.1 if t is None else t.threshold for t in by_delta]
        assert by_delta[0] >= by_delta[1] >= by_delta[2]


def test_a_perfect_confidence_keeps_every_correct_answer():
    conf = np.linspace(0.01, 1.0, 1000)
    correct = (conf > 0.3).astype(float)          # the 300 least confident are wrong, the rest right
    t = select_threshold(conf, correct, 0.05)
    # kept sets below 0.31 add wrong answers; at error <= 5% some may be kept, but never more than
    # the binomial bound allows: kept errors / kept < 0.05
    assert t.error < 0.05 and t.coverage >= 0.7
    assert t.n_kept == int(np.sum(conf >= t.threshold))


def test_partial_credit_uses_hoeffding_bentkus_and_binomial_refuses_it():
    rng = np.random.default_rng(1)
    conf = rng.random(2000)
    correct = np.clip(conf + 0.1 * rng.standard_normal(2000), 0, 1)
    t = select_threshold(conf, correct, 0.2)
    assert t.bound == "hoeffding_bentkus"
    assert select_threshold(conf, correct, 0.2, bound="hoeffding").threshold >= t.threshold
    with pytest.raises(InputError, match=r"bound='binomial' needs correct to be 0 or 1, but correct\[0\]"):
        select_threshold(conf, correct, 0.2, bound="binomial")


# --------------------------------------------------------------------------- infeasible targets and bad input


def test_an_infeasible_target_names_the_lowest_certifiable_error_and_that_one_works():
    rng = np.random.default_rng(0)
    conf = rng.random(500)                             # uninformative confidence, 15% errors
    correct = (rng.random(500) > 0.15).astype(float)
    with pytest.raises(InputError, match=r"at most 0.05 .*lowest error this calibration set certifies is 0\.1"):
        select_threshold(conf, correct, 0.05)
    best = lowest_certifiable_error(conf, correct)
    assert 0.13 < best < 0.2
    assert select_threshold(conf, correct, best).coverage > 0
    with pytest.raises(InputError):
        select_threshold(conf, correct, best - 2e-4)


def test_too_few_answers_or_all_wrong_say_so():
    with pytest.raises(InputError, match="needs at least 39 answers even with no errors"):
        select_threshold(np.linspace(0, 1, 10), np.ones(10), 0.1)
    with pytest.raises(InputError, match="no target error below 1 can be certified"):
        select_threshold(np.linspace(0, 1, 500), np.zeros(500), 0.1)
    assert lowest_certifiable_error(np.linspace(0, 1, 500), np.zeros(500)) is None
    with pytest.raises(InputError, match="min_kept=400 answers are not tested"):
        select_threshold(np.linspace(0, 1, 300), np.ones(300), 0.1, min_kept=400)


@pytest.mark.parametrize("kwargs, message", [
    ({"target_error": 0.0}, "target_error must be a number strictly between 0 and 1"),
    ({"target_error": 1.0}, "target_error must be"),
    ({"target_error": float("nan")}, "target_error must be"),
    ({"target_error": True}, "target_error must be"),
    ({"delta": 0}, "delta must be"),
    ({"min_kept": 0}, "min_kept must be a positive integer"),
    ({"starts": 0}, "starts must be a positive integer"),
])
def test_bad_arguments_are_input_errors(kwargs, message):
    args = {"target_error": 0.1, **kwargs}
    with pytest.raises(InputError, match=message):
        select_threshold(CONF, GOOD, **args)


def test_bad_data_and_unknown_bound():
    with pytest.raises(InputError, match="confidence has 2 values but correct has 3"):
        select_threshold([0.1, 0.2], [1, 0, 1], 0.1)
    with pytest.raises(InputError, match=r"confidence\[1\] = 1.5 is outside \[0, 1\]"):
        select_threshold([0.1, 1.5], [1, 0], 0.1)
    with pytest.raises(CertaError, match="unknown bound 'clopper'"):
        select_threshold(CONF, GOOD, 0.1, bound="clopper")


# --------------------------------------------------------------------------- applying a threshold


def test_apply_threshold_by_hand():
    out = apply_threshold(0.5, [0.9, 0.5, 0.2, 0.7], [1, 0, 1, 0.5])
    assert (out.coverage, out.n_kept, out.n) == (0.75, 3, 4)
    assert out.error == pytest.approx((0 + 1 + 0.5) / 3)
    assert apply_threshold(0.5, [0.9, 0.5, 0.2]).error is None          # no grades: coverage only
    none_kept = apply_threshold(0.95, [0.9, 0.5], [1, 1])
    assert (none_kept.coverage, none_kept.error) == (0.0, None)
    t = select_threshold(CONF, GOOD, 0.5, 0.2, starts=1)
    assert apply_threshold(t, CONF, GOOD).to_dict() == {
        "threshold": 0.7, "coverage": 0.375, "error": 0.0, "n_kept": 3, "n": 8}
    np.testing.assert_array_equal(t.keep([0.69, 0.7, 0.71]), [False, True, True])


def test_threshold_round_trips_through_a_dict():
    t = select_threshold(CONF, GOOD, 0.5, 0.2, starts=1)
    assert SelectiveThreshold.from_dict(t.to_dict()) == t
    with pytest.raises(InputError, match="missing the field 'threshold'"):
        SelectiveThreshold.from_dict({k: v for k, v in t.to_dict().items() if k != "threshold"})


# --------------------------------------------------------------------------- coverage at a target error


def test_coverage_at_target_error_ranks_a_better_confidence_higher():
    rng = np.random.default_rng(5)
    p_correct = rng.uniform(0.3, 1.0, 1500)
    correct = (rng.random(1500) < p_correct).astype(float)
    sharp = p_correct                                            # ranks by the true probability
    blurred = np.clip(p_correct + 0.4 * rng.standard_normal(1500), 0, 1)
    table = coverage_table({"sharp": sharp, "blurred": blurred}, correct, targets=(0.1, 0.2), n_splits=40)
    for target in (0.1, 0.2):
        s, b = table["sharp"][target], table["blurred"][target]
        assert s.coverage > b.coverage
        assert 0 < s.coverage <= s.oracle_coverage + 0.05
        assert s.error is None or s.error <= target + 0.02
        assert s.n_splits == 40 and 0 <= s.infeasible_rate <= 1
    assert table["sharp"][0.2].coverage > table["sharp"][0.1].coverage
    again = coverage_at_target_error(sharp, correct, 0.1, n_splits=40)
    assert again == table["sharp"][0.1]                          # same seed, same splits


def test_coverage_is_zero_when_nothing_can_be_certified():
    conf, correct = np.linspace(0, 1, 200), np.zeros(200)
    res = coverage_at_target_error(conf, correct, 0.1, n_splits=5)
    assert (res.coverage, res.infeasible_rate, res.error, res.violation_rate, res.oracle_coverage) == \
        (0.0, 1.0, None, 0.0, 0.0)


# --------------------------------------------------------------------------- the guarantee, by simulation
#
# Confidence ~ U(0, 1) and P(error | c) = e(c) known, so R(t) = E[error | C >= t] has a closed form.
# Each of SPLITS calibration draws of N_CAL answers gives a threshold; it violates the target when
# R(t_hat) > target (the expected test error, i.e. a test split of infinite size) and, separately,
# when the realized error on an independent test split of N_TEST answers does. Both frequencies
# must be at most delta plus a Monte-Carlo slack of 3 binomial standard errors,
# 3 * sqrt(delta * (1 - delta) / SPLITS) = 0.029 for delta 0.05 and 500 splits.

SPLITS, N_CAL, N_TEST, TARGET, DELTA = 500, 1000, 20_000, 0.1, 0.05
SLACK = 3 * math.sqrt(DELTA * (1 - DELTA) / SPLITS)


def _linear_error(c):
    return 0.4 * (1 - c)


def _linear_risk(t):
    return 0.2 * (1 - t)                                  # mean of 0.4 (1 - c) over c in [t, 1]


def _bump_error(c):
    return 0.4 * (1 - c) + 0.3 * (c > 0.97)               # over-confident: the top 3% are often wrong


def _bump_risk(t):
    u = 1 - t
    return (0.2 * u**2 + 0.3 * np.clip(0.03 - np.maximum(t - 0.97, 0), 0, None)) / u


def _simulate(error, risk, *, partial=False, bound="auto", starts=3, seed=0):
    """Violation frequencies (expected and realized test error) and the mean coverage over SPLITS draws."""
    rng = np.random.default_rng(seed)
    conf = rng.random((SPLITS, N_CAL))
    if partial:   # loss = Bernoulli(2 e(c)) * U(0, 1): partial credit with mean loss e(c)
        loss = (rng.random((SPLITS, N_CAL)) < 2 * error(conf)) * rng.random((SPLITS, N_CAL))
    else:
        loss = (rng.random((SPLITS, N_CAL)) < error(conf)).astype(float)
    expected = realized = 0
    coverage = np.zeros(SPLITS)
    for s in range(SPLITS):
        found = certify_threshold(conf[s], 1 - loss[s], TARGET, DELTA, bound, starts=starts)
        if found is None:
            continue                                      # abstain on everything: no violation
        t = found.threshold
        expected += risk(t) > TARGET
        test_conf = rng.random(N_TEST)
        kept = test_conf[test_conf >= t]
        test_loss = (rng.random(kept.size) < error(kept)).astype(float)
        if partial:
            test_loss = (rng.random(kept.size) < 2 * error(kept)) * rng.random(kept.size)
        realized += kept.size > 0 and test_loss.mean() > TARGET
        coverage[s] = 1 - t
    return expected / SPLITS, realized / SPLITS, coverage.mean()


def test_the_known_risk_curves_are_right():
    rng = np.random.default_rng(0)
    c = rng.random(2_000_000)
    for error, risk in ((_linear_error, _linear_risk), (_bump_error, _bump_risk)):
        for t in (0.5, 0.9, 0.98):
            assert np.mean(error(c[c >= t])) == pytest.approx(risk(t), abs=3e-3)


@pytest.mark.parametrize("error, risk, partial, bound, starts", [
    (_linear_error, _linear_risk, False, "binomial", 3),
    (_linear_error, _linear_risk, False, "binomial", 1),     # one sequence: the tightest, closest to delta
    (_linear_error, _linear_risk, True, "hoeffding_bentkus", 3),
    (_bump_error, _bump_risk, False, "binomial", 3),
], ids=["linear-binomial", "linear-binomial-one-start", "linear-partial-credit-HB", "overconfident-top-binomial"])
def test_guarantee_holds_over_500_calibration_draws(error, risk, partial, bound, starts):
    expected, realized, coverage = _simulate(error, risk, partial=partial, bound=bound, starts=starts)
    assert expected <= DELTA + SLACK
    assert realized <= DELTA + SLACK
    if error is _linear_error:
        assert coverage > 0.15         # the oracle threshold 0.5 keeps half; certification costs some


def test_the_simulation_catches_a_threshold_without_a_guarantee():
    """The plain empirical choice (lowest t whose calibration error is <= target) violates the target
    in about half the draws: the check above is able to fail."""
    rng = np.random.default_rng(1)
    violations = 0
    for _ in range(200):
        conf = rng.random(N_CAL)
        loss = (rng.random(N_CAL) < _linear_error(conf)).astype(float)
        order = np.argsort(-conf)
        running = np.cumsum(loss[order]) / np.arange(1, N_CAL + 1)
        t = conf[order][np.flatnonzero(running <= TARGET).max()]
        violations += _linear_risk(t) > TARGET
    assert violations / 200 > 0.3


def test_the_module_is_reachable_as_certa_selective():
    import certa
    import certa.uses.selective as module

    assert certa.selective is module and "selective" in dir(certa)
