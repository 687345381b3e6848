"""A self-contained HTML report of an evaluation.

One file, no external CSS, JS or images: the metric table with bootstrap
intervals, a risk-coverage overlay of all methods, and per method a
reliability diagram, a risk-coverage curve and a confidence histogram,
embedded as base64 PNGs.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

from ..records import atomic_write_text
from .figures import COLORS, method_figure, overview_figure
from .table import Evaluated, metric_table, to_html

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


def _extra_line(extra: dict[str, Any]) -> str:
    if not extra:
        return ""
    items = "; ".join(f"{html.escape(str(k))}: {html.escape(_short(v))}" for k, v in extra.items())
    return f'<p class="extra">{items}</p>'


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def render_html(result: Evaluated, title: str = "certa calibration report") -> str:
    """The whole report as one HTML string."""
    colors = {name: COLORS[i % len(COLORS)] for i, name in enumerate(result.scores)}
    boot = (f"{result.n_bootstrap} bootstrap resamples, seed {result.seed}" if result.n_bootstrap
            else "no bootstrap intervals")
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="summary">{result.n} answers · accuracy {html.escape(result.accuracy.format())} · '
        f"ECE/MCE with {result.n_bins} equal-width bins, ACE with {result.n_bins} equal-mass bins · "
        f"95% percentile intervals from {boot}</p>",
        to_html(metric_table(result)),
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


def write_report(result: Evaluated, path: str | os.PathLike[str],
                 title: str = "certa calibration report") -> Path:
    """Write :func:`render_html` to ``path`` atomically and return the path."""
    return atomic_write_text(Path(path), render_html(result, title))
