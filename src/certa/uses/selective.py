"""Selective answering with a finite-sample guarantee: answer only when the confidence is high enough.

Given a calibration set of confidences and grades, :func:`select_threshold` picks the lowest
threshold ``t`` such that, with probability at least ``1 - delta`` over the draw of the calibration
set, the expected error among answers with ``confidence >= t`` is at most ``target_error``::

    P_cal( R(t_hat) <= target_error ) >= 1 - delta,   R(t) = E[ 1 - correct | confidence >= t ]

The only assumption is that the calibration answers and the answers the threshold is later applied
to are independent draws from the same distribution. The confidence may come from any method,
trained or not, calibrated or not: the guarantee never relies on the confidence being calibrated,
a better confidence only buys a higher coverage.

How (Learn-then-Test; Angelopoulos, Bates, Candès, Jordan & Lei, 2021, "Learn then Test:
Calibrating Predictive Algorithms to Achieve Risk Control", arXiv:2110.01052):

1. every candidate threshold ``t`` is a null hypothesis ``H_t: R(t) > target_error``;
2. each gets a p-value from the answers the threshold keeps on the calibration set. Conditionally
   on how many are kept, their losses ``1 - correct`` are i.i.d. with mean ``R(t)``, so a tail bound
   for a mean of ``n(t)`` bounded variables gives a valid p-value (:func:`pvalues`):

   - ``"binomial"``: the exact binomial tail ``P(Binom(n, alpha) <= errors)``, the test dual to the
     Clopper–Pearson upper confidence bound (Clopper & Pearson, 1934). Losses must be 0 or 1;
   - ``"hoeffding_bentkus"``: ``min(Hoeffding, Bentkus)`` for losses anywhere in [0, 1]
     (Bates, Angelopoulos, Lei, Malik & Jordan, 2021, "Distribution-Free, Risk-Controlling
     Prediction Sets", J. ACM; Hoeffding, 1963; Bentkus, 2004);
   - ``"hoeffding"``: Hoeffding's bound alone (in its relative-entropy form, Hoeffding 1963, Thm 1);

3. the hypotheses are tested by *fixed-sequence testing*, from the most confident threshold down:
   reject while ``p <= delta`` and stop at the first ``p > delta``. Every test runs at the full level
   of its sequence and the family-wise error rate is still at most that level (LTT): a wrong
   certification needs the first threshold with ``R(t) > target_error`` met on the way down to be
   rejected, which a valid p-value allows with probability at most the level. No union bound over
   thresholds is paid.

One sequence from the top has a weakness: it ends at its first non-rejection, and the first tests
keep few answers, so when the most confident answers are not much better than the rest (a weak or
flat confidence) it stops at once even where keeping *every* answer would meet the target. So by
default ``starts=3`` sequences run, started at evenly spaced kept counts from ``min_kept`` down to
"keep everything", each at level ``delta / starts`` (a Bonferroni split over the sequences, the
"multi-start" variant of fixed-sequence testing); every threshold any of them certifies is certified
jointly with probability ``>= 1 - delta``, and the lowest is returned. ``starts=1`` is the plain single
sequence. Measured on synthetic streams (``benchmarks/abstention.py``, 1000 calibration sets of
1000 answers): with a strongly informative confidence one sequence keeps 33% of the answers and
three keep 28%; with a gently sloped one, 20% against 56%; with a flat one (error 0.15 everywhere,
target 0.2), 5% against 98%.

Thresholds and ties: the candidates are the distinct calibration confidences, highest first; a
threshold keeps *every* answer with ``confidence >= t``, so tied answers are kept or dropped
together. Between two consecutive calibration confidences the kept calibration set, hence the
p-value, does not change, so testing the distinct calibration confidences is testing every ``t`` in
[0, 1]; the returned threshold is the calibration confidence at the bottom of the certified run, the
most conservative point of its interval.

Where the first sequence starts: at the first threshold keeping ``min_kept`` calibration answers
(default :func:`default_min_kept`: 134 answers at a target of 0.1, delta 0.05 and three starts, i.e.
level 0.0167, with the binomial bound).
Thresholds keeping fewer than :func:`min_certifiable_count` answers can never be certified (even
zero errors gives ``p > delta``), and starting right there would let one early error end the
sequence. The starts depend on the confidences only, never on the grades; but they are not fixed
before seeing the data, which LTT's proof assumes (nor is the grid of calibration confidences, the
usual practice since Geifman & El-Yaniv, 2017, "Selective Classification for Deep Neural
Networks"). So the guarantee is also checked by simulation: ``tests/test_selective.py`` and
``benchmarks/abstention.py`` draw hundreds of calibration sets from streams with a known error
curve, monotone or not, and count violations.

A target that no threshold meets raises :class:`certa.errors.InputError` naming the lowest error
this calibration set *can* certify (:func:`lowest_certifiable_error`); it never falls back silently to
a threshold that abstains on everything.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import xlogy
from scipy.stats import binom

from ..errors import InputError, UnknownNameError
from ..metrics import as_unit_array, check_inputs

Bound = Literal["auto", "binomial", "hoeffding_bentkus", "hoeffding"]
BOUNDS: tuple[str, ...] = ("auto", "binomial", "hoeffding_bentkus", "hoeffding")

__all__ = [
    "BOUNDS",
    "CoverageAtTarget",
    "SelectiveOutcome",
    "SelectiveThreshold",
    "apply_threshold",
    "binomial_pvalue",
    "certify_threshold",
    "coverage_at_target_error",
    "coverage_table",
    "default_min_kept",
    "hoeffding_bentkus_pvalue",
    "hoeffding_pvalue",
    "lowest_certifiable_error",
    "min_certifiable_count",
    "pvalues",
    "select_threshold",
]


# --------------------------------------------------------------------------- p-values


def binomial_pvalue(errors: ArrayLike, n: ArrayLike, alpha: float) -> np.ndarray:
    """Exact binomial p-value for ``H0: risk > alpha`` (binary losses): ``P(Binom(n, alpha) <= errors)``.

    Valid for any risk ``>= alpha``, because the binomial CDF decreases in the success probability.
    ``p <= delta`` exactly when the one-sided Clopper–Pearson upper ``1 - delta`` bound on the risk
    is below ``alpha`` (Clopper & Pearson, 1934). ``n = 0`` gives 1 (nothing is learnt).
    """
    k = np.asarray(errors, dtype=float)
    m = np.asarray(n, dtype=float)
    return np.where(m > 0, binom.cdf(np.floor(k + 1e-9), m, alpha), 1.0)


def _kl_bernoulli(a: np.ndarray, b: float) -> np.ndarray:
    """Relative entropy between Bernoulli(a) and Bernoulli(b), with 0·log 0 = 0."""
    return xlogy(a, a / b) + xlogy(1.0 - a, (1.0 - a) / (1.0 - b))


def hoeffding_pvalue(risk_hat: ArrayLike, n: ArrayLike, alpha: float) -> np.ndarray:
    """Hoeffding p-value for ``H0: risk > alpha`` from a mean of ``n`` losses in [0, 1].

    ``exp(-n · KL(min(risk_hat, alpha) || alpha))`` with ``KL`` the Bernoulli relative entropy:
    Hoeffding's (1963, Thm 1) bound on ``P(mean <= risk_hat)`` for bounded variables with mean
    ``alpha``, as used in Bates et al. (2021, RCPS) and LTT. ``n = 0`` gives 1.
    """
    r = np.minimum(np.asarray(risk_hat, dtype=float), alpha)
    m = np.asarray(n, dtype=float)
    return np.where(m > 0, np.exp(-m * _kl_bernoulli(r, alpha)), 1.0)


def hoeffding_bentkus_pvalue(risk_hat: ArrayLike, n: ArrayLike, alpha: float) -> np.ndarray:
    """Hoeffding–Bentkus p-value for ``H0: risk > alpha`` from a mean of ``n`` losses in [0, 1].

    ``min(Hoeffding, e · P(Binom(n, alpha) <= ceil(n · risk_hat)))`` (Bates, Angelopoulos, Lei,
    Malik & Jordan, 2021, "Distribution-Free, Risk-Controlling Prediction Sets", the HB bound;
    Bentkus, 2004, "On Hoeffding's inequalities"). Valid for any losses bounded in [0, 1]; for
    binary losses the exact :func:`binomial_pvalue` is tighter.
    """
    r = np.asarray(risk_hat, dtype=float)
    m = np.asarray(n, dtype=float)
    bentkus = math.e * binom.cdf(np.ceil(m * r - 1e-9), m, alpha)
    return np.where(m > 0, np.minimum(hoeffding_pvalue(r, m, alpha), np.minimum(bentkus, 1.0)), 1.0)


def pvalues(loss_sum: ArrayLike, n: ArrayLike, alpha: float, bound: str) -> np.ndarray:
    """The p-values of ``H0: risk > alpha`` for kept sets with summed loss ``loss_sum`` of ``n`` answers."""
    s = np.asarray(loss_sum, dtype=float)
    m = np.asarray(n, dtype=float)
    if bound == "binomial":
        return binomial_pvalue(s, m, alpha)
    risk_hat = np.divide(s, m, out=np.zeros_like(s), where=m > 0)
    if bound == "hoeffding_bentkus":
        return hoeffding_bentkus_pvalue(risk_hat, m, alpha)
    if bound == "hoeffding":
        return hoeffding_pvalue(risk_hat, m, alpha)
    raise UnknownNameError("bound", str(bound), BOUNDS[1:])


@functools.lru_cache(maxsize=256)
def min_certifiable_count(target_error: float, delta: float, bound: str = "binomial") -> int:
    """The fewest kept answers that can certify ``target_error`` at all: zero errors must give ``p <= delta``.

    For all three bounds the zero-error p-value is ``(1 - target_error) ** n``, so this is
    ``ceil(log(delta) / log(1 - target_error))``: 29 answers for a target of 0.1 at delta 0.05.
    """
    _check_levels(target_error, delta)
    n = max(1, math.ceil(math.log(delta) / math.log1p(-target_error)))
    while n > 1 and pvalues(0.0, n - 1, target_error, bound) <= delta:   # guard against rounding
        n -= 1
    while pvalues(0.0, n, target_error, bound) > delta:
        n += 1
    return n


@functools.lru_cache(maxsize=256)
def default_min_kept(target_error: float, delta: float, bound: str = "binomial") -> int:
    """The default first tested threshold: the fewest kept answers that certify ``target_error``
    even when their observed error is half of it.

    Fixed-sequence testing stops at its first non-rejection, so starting where a single error
    already stops it (:func:`min_certifiable_count` answers, where only zero errors certify) wastes
    the whole run on the noisiest test. Starting where half the target's error rate is still
    certified keeps the first tests from failing by chance: 76 answers for a target of 0.1 at
    level 0.05 with the binomial bound, 160 with Hoeffding–Bentkus. The start depends only on the
    target, delta and the bound, never on the grades; pass ``min_kept`` to choose it yourself.
    """
    lo = min_certifiable_count(target_error, delta, bound)
    hi = 2 * lo
    while True:
        n = np.arange(lo, hi)
        half = target_error / 2 * n
        observed = np.floor(half + 1e-9) if bound == "binomial" else half
        ok = np.flatnonzero(pvalues(observed, n, target_error, bound) <= delta)
        if ok.size:
            return int(n[ok[0]])
        lo, hi = hi, 2 * hi


# --------------------------------------------------------------------------- the calibration set


def _in_unit_interval(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and 0.0 < float(x) < 1.0


def _check_levels(target_error: float, delta: float) -> None:
    if not _in_unit_interval(target_error):
        raise InputError(f"target_error must be a number strictly between 0 and 1, got {target_error!r}")
    if not _in_unit_interval(delta):
        raise InputError(f"delta must be a number strictly between 0 and 1, got {delta!r}")


def _resolve_bound(bound: str, loss: np.ndarray) -> str:
    if bound not in BOUNDS:
        raise UnknownNameError("bound", str(bound), BOUNDS)
    binary = bool(np.all((loss == 0.0) | (loss == 1.0)))
    if bound == "auto":
        return "binomial" if binary else "hoeffding_bentkus"
    if bound == "binomial" and not binary:
        bad = int(np.flatnonzero((loss != 0.0) & (loss != 1.0))[0])
        raise InputError(f"bound='binomial' needs correct to be 0 or 1, but correct[{bad}] = {1 - loss[bad]:g}; "
                         "use bound='hoeffding_bentkus' for partial credit")
    return bound


@dataclass(frozen=True)
class _Sweep:
    """Calibration answers grouped by distinct confidence, highest first, with cumulative counts."""

    level: np.ndarray      # (G,) distinct confidences, descending
    n_kept: np.ndarray     # (G,) answers with confidence >= level
    loss_sum: np.ndarray   # (G,) summed loss 1 - correct of those answers
    n: int

    @classmethod
    def of(cls, conf: np.ndarray, loss: np.ndarray) -> _Sweep:
        order = np.argsort(-conf, kind="stable")
        c, lo = conf[order], loss[order]
        last = np.r_[np.flatnonzero(np.diff(c)), c.size - 1]   # last answer of each tied run
        return cls(c[last], last + 1, np.cumsum(lo)[last], int(c.size))

    def lowest(self, rule: _Rule) -> int:
        """Index of the lowest level any of ``rule.starts`` fixed sequences certifies; -1 when none."""
        level = rule.level
        first = _start(rule, level)
        testable = np.flatnonzero(self.n_kept >= first)
        if testable.size == 0:
            return -1
        ok = pvalues(self.loss_sum, self.n_kept, rule.target_error, rule.bound) <= level
        begin = np.unique(np.searchsorted(self.n_kept, np.linspace(self.n_kept[testable[0]], self.n, rule.starts)))
        fails = np.r_[np.flatnonzero(~ok), ok.size]
        end = fails[np.searchsorted(fails, begin)]          # each sequence's first non-rejection
        reached = end[end > begin] - 1
        return int(reached.max()) if reached.size else -1


@dataclass(frozen=True)
class _Rule:
    """The testing procedure's settings: target, delta, bound, first start and number of starts."""

    target_error: float
    delta: float
    bound: str
    min_kept: int | None
    starts: int

    @property
    def level(self) -> float:
        return self.delta / self.starts

    def at(self, target_error: float) -> _Rule:
        return _Rule(target_error, self.delta, self.bound, self.min_kept, self.starts)


