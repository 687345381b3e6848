"""Does certified abstention keep its promise, and what coverage does it cost?

Synthetic part (runs now, about 15 s on one core): streams with a known error curve
P(error | confidence = c) and confidence ~ U(0, 1), so the expected error of the answers a threshold
keeps, R(t) = E[error | C >= t], has a closed form. For each of ``--splits`` calibration draws it
certifies a threshold with :func:`certa.uses.selective.certify_threshold` and records

- whether R(t_hat) > target (a violation of the guarantee itself: the expected test error),
- whether the realized error on an independent test split of ``--n-test`` answers exceeds the target,
- the coverage 1 - t_hat (0 when nothing is certified: the user abstains on everything),

and prints the violation frequencies next to delta plus a Monte-Carlo slack of three binomial
standard errors, the mean coverage next to the oracle coverage (the largest share with R <= target),
for one fixed sequence (``starts=1``) and the default three.

Real-data part (to be wired by the main developer): the same check over 200 re-splits of the
study's scores on the bundled data with the default model; see :func:`real_data_scores`.

    PYTHONPATH=src python benchmarks/abstention.py [--splits 1000] [--real RESULTS_DIR]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from certa.uses.selective import certify_threshold, coverage_table


@dataclass(frozen=True)
class Stream:
    """A synthetic stream: confidence ~ U(0, 1), P(error | c) = error(c), R(t) = risk(t) in closed form."""

    name: str
    error: Callable[[np.ndarray], np.ndarray]
    risk: Callable[[np.ndarray], np.ndarray]
    oracle_coverage: float      # the largest 1 - t with R(t) <= target
    target: float
    partial: bool = False       # loss = Bernoulli(2 e(c)) * U(0, 1): partial credit with mean e(c)


def _bump_risk(t):
    u = 1 - t
    return (0.2 * u**2 + 0.3 * np.clip(0.03 - np.maximum(t - 0.97, 0), 0, None)) / u


STREAMS = [
    Stream("linear e(c)=0.4(1-c), binary", lambda c: 0.4 * (1 - c), lambda t: 0.2 * (1 - t), 0.5, 0.1),
    Stream("linear e(c)=0.4(1-c), partial credit", lambda c: 0.4 * (1 - c), lambda t: 0.2 * (1 - t), 0.5, 0.1,
           partial=True),
    Stream("over-confident top 3%, binary", lambda c: 0.4 * (1 - c) + 0.3 * (c > 0.97), _bump_risk,
           0.382, 0.1),
    Stream("gentle e(c)=0.3-0.2c, binary", lambda c: 0.3 - 0.2 * c, lambda t: 0.2 - 0.1 * t, 1.0, 0.2),
    Stream("flat e(c)=0.15, binary", lambda c: 0.15 + 0 * c, lambda t: 0.15 + 0 * t, 1.0, 0.2),
]


def _loss(rng: np.random.Generator, stream: Stream, conf: np.ndarray) -> np.ndarray:
    if stream.partial:
        return (rng.random(conf.shape) < 2 * stream.error(conf)) * rng.random(conf.shape)
    return (rng.random(conf.shape) < stream.error(conf)).astype(float)


def simulate(stream: Stream, *, splits: int, n_cal: int, n_test: int, delta: float, starts: int,
             seed: int = 0) -> dict[str, float]:
    """Violation frequencies (expected and realized test error), coverage and infeasible share."""
    rng = np.random.default_rng(seed)
    conf = rng.random((splits, n_cal))
    loss = _loss(rng, stream, conf)
    expected = realized = infeasible = 0
    coverage = np.zeros(splits)
    for s in range(splits):
        found = certify_threshold(conf[s], 1 - loss[s], stream.target, delta, starts=starts)
        if found is None:
            infeasible += 1
            continue
        t = found.threshold
        expected += stream.risk(t) > stream.target
        test = rng.random(n_test)
        kept = test[test >= t]
        realized += kept.size > 0 and _loss(rng, stream, kept).mean() > stream.target
        coverage[s] = 1 - t
    return {"expected": expected / splits, "realized": realized / splits, "coverage": float(coverage.mean()),
            "infeasible": infeasible / splits}


def synthetic(splits: int, n_cal: int, n_test: int, delta: float) -> None:
    slack = 3 * math.sqrt(delta * (1 - delta) / splits)
    print(f"{splits} calibration draws of {n_cal} answers, test splits of {n_test}, delta={delta}; "
          f"allowed violation frequency {delta} + 3 s.e. = {delta + slack:.3f}")
    header = (f"{'stream':40s} {'target':>6s} {'starts':>6s} {'viol E[err]':>11s} {'viol test':>9s} "
              f"{'coverage':>8s} {'oracle':>6s} {'none':>5s}")
    print(header)
    print("-" * len(header))
    for stream in STREAMS:
        for starts in (1, 3):
            r = simulate(stream, splits=splits, n_cal=n_cal, n_test=n_test, delta=delta, starts=starts)
            flag = "" if max(r["expected"], r["realized"]) <= delta + slack else "  <-- exceeds"
            print(f"{stream.name:40s} {stream.target:6.2f} {starts:6d} {r['expected']:11.3f} {r['realized']:9.3f} "
                  f"{r['coverage']:8.3f} {stream.oracle_coverage:6.3f} {r['infeasible']:5.2f}{flag}")


# --------------------------------------------------------------------------- real data


def real_data_scores(results_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The study's per-method test scores and grades on the bundled data, pooled over its datasets.

    Reads every ``<results_dir>/<dataset>/scores.jsonl`` a study (``make results``) cached: the same
    answers, in the same order, for every method.
    """
    from certa.scores import read_scores

    tables = [read_scores(path) for path in sorted(results_dir.glob("*/scores.jsonl"))]
    if not tables:
        raise SystemExit(f"no */scores.jsonl under {results_dir}: run `make results` first")
    methods = set.intersection(*(set(t.scores) for t in tables))
    return ({m: np.concatenate([t.scores[m] for t in tables]) for m in sorted(methods)},
            np.concatenate([t.correct for t in tables]))


