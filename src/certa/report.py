"""A self-contained HTML report of an :class:`~certa.evaluation.EvaluationResult`.

One file, no external CSS, JS or images: the metric table with bootstrap
intervals, a risk-coverage overlay of all methods, and per method a
reliability diagram, a risk-coverage curve and a confidence histogram, drawn
with matplotlib's Agg canvas and embedded as base64 PNGs. Figures are built on
``matplotlib.figure.Figure`` directly, so drawing a report never touches
pyplot's global state or the user's chosen backend.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import metrics
from .records import atomic_write_text

if TYPE_CHECKING:
    from .evaluation import Estimate, EvaluationResult

DPI = 96
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
ACCURACY_COLOR = "#4878a8"
GAP_COLOR = "#d9534f"
CORRECT_COLOR = "#5aa469"
WRONG_COLOR = "#d9534f"


# --------------------------------------------------------------------------- figures


def figure_png(fig: Figure) -> bytes:
    """Render a figure with the Agg canvas and return PNG bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def plot_reliability(ax: Axes, conf: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> None:
    """Reliability diagram: accuracy per equal-width bin, the gap to the bin's mean confidence
    shaded, the answer count above each bar and the diagonal of perfect calibration."""
    bins = metrics.reliability_bins(conf, correct, n_bins, "uniform")
    used = bins.count > 0
    left = bins.edges[:-1][used]
    width = np.diff(bins.edges)[used]
    acc, mean_conf, count = bins.accuracy[used], bins.confidence[used], bins.count[used]
    ax.bar(left, acc, width=width, align="edge", color=ACCURACY_COLOR, edgecolor="white",
           linewidth=0.8, label="accuracy")
    ax.bar(left, np.abs(mean_conf - acc), bottom=np.minimum(acc, mean_conf), width=width, align="edge",
           color=GAP_COLOR, alpha=0.35, edgecolor=GAP_COLOR, hatch="//", linewidth=0.5, label="gap to confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.35", linewidth=1, label="perfect calibration")
    for x, w, top, n in zip(left, width, np.maximum(acc, mean_conf), count, strict=True):
        # A white box keeps the count readable where it crosses the diagonal.
        ax.text(x + w / 2, top + 0.015, str(int(n)), ha="center", va="bottom", fontsize=7, color="0.25",
                bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.85})
    ece = metrics.ece(conf, correct, n_bins)
    ax.set(xlim=(0, 1), ylim=(0, 1.1), xlabel="confidence (numbers: answers per bin)", ylabel="accuracy",
           title=f"Reliability, {n_bins} equal-width bins (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize=7, framealpha=0.85, edgecolor="none")


def plot_risk_coverage(ax: Axes, scores: dict[str, np.ndarray], correct: np.ndarray,
                       colors: dict[str, str]) -> None:
    """Risk (error rate of the kept answers) against coverage for each method, with the best
    achievable curve (correct answers ranked first) and the error rate of keeping everything."""
    for name, conf in scores.items():
        coverage, risk, _ = metrics.risk_coverage_curve(conf, correct)
        label = f"{name} (AURC {np.mean(risk):.3f})"
        ax.plot(coverage, risk, color=colors[name], linewidth=1.6, label=label)
    coverage, risk, _ = metrics.risk_coverage_curve(correct, correct)
    ax.plot(coverage, risk, color="0.3", linestyle="--", linewidth=1, label=f"optimal (AURC {np.mean(risk):.3f})")
    ax.axhline(1 - float(np.mean(correct)), color="0.6", linestyle=":", linewidth=1, label="no selection")
    ax.set(xlim=(0, 1), ylim=(0, max(0.05, ax.get_ylim()[1])), xlabel="coverage (fraction of answers kept)",
           ylabel="risk (error rate of kept answers)", title="Risk–coverage")
    ax.legend(loc="lower right", fontsize=7, framealpha=0.85, edgecolor="none")


def plot_confidence_histogram(ax: Axes, conf: np.ndarray, correct: np.ndarray, n_bins: int = 20) -> None:
    """Stacked histogram of confidence for correct (``correct >= 0.5``) and wrong answers."""
    edges = np.linspace(0, 1, n_bins + 1)
    right = correct >= 0.5
    ax.hist([conf[right], conf[~right]], bins=edges, stacked=True, color=[CORRECT_COLOR, WRONG_COLOR],
            label=[f"correct ({int(right.sum())})", f"wrong ({int((~right).sum())})"], edgecolor="white",
            linewidth=0.5)
    ax.set(xlim=(0, 1), xlabel="confidence", ylabel="answers", title=f"Confidence histogram ({n_bins} bins)")
    ax.legend(loc="upper left", fontsize=7, frameon=False)


def method_figure(name: str, conf: np.ndarray, correct: np.ndarray, n_bins: int, color: str) -> bytes:
    """One row per method: reliability diagram, risk-coverage curve, confidence histogram."""
    # Fixed margins instead of constrained layout: that layout pass costs a third of the render.
    fig = Figure(figsize=(12, 3.7))
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.84, wspace=0.22)
    reliability, risk, hist = fig.subplots(1, 3)
    plot_reliability(reliability, conf, correct, n_bins)
    plot_risk_coverage(risk, {name: conf}, correct, {name: color})
    plot_confidence_histogram(hist, conf, correct)
    fig.suptitle(name, fontsize=11, fontweight="bold")
    return figure_png(fig)