def _start(rule: _Rule, level: float) -> int:
    floor = min_certifiable_count(rule.target_error, level, rule.bound)
    chosen = default_min_kept(rule.target_error, level, rule.bound) if rule.min_kept is None else rule.min_kept
    return max(floor, chosen)


def _rule(conf: ArrayLike, correct: ArrayLike, target_error: float, delta: float, bound: str,
          min_kept: int | None, starts: int) -> tuple[_Sweep, _Rule]:
    _check_levels(target_error, delta)
    if min_kept is not None and (not isinstance(min_kept, (int, np.integer)) or isinstance(min_kept, bool)
                                 or min_kept < 1):
        raise InputError(f"min_kept must be a positive integer or None, got {min_kept!r}")
    if not isinstance(starts, (int, np.integer)) or isinstance(starts, bool) or starts < 1:
        raise InputError(f"starts must be a positive integer, got {starts!r}")
    c, y = check_inputs(conf, correct)
    loss = 1.0 - y
    return _Sweep.of(c, loss), _Rule(float(target_error), float(delta), _resolve_bound(bound, loss),
                                     min_kept, int(starts))


# --------------------------------------------------------------------------- the threshold


@dataclass(frozen=True)
class SelectiveThreshold:
    """A certified abstention threshold: answer when ``confidence >= threshold``, abstain otherwise.

    ``coverage`` and ``error`` are measured on the calibration set (the share of answers kept and
    their mean loss ``1 - correct``); the guarantee is ``P(R(threshold) <= target_error) >= 1 - delta``
    over the draw of those ``n_calibration`` answers, ``R`` being the expected error of kept answers.
    ``min_kept`` and ``starts`` record the procedure (the kept count where the first sequence began,
    and how many sequences shared ``delta``).
    """

    threshold: float
    coverage: float
    error: float
    n_kept: int
    n_calibration: int
    target_error: float
    delta: float
    bound: str
    min_kept: int
    starts: int

    def keep(self, conf: ArrayLike) -> np.ndarray:
        """Boolean mask: which of these confidences are answered (``>= threshold``)."""
        return as_unit_array(conf, "confidence") >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SelectiveThreshold:
        """Rebuild from :meth:`to_dict` output (e.g. a threshold stored in a trained artifact)."""
        try:
            return cls(threshold=float(data["threshold"]), coverage=float(data["coverage"]),
                       error=float(data["error"]), n_kept=int(data["n_kept"]),
                       n_calibration=int(data["n_calibration"]), target_error=float(data["target_error"]),
                       delta=float(data["delta"]), bound=str(data["bound"]), min_kept=int(data["min_kept"]),
                       starts=int(data["starts"]))
        except KeyError as e:
            raise InputError(f"selective threshold is missing the field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise InputError(f"selective threshold has a malformed field: {e}") from None


def select_threshold(conf: ArrayLike, correct: ArrayLike, target_error: float, delta: float = 0.05,
                     bound: Bound = "auto", *, min_kept: int | None = None, starts: int = 3) -> SelectiveThreshold:
    """The lowest confidence threshold certified to keep the error of kept answers at most ``target_error``.

    Learn-then-Test with fixed-sequence testing over the calibration confidences, highest first
    (Angelopoulos et al., 2021); see the module docstring for the procedure and the guarantee.

    Parameters
    ----------
    conf : array-like of shape (n,)
        Calibration confidences in [0, 1] (any method; only their order matters).
    correct : array-like of shape (n,)
        Grades in [0, 1]; the loss is ``1 - correct``, so partial credit counts partially.
    target_error : float
        The error rate among answered questions to guarantee, in (0, 1).
    delta : float, default=0.05
        The allowed probability that the calibration draw yields a threshold violating the target.
    bound : {"auto", "binomial", "hoeffding_bentkus", "hoeffding"}, default="auto"
        The tail bound behind the p-values. ``"auto"`` is ``"binomial"`` (exact) when every grade is
        0 or 1 and ``"hoeffding_bentkus"`` otherwise; ``"binomial"`` refuses partial credit.
    min_kept : int, optional
        Where the first sequence starts: thresholds keeping fewer calibration answers are not tested.
        Default :func:`default_min_kept` at level ``delta / starts``; never below
        :func:`min_certifiable_count`. Choose it before looking at the grades.
    starts : int, default=3
        How many fixed sequences share ``delta`` (evenly spaced kept counts from the first start down
        to keeping every answer). 1 is the plain fixed-sequence test.

    Raises
    ------
    InputError
        When no threshold can be certified; the message names the lowest certifiable target.
    """
    sweep, rule = _rule(conf, correct, target_error, delta, bound, min_kept, starts)
    found = _certify(sweep, rule)
    if found is None:
        raise InputError(_infeasible_message(sweep, rule))
    return found


def certify_threshold(conf: ArrayLike, correct: ArrayLike, target_error: float, delta: float = 0.05,
                      bound: Bound = "auto", *, min_kept: int | None = None,
                      starts: int = 3) -> SelectiveThreshold | None:
    """:func:`select_threshold`, but ``None`` instead of an error when nothing can be certified.

    For loops over many calibration sets (simulations, re-splits), where working out the lowest
    certifiable target for the error message would be wasted; bad arguments still raise.
    """
    return _certify(*_rule(conf, correct, target_error, delta, bound, min_kept, starts))


def _certify(sweep: _Sweep, rule: _Rule) -> SelectiveThreshold | None:
    i = sweep.lowest(rule)
    if i < 0:
        return None
    n_kept = int(sweep.n_kept[i])
    return SelectiveThreshold(threshold=float(sweep.level[i]), coverage=n_kept / sweep.n,
                              error=float(sweep.loss_sum[i] / n_kept), n_kept=n_kept, n_calibration=sweep.n,
                              target_error=rule.target_error, delta=rule.delta, bound=rule.bound,
                              min_kept=_start(rule, rule.level), starts=rule.starts)


def _lowest_certifiable(sweep: _Sweep, rule: _Rule, tol: float = 1e-4) -> float | None:
    hi = 1.0 - 1e-9
    if sweep.lowest(rule.at(hi)) < 0:
        return None
    lo = 0.0
    while hi - lo > tol:   # bisection; hi is always certifiable
        mid = (lo + hi) / 2
        if sweep.lowest(rule.at(mid)) >= 0:
            hi = mid
        else:
            lo = mid
    return hi


def lowest_certifiable_error(conf: ArrayLike, correct: ArrayLike, delta: float = 0.05, bound: Bound = "auto",
                             *, min_kept: int | None = None, starts: int = 3, tol: float = 1e-4) -> float | None:
    """The lowest target error (to within ``tol``, from above) that :func:`select_threshold` certifies here.

    Found by bisection on the target (the returned value is certified); ``None`` when not even a
    target just below 1 can be certified (too few answers, or the most confident ones are wrong).
    Options are those of :func:`select_threshold`.
    """
    sweep, rule = _rule(conf, correct, 0.5, delta, bound, min_kept, starts)
    return _lowest_certifiable(sweep, rule, tol)


def _infeasible_message(sweep: _Sweep, rule: _Rule) -> str:
    head = (f"no confidence threshold certifies an error of at most {rule.target_error:g} at "
            f"delta={rule.delta:g} (bound={rule.bound}, {sweep.n} calibration answers)")
    start = _start(rule, rule.level)
    floor = min_certifiable_count(rule.target_error, rule.level, rule.bound)
    if sweep.n < floor:
        head += (f"; certifying {rule.target_error:g} at level delta/starts={rule.level:.3g} needs at least "
                 f"{floor} answers even with no errors")
    elif sweep.n < start:
        head += (f"; thresholds keeping fewer than min_kept={start} answers are not tested "
                 f"(min_kept can go down to {floor})")
    best = _lowest_certifiable(sweep, rule)
    if best is None:
        return head + "; no target error below 1 can be certified with this calibration set"
    shown = math.ceil(best * 1e4) / 1e4
    if shown >= 1.0 or sweep.lowest(rule.at(shown)) < 0:
        shown = best
    return head + f"; the lowest error this calibration set certifies is {shown:g}"


# --------------------------------------------------------------------------- applying a threshold


@dataclass(frozen=True)
class SelectiveOutcome:
    """What a threshold does to a set of answers: the share answered and (given grades) their error."""

    threshold: float
    coverage: float
    error: float | None     # mean loss of the kept answers; None without grades or when none is kept
    n_kept: int
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply_threshold(threshold: float | SelectiveThreshold, conf: ArrayLike,
                    correct: ArrayLike | None = None) -> SelectiveOutcome:
    """Realized coverage and error of a threshold on (test) answers: keep those with ``conf >= threshold``."""
    t = threshold.threshold if isinstance(threshold, SelectiveThreshold) else float(threshold)
    if correct is None:
        c = as_unit_array(conf, "confidence")
        if c.size == 0:
            raise InputError("confidence is empty; there is nothing to evaluate")
        y = None
    else:
        c, y = check_inputs(conf, correct)
    kept = c >= t
    n_kept = int(kept.sum())
    error = float(np.mean(1.0 - y[kept])) if y is not None and n_kept else None
    return SelectiveOutcome(threshold=t, coverage=n_kept / c.size, error=error, n_kept=n_kept, n=int(c.size))


# --------------------------------------------------------------------------- coverage at a target error


@dataclass(frozen=True)
class CoverageAtTarget:
    """A method's certified coverage at a target error, over random calibration/test re-splits.

    ``coverage`` is the mean share of test answers kept by the threshold certified on the
    calibration half (0 for a split where nothing could be certified: the user abstains on all);
    ``error`` the mean realized test error over the splits that kept something; ``violation_rate``
    the share of splits whose realized test error exceeds the target (finite test sets add their own
    noise, so it may exceed ``delta`` slightly even though the expected error is controlled);
    ``infeasible_rate`` the share of splits where no threshold was certified; ``oracle_coverage``
    the largest share of *all* answers whose empirical error is at most the target (no guarantee:
    what a threshold chosen with hindsight would reach).
    """

    target_error: float
    delta: float
    bound: str
    n_splits: int
    coverage: float
    coverage_std: float
    error: float | None
    violation_rate: float
    infeasible_rate: float
    oracle_coverage: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _oracle_coverage(sweep: _Sweep, target_error: float) -> float:
    ok = sweep.loss_sum <= target_error * sweep.n_kept + 1e-12
    return float(sweep.n_kept[ok].max() / sweep.n) if ok.any() else 0.0


def coverage_at_target_error(conf: ArrayLike, correct: ArrayLike, target_error: float, *, delta: float = 0.05,
                             bound: Bound = "auto", min_kept: int | None = None, starts: int = 3,
                             n_splits: int = 200, calibration_fraction: float = 0.5,
                             seed: int = 0) -> CoverageAtTarget:
    """How much a method's confidence lets a user answer at ``target_error``, over ``n_splits`` re-splits.

    Each split draws a random ``calibration_fraction`` of the answers, certifies a threshold on it
    with :func:`select_threshold` and applies it to the rest. This is the number for a results
    table ("coverage at target error 0.1"): the share of questions a user may answer with the
    guarantee, which rewards a confidence that ranks answers well *and* leaves enough data to certify.
    ``delta``, ``bound``, ``min_kept`` and ``starts`` are those of :func:`select_threshold`; the same ``seed``
    gives the same splits for every method, so coverages of two methods compare pairwise.
    """
    sweep_all, rule = _rule(conf, correct, target_error, delta, bound, min_kept, starts)
    c, y = check_inputs(conf, correct)
    if not 0.0 < calibration_fraction < 1.0:
        raise InputError(f"calibration_fraction must be strictly between 0 and 1, got {calibration_fraction!r}")
    if not isinstance(n_splits, int) or n_splits < 1:
        raise InputError(f"n_splits must be a positive integer, got {n_splits!r}")
    n_cal = int(round(calibration_fraction * c.size))
    if n_cal < 1 or n_cal >= c.size:
        raise InputError(f"{c.size} answers are too few to split into calibration and test sets")
    rng = np.random.default_rng(seed)
    coverage = np.zeros(n_splits)
    error = np.full(n_splits, np.nan)
    infeasible = 0
    for s in range(n_splits):
        perm = rng.permutation(c.size)
        cal, test = perm[:n_cal], perm[n_cal:]
        sweep = _Sweep.of(c[cal], 1.0 - y[cal])
        i = sweep.lowest(rule)
        if i < 0:
            infeasible += 1
            continue
        kept = c[test] >= sweep.level[i]
        coverage[s] = kept.mean()
        if kept.any():
            error[s] = np.mean(1.0 - y[test][kept])
    made = ~np.isnan(error)
    return CoverageAtTarget(
        target_error=rule.target_error, delta=rule.delta, bound=rule.bound, n_splits=n_splits,
        coverage=float(coverage.mean()), coverage_std=float(coverage.std()),
        error=float(error[made].mean()) if made.any() else None,
        violation_rate=float(np.sum(error[made] > target_error) / n_splits),
        infeasible_rate=infeasible / n_splits, oracle_coverage=_oracle_coverage(sweep_all, target_error))


def coverage_table(scores: Mapping[str, ArrayLike], correct: ArrayLike,
                   targets: Sequence[float] = (0.1, 0.2), **options: Any) -> dict[str, dict[float, CoverageAtTarget]]:
    """:func:`coverage_at_target_error` for every method and target: ``table[method][target]``.

    ``options`` go to :func:`coverage_at_target_error` (``delta``, ``bound``, ``n_splits``, ...);
    every method sees the same re-splits (same ``seed``), so their coverages compare pairwise.
    """
    return {name: {float(t): coverage_at_target_error(conf, correct, t, **options) for t in targets}
            for name, conf in scores.items()}