def real_data(results_dir: Path, *, n_splits: int = 200, delta: float = 0.05) -> None:
    """Per method: certified coverage, realized error and violation frequency at targets 0.1 and 0.2,
    over ``n_splits`` random calibration/test halves of the study's scores."""
    scores, correct = real_data_scores(results_dir)
    table = coverage_table(scores, correct, targets=(0.1, 0.2), delta=delta, n_splits=n_splits)
    print(f"{n_splits} re-splits (half calibration, half test), delta={delta}, {correct.size} answers, "
          f"error rate {1 - correct.mean():.3f}")
    print(f"{'method':28s} {'target':>6s} {'coverage':>8s} {'test error':>10s} {'violations':>10s} "
          f"{'none':>5s} {'oracle':>6s}")
    for method, by_target in table.items():
        for target, r in by_target.items():
            err = "-" if r.error is None else f"{r.error:.3f}"
            print(f"{method:28s} {target:6.2f} {r.coverage:8.3f} {err:>10s} {r.violation_rate:10.3f} "
                  f"{r.infeasible_rate:5.2f} {r.oracle_coverage:6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=1000)
    parser.add_argument("--n-cal", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=20_000)
    parser.add_argument("--delta", type=float, default=0.05)
    parser.add_argument("--real", type=Path, default=None, help="a results directory of the study")
    args = parser.parse_args()
    start = time.perf_counter()
    synthetic(args.splits, args.n_cal, args.n_test, args.delta)
    print(f"synthetic part: {time.perf_counter() - start:.1f} s")
    if args.real is not None:
        real_data(args.real, delta=args.delta)


if __name__ == "__main__":
    main()
