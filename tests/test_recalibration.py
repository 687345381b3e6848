"""Online recalibration (certa.recalibration, certa.serving.recalibration): maps against scikit-learn / scipy, the refit
schedule, the reported ECEs against certa.metrics.ece, atomic swaps under threads, and the store."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression

from certa.errors import CertaError, InputError
from certa.metrics import ece
from certa.recalibration import IDENTITY, CalibrationMap, choose_map, fit_map
from certa.serving.feedback import FeedbackStore
from certa.serving.recalibration import OnlineRecalibrator


def _overconfident(n, seed=0):
    """Raw confidence c, true accuracy c**3: over-confident everywhere but 0 and 1."""
    rng = np.random.default_rng(seed)
    c = rng.random(n)
    return c, (rng.random(n) < c**3).astype(float)


# --------------------------------------------------------------------------- maps


def test_isotonic_map_is_scikit_learns():
    c, y = _overconfident(400)
    m = fit_map(c, y, "isotonic")
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(c, y)
    grid = np.r_[0.0, np.linspace(0, 1, 101), 1.0, c.min() / 2]
    np.testing.assert_allclose(m(grid), reference.predict(grid), atol=1e-12)
    assert np.all(np.diff(m(np.linspace(0, 1, 101))) >= 0) and m.n_labels == 400


def test_platt_map_minimises_the_cross_entropy_to_soft_labels():
    rng = np.random.default_rng(2)
    c = rng.uniform(0.05, 0.95, 300)
    y = np.clip(c**2 + 0.1 * rng.standard_normal(300), 0, 1)           # partial credit
    m = fit_map(c, y, "platt")
    z = logit(c)

    def loss(p):
        q = np.clip(expit(p[0] * z + p[1]), 1e-12, 1 - 1e-12)
        return -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))

    best = minimize(loss, x0=[1.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x
    assert (m.params["a"], m.params["b"]) == pytest.approx(tuple(best), abs=2e-3)
    np.testing.assert_allclose(m(c), expit(best[0] * z + best[1]), atol=1e-3)


def _beta_loss(c, y):
    features = np.column_stack([np.log(c), -np.log1p(-c)])

    def loss(p):
        q = np.clip(expit(features @ p[:2] + p[2]), 1e-12, 1 - 1e-12)
        return -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))
    return loss


def test_beta_map_minimises_the_cross_entropy_with_nonnegative_coefficients():
    c, y = _overconfident(400, seed=3)
    c = np.clip(c, 1e-3, 1 - 1e-3)
    m = fit_map(c, y, "beta")
    loss = _beta_loss(c, y)
    best = minimize(loss, x0=[1.0, 1.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x
    assert best[0] > 0 and best[1] > 0        # the unconstrained optimum is feasible here
    fitted = np.array([m.params["a"], m.params["b"], m.params["c"]])
    assert fitted == pytest.approx(best, abs=2e-2) and loss(fitted) == pytest.approx(loss(best), abs=1e-6)
    assert np.all(np.diff(m(np.linspace(0, 1, 101))) >= 0)


def test_beta_fits_each_tail_its_own_slope_where_platt_cannot():
    """Raw confidences near 0 that are right 12% of the time flatten Platt's single slope; a steep middle
    (answers below .3 wrong, above .6 right) stays steep under beta. The shape GrACE's read-out has on
    truncated answers (docs/results-discussion.md)."""
    rng = np.random.default_rng(4)
    middle = rng.uniform(0.1, 0.75, 600)
    tail = np.full(150, 5e-4)
    c = np.r_[middle, tail]
    y = np.r_[(rng.random(600) < expit(12 * (middle - 0.45))), rng.random(150) < 0.12].astype(float)
    platt, beta = fit_map(c, y, "platt"), fit_map(c, y, "beta")
    assert ece(beta(c), y) < 0.5 * ece(platt(c), y)
    assert platt.params["a"] < 1.0 and beta.params["b"] > 1.0


def test_beta_drops_a_negative_coefficient_and_refits_the_other():
    rng = np.random.default_rng(5)
    c = rng.uniform(0.01, 0.99, 500)
    y = (rng.random(500) < c).astype(float)
    y[c < 0.1] = 1.0                         # the lowest confidences are all right: ln(c) wants a < 0
    m = fit_map(c, y, "beta")
    assert m.params["a"] == 0.0 and m.params["b"] >= 0
    features = -np.log1p(-c)
    best = minimize(lambda p: _beta_loss(c, y)(np.array([0.0, p[0], p[1]])), x0=[1.0, 0.0], method="BFGS").x
    assert (m.params["b"], m.params["c"]) == pytest.approx(tuple(best), abs=2e-2)
    np.testing.assert_allclose(m(c), expit(best[0] * features + best[1]), atol=5e-3)
    flat = fit_map(c, 1.0 - c, "beta")       # every direction is wrong: the constant mean grade
    np.testing.assert_allclose(flat(c), np.mean(1.0 - c), atol=1e-9)


def test_choose_map_reports_out_of_fold_brier_scores_and_keeps_a_clear_gain():
    from sklearn.model_selection import StratifiedKFold

    c, y = _overconfident(400, seed=6)
    chosen, brier = choose_map(c, y, folds=4, seed=2)
    for kind in ("platt", "beta"):
        out = np.empty_like(c)
        for fit_rows, held in StratifiedKFold(4, shuffle=True, random_state=2).split(c, y >= 0.5):
            out[held] = fit_map(c[fit_rows], y[fit_rows], kind, strength=1.0, nonnegative=True)(c[held])
        assert brier[kind] == pytest.approx(np.mean((out - y) ** 2), abs=1e-12)
    assert brier["identity"] == pytest.approx(np.mean((c - y) ** 2))
    winner = min(("platt", "beta"), key=brier.get)
    assert chosen.kind == winner and brier[winner] < 0.9 * brier["identity"]   # over-confident: a map helps
    np.testing.assert_allclose(chosen(c), fit_map(c, y, winner, strength=1.0, nonnegative=True)(c))


def test_choose_map_keeps_calibrated_confidences_as_they_are():
    rng = np.random.default_rng(7)
    c = rng.uniform(0.05, 0.95, 300)
    y = (rng.random(300) < c).astype(float)            # calibrated by construction
    chosen, brier = choose_map(c, y)
    assert chosen is IDENTITY and set(brier) == {"identity", "constant", "platt", "beta"}
    assert choose_map(c[:40], np.r_[np.ones(37), np.zeros(3)]) == (IDENTITY, {})   # 3 wrong: too few for 5 folds


def test_choose_map_falls_back_to_the_base_rate_when_the_read_out_has_no_signal():
    """Spread confidences unrelated to correctness (a model at chance): no map beats the constant mean grade."""
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(8)
    c = rng.uniform(0.05, 0.6, 120)
    y = (rng.random(120) < 0.25).astype(float)
    chosen, brier = choose_map(c, y)
    constant = np.empty_like(c)
    for fit_rows, held in StratifiedKFold(5, shuffle=True, random_state=0).split(c, y >= 0.5):
        constant[held] = y[fit_rows].mean()
    assert brier["constant"] == pytest.approx(np.mean((constant - y) ** 2))
    assert brier["constant"] < min(brier["identity"], brier["platt"], brier["beta"])
    assert chosen.kind == "constant" and chosen.params["p"] == pytest.approx(y.mean())
    np.testing.assert_allclose(chosen(c), y.mean())
    again = CalibrationMap.from_dict(json.loads(json.dumps(chosen.to_dict())))
    np.testing.assert_allclose(again(c), y.mean())
    # given every training answer's accuracy, the constant is that (it needs no held-out answers)
    chosen_all, brier_all = choose_map(c, y, base_rate=0.27)
    assert brier_all == brier and chosen_all.kind == "constant" and chosen_all.params["p"] == 0.27


def test_platt_refuses_labels_of_one_kind_and_isotonic_gives_a_constant():
    c = np.linspace(0, 1, 60)
    with pytest.raises(InputError, match="needs both correct and wrong answers, but all 60 labels are correct"):
        fit_map(c, np.ones(60), "platt")
    np.testing.assert_allclose(fit_map(c, np.ones(60), "isotonic")(c), 1.0)
    with pytest.raises(InputError, match="Beta scaling needs both correct and wrong answers"):
        fit_map(c, np.zeros(60), "beta")
    with pytest.raises(CertaError, match="unknown calibration map 'gamma'"):
        fit_map(c, np.ones(60), "gamma")


def test_maps_round_trip_through_json():
    c, y = _overconfident(200)
    for m in (IDENTITY, fit_map(c, y, "isotonic"), fit_map(c, y, "platt"), fit_map(c, y, "beta")):
        again = CalibrationMap.from_dict(json.loads(json.dumps(m.to_dict())))
        np.testing.assert_allclose(again(c), m(c))
        assert again.kind == m.kind and again.n_labels == m.n_labels
    np.testing.assert_array_equal(IDENTITY(c), c)
    with pytest.raises(InputError, match="platt calibration map is missing the parameter 'b'"):
        CalibrationMap.from_dict({"kind": "platt", "params": {"a": 1.0}})


# --------------------------------------------------------------------------- the refit schedule


def test_no_map_before_min_labels_then_every_n_new_labels():
    c, y = _overconfident(200)
    r = OnlineRecalibrator("isotonic", every=20, min_labels=50)
    fits = [n for n in range(1, 201) if r.update(c[:n], y[:n])]
    assert fits == [50, 70, 90, 110, 130, 150, 170, 190]
    report = r.report()
    assert (report.n_labels, report.n_labels_at_fit, report.refits) == (200, 190, 8)
    assert r.current.n_labels == 190


def test_fewer_labels_than_the_minimum_keep_the_identity_map():
    c, y = _overconfident(49)
    r = OnlineRecalibrator("platt", every=1, min_labels=50)
    assert not r.update(c, y)
    assert r.current is IDENTITY and r.report().refits == 0
    np.testing.assert_array_equal(r.apply([0.2, 0.9]), [0.2, 0.9])
    assert not r.update([], [])


def test_the_report_gives_the_ece_before_and_after_on_the_stored_labels():
    c, y = _overconfident(2000, seed=4)
    r = OnlineRecalibrator("isotonic", every=500, min_labels=500, n_bins=15)
    assert r.update(c, y)
    report, new = r.report(), r.current
    assert report.ece_before == ece(c, y, 15)
    assert report.ece_previous == report.ece_before                   # the identity was in use
    assert report.ece_after == ece(new(c), y, 15)
    assert report.ece_before > 0.15 and report.ece_after < 0.03      # badly over-confident, then fixed
    assert report.ece_after <= report.ece_after_cv < report.ece_before / 3   # held-out: worse, still good
    d = report.to_dict()
    assert d["map"]["kind"] == "isotonic" and json.loads(json.dumps(d)) == d


def test_max_labels_fits_on_the_most_recent_labels_only():
    rng = np.random.default_rng(5)
    c = rng.random(400)
    y = np.r_[(rng.random(200) < c[:200]), (rng.random(200) < c[200:] ** 4)].astype(float)   # drift
    recent = OnlineRecalibrator("isotonic", every=400, min_labels=100, max_labels=200)
    assert recent.update(c, y)
    assert recent.current.n_labels == 200
    np.testing.assert_allclose(recent.current(c), fit_map(c[200:], y[200:])(c))


def test_a_skipped_refit_keeps_the_map_and_says_why():
    c = np.linspace(0, 1, 100)
    r = OnlineRecalibrator("platt", every=50, min_labels=50)
    assert r.update(c[:50], (c[:50] > 0.3).astype(float))
    fitted = r.current
    assert not r.update(c, np.ones(100))                               # a due refit with one class only
    assert r.current is fitted and "needs both correct and wrong" in r.report().skipped
    assert not r.update(np.r_[c, c[:10]], np.ones(110))                # the next try waits for 50 more


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "gamma"}, "unknown calibration map"),
    ({"every": 0}, "every must be an integer of at least 1"),
    ({"min_labels": 1}, "min_labels must be an integer of at least 2"),
    ({"max_labels": 10}, "max_labels must be None or an integer of at least min_labels=50"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(CertaError, match=message):
        OnlineRecalibrator(**kwargs)


def test_bad_labels_are_input_errors():
    with pytest.raises(InputError, match="confidence has 2 values but correct has 1"):
        OnlineRecalibrator().update([0.1, 0.2], [1])


# --------------------------------------------------------------------------- threads


def test_apply_always_uses_one_whole_map_while_maps_are_swapped():
    """Readers map a fixed grid while the main thread refits 20 times; every result a reader sees is
    exactly the identity or one of the fitted maps applied to the grid, never a mixture."""
    grid = np.linspace(0, 1, 501)
    r = OnlineRecalibrator("isotonic", every=50, min_labels=50, cv_folds=2)
    seen, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            seen.append(r.apply(grid))

    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers:
        t.start()
    maps = [IDENTITY]
    rng = np.random.default_rng(0)
    c = rng.random(1000)
    for n in range(50, 1001, 50):
        y = (rng.random(1000) < c ** (1 + n / 250)).astype(float)    # a drifting truth: every map differs
        assert r.update(c[:n], y[:n])
        maps.append(r.current)
    stop.set()
    for t in readers:
        t.join()
    outputs = [m(grid) for m in maps]
    assert len(seen) > 20
    for s in seen:
        assert any(np.array_equal(s, o) for o in outputs)


def test_concurrent_updates_refit_once_per_due_batch():
    c, y = _overconfident(300)
    r = OnlineRecalibrator("isotonic", every=100, min_labels=100)
    barrier = threading.Barrier(8)
    results = []

    def go():
        barrier.wait()
        results.append(r.update(c, y))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True] and r.report().refits == 1


# --------------------------------------------------------------------------- with the feedback store


def test_refresh_from_a_feedback_store_fits_on_raw_confidences(tmp_path):
    c, y = _overconfident(120, seed=9)
    with FeedbackStore(tmp_path / "fb.db") as store:
        for i in range(120):
            # what the client saw (0.5) differs from the method's raw score: the map must use the raw one
            store.record_answer(f"id{i}", 0, 0.5, method="grace", model="m", raw_confidence=float(c[i]),
                                created=float(i))
            store.record_label(f"id{i}", 0, bool(y[i]))
        r = OnlineRecalibrator("isotonic", every=50, min_labels=100)
        assert r.refresh(store)
        np.testing.assert_allclose(r.current(c), fit_map(c, y)(c))
        assert not r.refresh(store, method="other")                      # no labels for that method