def overview_figure(scores: dict[str, np.ndarray], correct: np.ndarray, colors: dict[str, str]) -> bytes:
    """Risk-coverage curves of all methods on one set of axes."""
    fig = Figure(figsize=(7, 4.2))
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.12, top=0.92)
    plot_risk_coverage(fig.subplots(), scores, correct, colors)
    return figure_png(fig)


# --------------------------------------------------------------------------- HTML

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1200px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.summary { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; text-align: right; border-bottom: 1px solid #e4e4e4; }
th { background: #f4f5f7; font-weight: 600; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
td.best { font-weight: 700; color: #1a5e20; }
.ci { display: block; color: #888; font-size: 11px; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0 18px; }
.extra { color: #555; font-size: 12px; margin: 0; }
details pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px; }
.note { color: #666; font-size: 12px; }
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(est: Estimate, best: bool) -> str:
    if not math.isfinite(est.value):
        return '<td title="undefined: all answers in one class">n/a</td>'
    ci = (f'<span class="ci">{est.low:.3f}–{est.high:.3f}</span>'
          if math.isfinite(est.low) and math.isfinite(est.high) else "")
    return f'<td{" class=best" if best else ""}>{est.value:.3f}{ci}</td>'


def metric_table(result: EvaluationResult) -> str:
    """HTML table: methods sorted by Brier score, each metric with its interval, best per column in bold."""
    from .evaluation import METRICS

    head = "".join(f'<th title="{html.escape(info.description)}">{info.label} '
                   f'{"↓" if info.lower_is_better else "↑"}</th>' for info in METRICS.values())
    winners = result.winners()
    rows = []
    for name in result.ranked("brier"):
        mean_conf = float(np.mean(result.scores[name]))
        cells = "".join(_cell(result.methods[name][m], winners.get(m) == name) for m in METRICS)
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{mean_conf:.3f}</td>{cells}</tr>")
    return (f"<table><thead><tr><th>method</th><th>mean conf.</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _extra_line(extra: dict[str, Any]) -> str:
    if not extra:
        return ""
    items = "; ".join(f"{html.escape(str(k))}: {html.escape(_short(v))}" for k, v in extra.items())
    return f'<p class="extra">{items}</p>'


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def render_html(result: EvaluationResult, title: str = "certa calibration report") -> str:
    """The whole report as one HTML string."""
    colors = {name: COLORS[i % len(COLORS)] for i, name in enumerate(result.scores)}
    boot = (f"{result.n_bootstrap} bootstrap resamples, seed {result.seed}" if result.n_bootstrap
            else "no bootstrap intervals")
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="summary">{result.n} answers · accuracy {html.escape(result.accuracy.format())} · '
        f"ECE/MCE with {result.n_bins} equal-width bins, ACE with {result.n_bins} equal-mass bins · "
        f"95% percentile intervals from {boot}</p>",
        metric_table(result),
        '<p class="note">↓ lower is better, ↑ higher is better; bold marks the best value in a column; rows are sorted by Brier score. '
        "AUROC/AUPRC count an answer as correct when its grade is at least 0.5.</p>",
        "<h2>Risk–coverage, all methods</h2>",
        _img(overview_figure(result.scores, result.correct, colors), "risk-coverage curves of all methods"),
    ]
    for name in result.ranked("brier"):
        png = method_figure(name, result.scores[name], result.correct, result.n_bins, colors[name])
        parts += [f"<h2>{html.escape(name)}</h2>", _extra_line(result.extra_per_method.get(name, {})),
                  _img(png, f"reliability diagram, risk-coverage curve and confidence histogram of {name}")]
    run_info = json.dumps({"extra": result.extra, "versions": result.versions}, indent=2, default=str)
    parts.append(f"<details><summary>Run details</summary><pre>{html.escape(run_info)}</pre></details>")
    body = "\n".join(p for p in parts if p)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_report(result: EvaluationResult, path: str | os.PathLike[str],
                 title: str = "certa calibration report") -> Path:
    """Write :func:`render_html` to ``path`` atomically and return the path."""
    return atomic_write_text(Path(path), render_html(result, title))
