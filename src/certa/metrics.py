"""Calibration and selective-prediction metrics: pure NumPy functions of (confidence, correct).

Every function takes ``conf`` (the confidence that an answer is correct, in
[0, 1]) and ``correct`` (the grade of that answer, in [0, 1]; usually 0 or 1,
fractional for partial credit) as one-dimensional arrays of the same length.
Inputs are checked: a length mismatch, an empty array, a NaN/inf or a value
outside [0, 1] raises :class:`certa.errors.InputError` naming the array and the
first offending index.

Binning is explicit everywhere (``n_bins`` and ``strategy``) because a
calibration error means little without it:

- ``"uniform"``: ``n_bins`` equal-width bins; bin ``k`` holds
  ``k / n_bins <= conf < (k + 1) / n_bins`` and the last bin also holds
  ``conf == 1``.
- ``"quantile"``: equal-mass ("adaptive") bins; answers sorted by confidence
  are cut into ``n_bins`` groups of nearly equal size. Tied confidences always
  share a bin (so the result does not depend on input order), which can leave
  some bins empty when many confidences tie.

Ranking metrics (:func:`auroc`, :func:`auprc`) need two classes: an answer
counts as correct when ``correct >= 0.5``. :func:`aurc` and
:func:`risk_coverage_curve` use the loss ``1 - correct`` as given, so partial
credit counts partially there. See ``docs/metrics.md`` for the definitions.

Internally every metric is computed from the answers grouped by distinct
confidence, each answer carrying an integer weight: all ones for the functions
here, resample counts in :func:`bootstrap_metrics`, which evaluates a block of
bootstrap resamples in a few array operations. Point estimates and intervals
therefore run through the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .errors import InputError, UnknownNameError

Strategy = Literal["uniform", "quantile"]
STRATEGIES: tuple[str, ...] = ("uniform", "quantile")

#: Default clipping for :func:`nll`: a fully confident wrong answer costs -log(1e-7) ≈ 16.1 nats.
NLL_EPS = 1e-7

__all__ = [
    "BATCHED",
    "STRATEGIES",
    "BrierDecomposition",
    "ReliabilityBins",
    "accuracy",
    "as_unit_array",
    "aurc",
    "auprc",
    "auroc",
    "bootstrap_ci",
    "bootstrap_metrics",
    "brier",
    "brier_decomposition",
    "check_inputs",
    "ece",
    "ece_by_chance",
    "mce",
    "nll",
    "paired_difference",
    "paired_mean_difference",
    "reliability_bins",
    "risk_coverage_curve",
]


# --------------------------------------------------------------------------- input checks


def as_unit_array(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as a 1-D float array, or an InputError naming ``name`` and the first bad index."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an array of numbers in [0, 1]") from None
    if arr.ndim != 1:
        raise InputError(f"{name} must be one-dimensional, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise InputError(f"{name}[{bad[0]}] is {arr[bad[0]]}; every value must be a finite number")
    bad = np.flatnonzero((arr < 0.0) | (arr > 1.0))
    if bad.size:
        raise InputError(f"{name}[{bad[0]}] = {arr[bad[0]]:g} is outside [0, 1]")
    return arr


def check_inputs(conf: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (confidence, correct) pair and return both as float arrays."""
    c = as_unit_array(conf, "confidence")
    y = as_unit_array(correct, "correct")
    if c.shape != y.shape:
        raise InputError(f"confidence has {c.size} values but correct has {y.size}; they must pair one to one")
    if c.size == 0:
        raise InputError("confidence and correct are empty; there is nothing to evaluate")
    return c, y


def _check_bins(n_bins: int, strategy: str) -> None:
    if not _is_count(n_bins) or n_bins < 1:
        raise InputError(f"n_bins must be a positive integer, got {n_bins!r}")
    if strategy not in STRATEGIES:
        raise UnknownNameError("binning strategy", str(strategy), STRATEGIES)


