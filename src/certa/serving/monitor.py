"""``certa monitor``: the calibration report of served traffic, overall and per time window.

Reads the labelled answers of a feedback database (:mod:`certa.serving.feedback`) and writes what
``certa evaluate`` writes (``metrics.json`` and ``report.html`` through
:func:`certa.evaluation.evaluate`: ECE, Brier, AUROC… with bootstrap intervals, reliability
diagrams), for all the traffic and for each time window of serving time, so drift shows:

    OUT/metrics.json, OUT/report.html            every labelled answer
    OUT/windows/<start>/metrics.json, report.html  the answers served in each window
    OUT/windows.json                             per window: start, end, n, accuracy, ECE and Brier with CIs
    OUT/drift.png                                ECE and accuracy per window, with their intervals

Each answer is scored twice when the server recalibrated: as served (``<method>``) and as the
method's raw confidence (``<method>:raw``), so the report shows what recalibration bought.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..evaluation import EvaluationResult, evaluate
from ..evaluation.figures import COLORS, figure_png
from ..records import atomic_write_bytes, atomic_write_text
from .feedback import FeedbackStore, LabelledPairs

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_window(text: str | float) -> float:
    """A window width in seconds from ``"1d"``, ``"6h"``, ``"30m"``, ``"90s"``, ``"2w"`` or a number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text))
        if not match:
            raise InputError(f"window {text!r}: use a number with a unit, e.g. 1d, 6h, 30m, 90s")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds) or seconds <= 0:
        raise InputError(f"window must be a positive duration, got {text!r}")
    return seconds


@dataclass
class WindowReport:
    start: float
    end: float
    result: EvaluationResult
    directory: Path


@dataclass
class MonitorReport:
    """What :func:`monitor` wrote: the overall evaluation and one per non-empty window."""

    method: str
    overall: EvaluationResult
    windows: list[WindowReport]
    out: Path


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _scores(method: str, pairs: LabelledPairs) -> dict[str, np.ndarray]:
    scores = {method: pairs.confidence}
    if not np.allclose(pairs.confidence, pairs.raw_confidence):
        scores[f"{method}:raw"] = pairs.raw_confidence
    return scores


def monitor(db: str | os.PathLike[str] | FeedbackStore, out: str | os.PathLike[str], *, window: float | str = "1d",
            method: str | None = None, model: str | None = None, since: float | None = None,
            until: float | None = None, n_bins: int = 10, n_bootstrap: int = 1000, seed: int = 0) -> MonitorReport:
    """Evaluate the labelled traffic of a feedback database, overall and per ``window`` of serving time.

    ``method`` is required when the database holds labelled answers of several methods (each is a
    different confidence); ``model``, ``since`` and ``until`` narrow the traffic. Windows are aligned
    to the epoch (``"1d"``: UTC days). Raises :class:`~certa.errors.InputError` when nothing is labelled.
    """
    width = parse_window(window)
    own = not isinstance(db, FeedbackStore)
    store = FeedbackStore(db, read_only=True) if own else db  # a report must not change the database it reads
    try:
        methods = store.labelled_methods(model=model)
        if method is None:
            if len(methods) > 1:
                raise InputError(f"{store.path}: labelled answers of {len(methods)} methods ({', '.join(methods)}); "
                                 "pass --method")
            if not methods:
                raise InputError(f"{store.path}: no labelled answers yet (send labels to POST /v1/feedback)")
            method = methods[0]
        pairs = store.labelled(method=method, model=model, since=since, until=until)
        if not len(pairs):
            raise InputError(f"{store.path}: no labelled answers of method {method!r}"
                             + (f" (labelled methods: {', '.join(methods)})" if methods else ""))
        cuts = store.windows(width, method=method, model=model, since=since, until=until)
    finally:
        if own:
            store.close()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"database": str(getattr(store, "path", db)), "method": method, "model": model,
             "served_from": _stamp(float(pairs.created.min())), "served_until": _stamp(float(pairs.created.max()))}
    overall = evaluate(pairs.correct, _scores(method, pairs), n_bins=n_bins, n_bootstrap=n_bootstrap, seed=seed,
                       extra=extra)
    overall.save(out, report_title=f"certa monitor — {method}, all traffic")
    windows = []
    for w in cuts:
        folder = out / "windows" / _stamp(w.start).replace(":", "-")
        folder.mkdir(parents=True, exist_ok=True)
        result = evaluate(w.pairs.correct, _scores(method, w.pairs), n_bins=n_bins, n_bootstrap=n_bootstrap,
                          seed=seed, extra={**extra, "window_start": _stamp(w.start), "window_end": _stamp(w.end)})
        result.save(folder, report_title=f"certa monitor — {method}, {_stamp(w.start)} to {_stamp(w.end)}")
        windows.append(WindowReport(w.start, w.end, result, folder))
    summary = [{"start": _stamp(w.start), "end": _stamp(w.end), "n": w.result.n,
                "accuracy": w.result.accuracy.to_dict(),
                "methods": {name: {m: est[m].to_dict() for m in ("ece", "brier", "auroc")}
                            for name, est in w.result.methods.items()},
                "report": str(w.directory.relative_to(out) / "report.html")} for w in windows]
    atomic_write_text(out / "windows.json", json.dumps({"window_seconds": width, "windows": summary}, indent=2,
                                                       allow_nan=False))
    atomic_write_bytes(out / "drift.png", _drift_figure(method, windows))
    return MonitorReport(method, overall, windows, out)


def _drift_figure(method: str, windows: list[WindowReport]) -> bytes:
    """ECE (per score) and accuracy per window, with their bootstrap intervals."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.22, top=0.9)
    ax = fig.subplots()
    ax.grid(alpha=0.3)
    x = np.arange(len(windows))
    series: dict[str, list[tuple[int, Any]]] = {}    # a score may be missing from some windows (not recalibrated yet)
    for k, w in enumerate(windows):
        series.setdefault("accuracy", []).append((k, w.result.accuracy))
        for name, est in w.result.methods.items():
            series.setdefault(f"ECE {name}", []).append((k, est["ece"]))
    for i, (name, points) in enumerate(series.items()):
        at = np.array([k for k, _ in points])
        values = np.array([e.value for _, e in points], dtype=float)
        low = np.array([e.low for _, e in points], dtype=float)
        high = np.array([e.high for _, e in points], dtype=float)
        # a percentile interval need not contain the point estimate (ECE is biased): clip at 0
        err = np.clip(np.vstack([np.nan_to_num(values - low), np.nan_to_num(high - values)]), 0, None)
        ax.errorbar(at, values, yerr=err, marker="o", capsize=3, label=name, color=COLORS[i % len(COLORS)])
    ax.set_xticks(x, [_stamp(w.start)[:16] for w in windows], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="value (95% CI)", title=f"{method}: calibration of served answers per window", ylim=(0, 1))
    ax.legend(fontsize=8)
    return figure_png(fig)
