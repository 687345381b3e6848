"""The figures of a calibration report, drawn on ``matplotlib.figure.Figure`` directly.

Never touching pyplot's global state or the user's chosen backend: each figure
is rendered with the Agg canvas to PNG bytes. The HTML report, the Markdown
write-up and the test-time-scaling and cascade plots all draw here.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

from .. import metrics

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 96
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
ACCURACY_COLOR = "#4878a8"
GAP_COLOR = "#d9534f"
CORRECT_COLOR = "#5aa469"
WRONG_COLOR = "#d9534f"


def figure_png(fig: Figure) -> bytes:
    """Render a figure with the Agg canvas and return PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

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
    from matplotlib.figure import Figure

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
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.12, top=0.92)
    plot_risk_coverage(fig.subplots(), scores, correct, colors)
    return figure_png(fig)


def line_figure(series: dict[str, tuple[list[float], list[float]]], *, xlabel: str, ylabel: str, title: str) -> bytes:
    """One marked line per series (x values, y values): test-time-scaling and cascade curves."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.13, top=0.9)
    ax = fig.subplots()
    ax.grid(alpha=0.3)
    for i, (name, (x, y)) in enumerate(series.items()):
        ax.plot(x, y, marker="o", label=name, color=COLORS[i % len(COLORS)])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return figure_png(fig)