def _is_count(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _positive(y: np.ndarray) -> np.ndarray:
    """Binary labels for ranking metrics: partial credit of at least one half counts as correct."""
    return y >= 0.5


# --------------------------------------------------------------------------- the weighted sample


class _Levels:
    """Answers grouped by distinct confidence (ascending), every answer carrying an integer weight.

    Each row of ``weights`` is one sample: all ones for the data itself, resample counts for a
    bootstrap replicate. Every metric below is a function of the per-level sums, so point
    estimates and bootstrap intervals run through the same code, and a thousand replicates are a
    few array operations instead of a thousand sorts.
    """

    def __init__(self, c: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None):
        order = np.argsort(c, kind="stable")
        self.conf, self.correct_ = c[order], y[order]                     # per answer, ascending
        w = np.ones((1, c.size)) if weights is None else weights[:, order].astype(float)
        starts = np.r_[0, np.flatnonzero(np.diff(self.conf)) + 1]
        self.value = self.conf[starts]                                     # (G,) distinct confidences
        self.total = w.sum(axis=1)                                         # (r,) answers per sample
        self.weight = np.add.reduceat(w, starts, axis=1)                   # (r, G) answers per level
        self.correct = np.add.reduceat(w * self.correct_, starts, axis=1)  # (r, G) summed correctness
        self.positive = np.add.reduceat(w * _positive(self.correct_), starts, axis=1)
        self._w = w

    @classmethod
    def of(cls, conf: ArrayLike, correct: ArrayLike) -> _Levels:
        return cls(*check_inputs(conf, correct))

    @property
    def rows(self) -> int:
        return self.weight.shape[0]

    def mean(self, per_answer: np.ndarray) -> np.ndarray:
        """Weighted mean of a per-answer quantity (given in ascending-confidence order), per row."""
        return self._w @ per_answer / self.total


# --------------------------------------------------------------------------- binning


def _uniform_bin(c: np.ndarray, n_bins: int) -> np.ndarray:
    # floor(c * B) rather than comparing against linspace edges: linspace(0, 1, 11)[3] is
    # 0.30000000000000004, which would put c = 0.3 in the bin below.
    return np.minimum((c * n_bins).astype(np.int64), n_bins - 1)


def _bin_sums(lv: _Levels, n_bins: int, strategy: str) -> tuple[np.ndarray, ...]:
    """Per row and bin: answer count, summed confidence, summed correctness; and each level's bin."""
    rows, levels = lv.weight.shape
    if strategy == "uniform":
        level_bin = np.broadcast_to(_uniform_bin(lv.value, n_bins), (rows, levels))
    else:
        # Equal mass: a level's bin follows the number of answers below it, so tied answers
        # always share a bin and the result does not depend on input order.
        # Levels absent from a resample (weight 0) past the last answer are clipped into the last bin.
        below = np.cumsum(lv.weight, axis=1) - lv.weight
        level_bin = np.minimum(below * n_bins // lv.total[:, None], n_bins - 1).astype(np.int64)
    flat = (level_bin + n_bins * np.arange(rows)[:, None]).ravel()

    def per_bin(x: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=x.ravel(), minlength=rows * n_bins).reshape(rows, n_bins)

    return per_bin(lv.weight), per_bin(lv.weight * lv.value), per_bin(lv.correct), level_bin


def _quantile_edges(value: np.ndarray, level_bin: np.ndarray, n_bins: int) -> np.ndarray:
    """Edges for equal-mass bins: halfway between the neighbouring bins' extreme confidences."""
    lo = np.full(n_bins, np.nan)
    hi = np.full(n_bins, np.nan)
    np.fmin.at(lo, level_bin, value)
    np.fmax.at(hi, level_bin, value)
    below = np.fmax.accumulate(hi)[:-1]               # largest confidence in bins < k
    above = np.fmin.accumulate(lo[::-1])[::-1][1:]    # smallest confidence in bins >= k
    inner = np.where(np.isnan(above), 1.0, (below + above) / 2)
    return np.concatenate([[0.0], inner, [1.0]])


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin summary behind a reliability diagram and the binned calibration errors.

    Attributes
    ----------
    edges : ndarray of shape (n_bins + 1,)
        Bin boundaries. Uniform bins: ``linspace(0, 1, n_bins + 1)``. Quantile
        bins: 0, then the midpoints between neighbouring bins' extreme
        confidences, then 1.
    count : ndarray of shape (n_bins,)
        Number of answers in each bin.
    confidence : ndarray of shape (n_bins,)
        Mean confidence in each bin (NaN when the bin is empty).
    accuracy : ndarray of shape (n_bins,)
        Mean correctness in each bin (NaN when the bin is empty).
    strategy : {"uniform", "quantile"}
        How the bins were formed.
    """

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    strategy: str

    @property
    def n_bins(self) -> int:
        return int(self.count.size)

    @property
    def gap(self) -> np.ndarray:
        """Signed ``accuracy - confidence`` per bin; negative means over-confident."""
        return self.accuracy - self.confidence

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready lists (empty bins' NaNs become ``None``)."""
        return {
            "strategy": self.strategy,
            "edges": _json_list(self.edges),
            "count": [int(n) for n in self.count],
            "confidence": _json_list(self.confidence),
            "accuracy": _json_list(self.accuracy),
        }


def _json_list(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def reliability_bins(
    conf: ArrayLike, correct: ArrayLike, n_bins: int = 10, strategy: Strategy = "uniform"
) -> ReliabilityBins:
    """Bin answers by confidence and summarise each bin.

    Parameters
    ----------
    conf : array-like of shape (n,)
        Confidences in [0, 1].
    correct : array-like of shape (n,)
        Correctness in [0, 1] (fractional values are averaged as given).
    n_bins : int, default=10
        Number of bins.
    strategy : {"uniform", "quantile"}, default="uniform"
        Equal-width or equal-mass bins (see the module docstring).

    Returns
    -------
    ReliabilityBins
        Edges, count, mean confidence and accuracy per bin.
    """
    _check_bins(n_bins, strategy)
    lv = _Levels.of(conf, correct)
    count, conf_sum, correct_sum, level_bin = (x[0] for x in _bin_sums(lv, n_bins, strategy))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf, acc = conf_sum / count, correct_sum / count
    edges = (np.linspace(0.0, 1.0, n_bins + 1) if strategy == "uniform"
             else _quantile_edges(lv.value, level_bin, n_bins))
    return ReliabilityBins(edges=edges, count=count.astype(np.int64), confidence=mean_conf,
                           accuracy=acc, strategy=strategy)


# --------------------------------------------------------------------------- batched kernels
# Each takes a _Levels and returns one value per row of weights.


def _ece(lv: _Levels, n_bins: int, strategy: str = "uniform") -> np.ndarray:
    # sum_b (n_b / n) |acc_b - conf_b| = sum_b |correct_sum_b - conf_sum_b| / n
    _, conf_sum, correct_sum, _ = _bin_sums(lv, n_bins, strategy)
    return np.abs(correct_sum - conf_sum).sum(axis=1) / lv.total


def _mce(lv: _Levels, n_bins: int, strategy: str = "uniform") -> np.ndarray:
    count, conf_sum, correct_sum, _ = _bin_sums(lv, n_bins, strategy)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.abs(correct_sum - conf_sum) / count
    return np.where(count > 0, gap, -np.inf).max(axis=1)


def _brier(lv: _Levels) -> np.ndarray:
    return lv.mean((lv.conf - lv.correct_) ** 2)


def _nll(lv: _Levels, eps: float = NLL_EPS) -> np.ndarray:
    c, y = np.clip(lv.conf, eps, 1.0 - eps), lv.correct_
    return -lv.mean(y * np.log(c) + (1.0 - y) * np.log1p(-c))


def _accuracy(lv: _Levels) -> np.ndarray:
    return lv.mean(lv.correct_)


def _auroc(lv: _Levels) -> np.ndarray:
    # Mann-Whitney: each correct answer wins against every wrong answer at a lower level and
    # half-wins against wrong answers tied with it.
    pos, neg = lv.positive, lv.weight - lv.positive
    neg_below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (pos * (neg_below + neg / 2)).sum(axis=1) / pairs, np.nan)


def _auprc(lv: _Levels) -> np.ndarray:
    # Thresholds from the highest level down: recall rises by pos/P at a level, and that step is
    # weighted by the precision of everything at or above the level.
    pos, weight = lv.positive[:, ::-1], lv.weight[:, ::-1]
    kept = np.cumsum(weight, axis=1)
    precision = np.divide(np.cumsum(pos, axis=1), kept, out=np.zeros_like(kept), where=kept > 0)
    n_pos = pos.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (pos * precision).sum(axis=1) / n_pos
    return np.where((n_pos > 0) & (n_pos < lv.total), ap, np.nan)


def _aurc(lv: _Levels) -> np.ndarray:
    # From the highest level down; a level holding w answers with summed loss L sits after b
    # answers with summed loss L_b. Keeping j of its answers (expected loss j L / w) gives risk
    # (L_b + j m) / (b + j) with m = L / w, and the sum over j = 1..w has the closed form
    # w m + (L_b - m b) (H(b + w) - H(b)) with H the harmonic numbers. Needs integer weights.
    weight = lv.weight[:, ::-1]
    loss = weight - lv.correct[:, ::-1]
    before = np.cumsum(weight, axis=1) - weight
    loss_before = np.cumsum(loss, axis=1) - loss
    m = np.divide(loss, weight, out=np.zeros_like(loss), where=weight > 0)
    harmonic = np.r_[0.0, np.cumsum(1.0 / np.arange(1, int(lv.total.max()) + 1))]
    spread = harmonic[(before + weight).astype(np.int64)] - harmonic[before.astype(np.int64)]
    return (loss + (loss_before - m * before) * spread).sum(axis=1) / lv.total


#: The metrics :func:`bootstrap_metrics` evaluates, by name. ``ace`` is the equal-mass ECE.
BATCHED: dict[str, Callable[[_Levels, int], np.ndarray]] = {
    "accuracy": lambda lv, n_bins: _accuracy(lv),
    "ece": lambda lv, n_bins: _ece(lv, n_bins, "uniform"),
    "ace": lambda lv, n_bins: _ece(lv, n_bins, "quantile"),
    "mce": lambda lv, n_bins: _mce(lv, n_bins, "uniform"),
    "brier": lambda lv, n_bins: _brier(lv),
    "nll": lambda lv, n_bins: _nll(lv),
    "auroc": lambda lv, n_bins: _auroc(lv),
    "auprc": lambda lv, n_bins: _auprc(lv),
    "aurc": lambda lv, n_bins: _aurc(lv),
}


# --------------------------------------------------------------------------- calibration


def ece(conf: ArrayLike, correct: ArrayLike, n_bins: int = 10, strategy: Strategy = "uniform") -> float:
    """Expected calibration error: the count-weighted mean gap between accuracy and confidence.

    ``ECE = sum_b (n_b / n) * |acc_b - conf_b|`` over non-empty bins ``b``,
    where ``acc_b`` and ``conf_b`` are the bin's mean correctness and mean
    confidence. With ``strategy="quantile"`` this is the adaptive (equal-mass)
    ECE, often called ACE.

    Parameters
    ----------
    conf : array-like of shape (n,)
        Confidences in [0, 1].
    correct : array-like of shape (n,)
        Correctness in [0, 1]; fractional credit is averaged as given.
    n_bins : int, default=10
        Number of bins; always report it alongside the value.
    strategy : {"uniform", "quantile"}, default="uniform"
        Equal-width or equal-mass bins.

    Returns
    -------
    float
        ECE in [0, 1]; 0 is perfectly calibrated at this binning.
    """
    _check_bins(n_bins, strategy)
    return float(_ece(_Levels.of(conf, correct), n_bins, strategy)[0])


def ece_by_chance(conf: ArrayLike, p_correct: ArrayLike | None = None, n_bins: int = 10,
                  strategy: Strategy = "uniform", n_draws: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The ECE these confidences show by chance alone: its mean and standard deviation over drawn grades.

    Each answer ``i`` is drawn right with probability ``p_correct[i]`` (default:
    ``conf[i]``, a reader that *is* perfectly calibrated) and the ECE of ``conf``
    against the drawn grades is averaged over ``n_draws`` draws. A binned ECE on a
    few hundred answers is never near 0 even for a calibrated reader — each bin's
    accuracy is itself a noisy estimate — so a measured ECE means little until it
    is set beside this floor. Passing ``p_correct`` asks other questions, e.g.
    ``conf + shift`` for a reader calibrated except for one offset in level.

    Returns
    -------
    (mean, sd) : tuple of float
        The chance ECE's mean and its standard deviation over the draws.
    """
    _check_bins(n_bins, strategy)
    if not _is_count(n_draws) or n_draws < 1:
        raise InputError(f"n_draws must be a positive integer, got {n_draws!r}")
    c = as_unit_array(conf, "conf")
    if c.size == 0:
        raise InputError("conf is empty: there is no answer to draw a grade for")
    p = c if p_correct is None else as_unit_array(p_correct, "p_correct")
    if p.shape != c.shape:
        raise InputError(f"p_correct has {p.size} values for {c.size} confidences")
    # Bins depend on the confidences only, so every draw shares them: ECE = sum_b |sum_(i in b) (y_i - c_i)| / n.
    levels = _Levels(c, np.zeros_like(c))
    _, conf_sums, _, level_bin = _bin_sums(levels, n_bins, strategy)
    answer_bin = np.repeat(level_bin[0], levels.weight[0].astype(np.int64))  # ascending-confidence order
    in_bin = np.zeros((c.size, n_bins))
    in_bin[np.arange(c.size), answer_bin] = 1.0
    p_sorted = p[np.argsort(c, kind="stable")]
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_WEIGHTS // c.size)
    values = []
    for start in range(0, n_draws, chunk):
        grades = rng.random((min(chunk, n_draws - start), c.size)) < p_sorted
        values.append(np.abs(grades @ in_bin - conf_sums[0]).sum(axis=1) / c.size)
    drawn = np.concatenate(values)
    return float(drawn.mean()), float(drawn.std())


def mce(conf: ArrayLike, correct: ArrayLike, n_bins: int = 10, strategy: Strategy = "uniform") -> float:
    """Maximum calibration error: the largest ``|acc_b - conf_b|`` over non-empty bins.

    Parameters and binning are those of :func:`ece`. Sensitive to sparsely
    populated bins: a bin holding one answer can set it.

    Returns
    -------
    float
        MCE in [0, 1].
    """
    _check_bins(n_bins, strategy)
    return float(_mce(_Levels.of(conf, correct), n_bins, strategy)[0])


def brier(conf: ArrayLike, correct: ArrayLike) -> float:
    """Brier score: the mean squared difference ``mean((conf - correct) ** 2)``.

    Equals :func:`sklearn.metrics.brier_score_loss` for binary ``correct``.

    Returns
    -------
    float
        In [0, 1]; lower is better. A constant confidence equal to the base
        rate ``p`` scores ``p * (1 - p)``.
    """
    return float(_brier(_Levels.of(conf, correct))[0])


class BrierDecomposition(NamedTuple):
    """Murphy's decomposition of the Brier score over stated bins.

    ``brier ≈ reliability - resolution + uncertainty``; the identity is exact
    for binary correctness when confidence is constant within each bin.
    """

    brier: float
    reliability: float   # sum_b (n_b/n) (conf_b - acc_b)^2: miscalibration, lower is better
    resolution: float    # sum_b (n_b/n) (acc_b - acc)^2: how far bins separate, higher is better
    uncertainty: float   # acc (1 - acc): the Brier score of always predicting the base rate


def brier_decomposition(
    conf: ArrayLike, correct: ArrayLike, n_bins: int = 10, strategy: Strategy = "uniform"
) -> BrierDecomposition:
    """Split the Brier score into reliability, resolution and uncertainty.

    Parameters
    ----------
    conf, correct : array-like of shape (n,)
        Confidences and correctness in [0, 1].
    n_bins : int, default=10
        Number of bins used for ``conf_b`` and ``acc_b``.
    strategy : {"uniform", "quantile"}, default="uniform"
        Equal-width or equal-mass bins.

    Returns
    -------
    BrierDecomposition
        ``(brier, reliability, resolution, uncertainty)``. The residual
        ``brier - (reliability - resolution + uncertainty)`` comes from the
        spread of confidence inside bins (and, for fractional correctness, from
        ``uncertainty`` being computed as ``acc (1 - acc)``).
    """
    c, y = check_inputs(conf, correct)
    bins = reliability_bins(c, y, n_bins, strategy)
    used = bins.count > 0
    weight = bins.count[used] / c.size
    base_rate = float(np.mean(y))
    return BrierDecomposition(
        brier=float(np.mean((c - y) ** 2)),
        reliability=float(np.sum(weight * bins.gap[used] ** 2)),
        resolution=float(np.sum(weight * (bins.accuracy[used] - base_rate) ** 2)),
        uncertainty=base_rate * (1.0 - base_rate),
    )


def nll(conf: ArrayLike, correct: ArrayLike, eps: float = NLL_EPS) -> float:
    """Negative log-likelihood (log loss) of correctness under the confidence, in nats.

    ``-mean(y * log(c) + (1 - y) * log(1 - c))`` with ``c`` clipped to
    ``[eps, 1 - eps]`` so that a fully confident mistake costs ``-log(eps)``
    instead of infinity. Equals :func:`sklearn.metrics.log_loss` for binary
    ``correct`` when no confidence needs clipping (scikit-learn clips at the
    float64 machine epsilon instead).

    Parameters
    ----------
    conf, correct : array-like of shape (n,)
        Confidences and correctness in [0, 1]; fractional correctness gives
        the cross-entropy against that soft target.
    eps : float, default=1e-7
        Clipping distance from 0 and 1.

    Returns
    -------
    float
        Non-negative; lower is better.
    """
    if not 0.0 < eps < 0.5:
        raise InputError(f"eps must be in (0, 0.5), got {eps!r}")
    return float(_nll(_Levels.of(conf, correct), eps)[0])


def accuracy(conf: ArrayLike, correct: ArrayLike) -> float:
    """Mean correctness. Takes ``conf`` only so every metric shares one signature (it is ignored)."""
    _, y = check_inputs(conf, correct)
    return float(np.mean(y))


# --------------------------------------------------------------------------- ranking


def auroc(conf: ArrayLike, correct: ArrayLike) -> float:
    """Area under the ROC curve for telling correct answers from wrong ones by confidence.

    The probability that a random correct answer gets a higher confidence than
    a random wrong one, ties counting one half (the Mann-Whitney statistic).
    Correct means ``correct >= 0.5``. Equals
    :func:`sklearn.metrics.roc_auc_score` with correct answers as the positive
    class.

    Returns
    -------
    float
        In [0, 1]; 0.5 is chance. NaN when every answer is correct or every
        answer is wrong: there is then no pair to rank.
    """
    return float(_auroc(_Levels.of(conf, correct))[0])


def auprc(conf: ArrayLike, correct: ArrayLike) -> float:
    """Area under the precision-recall curve as average precision, correct answers positive.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over confidence thresholds from high to
    low, where ``P_k`` and ``R_k`` are the precision and recall of flagging
    answers with confidence at least the k-th distinct value as correct (no
    interpolation). Correct means ``correct >= 0.5``. Equals
    :func:`sklearn.metrics.average_precision_score`.

    Returns
    -------
    float
        In [0, 1]; a random ranking scores about the accuracy. NaN when every
        answer is correct or every answer is wrong: with no wrong answers AP is
        trivially 1 whatever the ranking, with no correct answers recall is
        undefined, so neither value says anything about the confidence.
    """
    return float(_auprc(_Levels.of(conf, correct))[0])


def risk_coverage_curve(conf: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Risk of the answers kept when keeping only the most confident ones, at every coverage.

    Answers are sorted by confidence, highest first; keeping the top ``k``
    gives coverage ``k / n`` and risk ``mean(1 - correct)`` over those ``k``.
    Within a run of tied confidences the order is arbitrary, so the risk there
    is its expectation over random tie-breaking (the tied answers contribute
    their mean loss each), which makes the curve independent of input order.

    Returns
    -------
    coverage : ndarray of shape (n,)
        ``k / n`` for ``k = 1 .. n``.
    risk : ndarray of shape (n,)
        Expected error rate among the ``k`` most confident answers.
    thresholds : ndarray of shape (n,)
        The confidence of the ``k``-th answer (non-increasing).
    """
    lv = _Levels.of(conf, correct)
    size = lv.weight[0, ::-1].astype(np.int64)           # levels from the highest confidence down
    loss = size - lv.correct[0, ::-1]
    loss_before = np.cumsum(loss) - loss
    first = np.cumsum(size) - size                        # answers ranked above each level
    level = np.repeat(np.arange(size.size), size)
    kept = np.arange(1, size.sum() + 1)
    expected_loss = loss_before[level] + (kept - first[level]) * (loss / size)[level]
    return kept / kept.size, expected_loss / kept, lv.value[::-1][level]


def aurc(conf: ArrayLike, correct: ArrayLike) -> float:
    """Area under the risk-coverage curve: the mean of the risk over coverages ``1/n .. 1``.

    Lower is better. Its minimum for given correctness is reached when every
    correct answer outranks every wrong one; with ``m`` correct answers out of
    ``n`` it is ``(1/n) * sum_{k=m+1}^{n} (k - m) / k`` (about
    ``r + (1 - r) * ln(1 - r)`` for error rate ``r`` and large ``n``). The
    loss is ``1 - correct`` as given (no thresholding).

    Returns
    -------
    float
        In [0, 1]. Equals ``risk_coverage_curve(conf, correct)[1].mean()``.
    """
    return float(_aurc(_Levels.of(conf, correct))[0])


# --------------------------------------------------------------------------- uncertainty of a metric

MetricFn = Callable[[np.ndarray, np.ndarray], float]
_CHUNK_WEIGHTS = 1 << 21  # resamples are drawn in blocks of about two million indices


def _check_bootstrap(n_resamples: int, alpha: float) -> None:
    if not _is_count(n_resamples) or n_resamples < 0:
        raise InputError(f"n_resamples must be a non-negative integer, got {n_resamples!r}")
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must be in (0, 1), got {alpha!r}")


def _resample_indices(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of bootstrap index rows; the same (n, n_resamples, seed) always gives the same rows."""
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_WEIGHTS // n)
    for start in range(0, n_resamples, rows):
        yield rng.integers(0, n, size=(min(rows, n_resamples - start), n))


def _counts(indices: np.ndarray) -> np.ndarray:
    """How often each answer appears in each resample row."""
    rows, n = indices.shape
    flat = (indices + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n)


def _percentile_interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    # Resamples where the metric is undefined (e.g. AUROC on a single-class resample) are dropped:
    # the interval is then conditional on the metric being defined.
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def bootstrap_ci(
    metric_fn: MetricFn,
    conf: ArrayLike,
    correct: ArrayLike,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``metric_fn(conf, correct)``.

    Draws ``n_resamples`` resamples of the answers with replacement (pairs of
    confidence and correctness kept together), evaluates the metric on each and
    returns the ``alpha/2`` and ``1 - alpha/2`` quantiles of the values.
    Deterministic for a given ``seed``. Resamples on which the metric is NaN
    are left out. For metrics biased in small samples (binned calibration
    errors grow with sampling noise) the interval may lie above the point
    estimate; that is the bootstrap reporting the bias, not an error.

    For certa's own metrics, :func:`bootstrap_metrics` gives the same
    intervals (same resamples for the same seed) much faster.

    Parameters
    ----------
    metric_fn : callable
        ``metric_fn(conf, correct) -> float``, e.g. :func:`auroc` or
        ``functools.partial(ece, n_bins=15)``.
    conf, correct : array-like of shape (n,)
        Confidences and correctness in [0, 1].
    n_resamples : int, default=1000
        Number of bootstrap resamples; 0 gives ``(nan, nan)``.
    alpha : float, default=0.05
        One minus the coverage: 0.05 gives a 95% interval.
    seed : int, default=0
        Seed of the resampling generator.

    Returns
    -------
    (low, high) : tuple of float
        NaN, NaN when the metric is undefined on every resample.
    """
    c, y = check_inputs(conf, correct)
    _check_bootstrap(n_resamples, alpha)
    values = [metric_fn(c[row], y[row]) for block in _resample_indices(c.size, n_resamples, seed) for row in block]
    return _percentile_interval(np.asarray(values, dtype=float), alpha)


def bootstrap_metrics(
    conf: ArrayLike,
    correct: ArrayLike,
    names: Iterable[str] = tuple(BATCHED),
    n_bins: int = 10,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, tuple[float, float, float]]:
    """Point estimates and percentile bootstrap intervals of several built-in metrics at once.

    Every metric sees the same resamples, which are also those of
    :func:`bootstrap_ci` with the same ``seed``, so intervals of different
    metrics, or of different methods scored on the same answers, are paired.
    The resamples are evaluated as weighted samples in blocks, not one by one.

    Parameters
    ----------
    conf, correct : array-like of shape (n,)
        Confidences and correctness in [0, 1].
    names : iterable of str, default=all of ``BATCHED``
        Which metrics: ``accuracy``, ``ece``, ``ace`` (equal-mass ECE),
        ``mce``, ``brier``, ``nll``, ``auroc``, ``auprc``, ``aurc``.
    n_bins : int, default=10
        Bins for ``ece``, ``ace`` and ``mce``.
    n_resamples : int, default=1000
        Number of bootstrap resamples; 0 gives NaN bounds.
    alpha : float, default=0.05
        One minus the coverage.
    seed : int, default=0
        Seed of the resampling generator.

    Returns
    -------
    dict
        ``name -> (value, low, high)``.
    """
    names = list(names)
    for name in names:
        if name not in BATCHED:
            raise UnknownNameError("metric", name, BATCHED)
    _check_bins(n_bins, "uniform")
    _check_bootstrap(n_resamples, alpha)
    c, y = check_inputs(conf, correct)
    point = _Levels(c, y)
    draws: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for block in _resample_indices(c.size, n_resamples, seed):
        resampled = _Levels(c, y, _counts(block))
        for name in names:
            draws[name].append(BATCHED[name](resampled, n_bins))
    out = {}
    for name in names:
        value = float(BATCHED[name](point, n_bins)[0])
        low, high = (_percentile_interval(np.concatenate(draws[name]), alpha) if n_resamples
                     else (float("nan"), float("nan")))
        out[name] = (value, low, high)
    return out


def paired_difference(
    metric: str,
    conf_a: ArrayLike,
    conf_b: ArrayLike,
    correct: ArrayLike,
    n_bins: int = 10,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``metric(a) - metric(b)`` for two methods scored on the same answers, with a paired bootstrap CI.

    Both methods see the same resamples, so the interval reflects the
    difference itself rather than two independent uncertainties (much
    narrower than comparing two separate intervals when the methods agree on
    which answers are hard). Returns ``(difference, low, high)``.
    """
    if metric not in BATCHED:
        raise UnknownNameError("metric", metric, BATCHED)
    _check_bins(n_bins, "uniform")
    _check_bootstrap(n_resamples, alpha)
    a, y = check_inputs(conf_a, correct)
    b, _ = check_inputs(conf_b, correct)
    fn = BATCHED[metric]
    value = float(fn(_Levels(a, y), n_bins)[0] - fn(_Levels(b, y), n_bins)[0])
    draws = []
    for block in _resample_indices(a.size, n_resamples, seed):
        counts = _counts(block)
        draws.append(fn(_Levels(a, y, counts), n_bins) - fn(_Levels(b, y, counts), n_bins))
    low, high = _percentile_interval(np.concatenate(draws), alpha) if n_resamples else (float("nan"),) * 2
    return value, low, high


def paired_mean_difference(
    a: ArrayLike, b: ArrayLike, n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0,
) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` for paired per-item values (e.g. two strategies' correctness per question).

    Items are resampled with replacement, pairs kept together; returns
    ``(difference, low, high)`` with a percentile bootstrap interval.
    """
    _check_bootstrap(n_resamples, alpha)
    x, y = np.asarray(a, dtype=float).reshape(-1), np.asarray(b, dtype=float).reshape(-1)
    if x.shape != y.shape or x.size == 0:
        raise InputError(f"paired values must have one equal, non-zero length, got {x.size} and {y.size}")
    diff = x - y
    bad = np.flatnonzero(~np.isfinite(diff))
    if bad.size:
        raise InputError(f"paired values at item {bad[0]} are {x[bad[0]]} and {y[bad[0]]}; both must be finite")
    draws = [diff[block].mean(axis=1) for block in _resample_indices(diff.size, n_resamples, seed)]
    low, high = _percentile_interval(np.concatenate(draws), alpha) if n_resamples else (float("nan"),) * 2
    return float(diff.mean()), low, high
