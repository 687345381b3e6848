"""The metric table, built once and rendered for a terminal, an HTML report or a Markdown write-up.

Every place that shows methods side by side (``certa evaluate``'s summary, the
HTML report, ``docs/RESULTS.md``) builds a :class:`MetricTable` from an
evaluation and renders it here, so the sort order, the "best" marks and the
number format are the same everywhere.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from .estimate import Estimate
from .specs import METRICS, metric_spec

if TYPE_CHECKING:
    from rich.table import Table


class Evaluated(Protocol):
    """What a table (and the report) reads from an evaluation of several methods on the same answers."""

    n: int
    n_bins: int
    n_bootstrap: int
    seed: int
    accuracy: Estimate
    methods: Mapping[str, Mapping[str, Estimate]]
    correct: np.ndarray
    scores: Mapping[str, np.ndarray]
    extra: Mapping[str, Any]
    extra_per_method: Mapping[str, Mapping[str, Any]]
    versions: Mapping[str, str | None]

    def ranked(self, metric: str = "brier") -> list[str]: ...

    def winners(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class Row:
    """One method: its estimates (in the table's metric order), which are best, its mean confidence."""

    method: str
    cells: tuple[Estimate, ...]
    best: tuple[bool, ...]
    mean_confidence: float


@dataclass(frozen=True)
class MetricTable:
    """Methods as rows (best on ``sort_by`` first), metrics as columns."""

    metrics: tuple[str, ...]
    rows: tuple[Row, ...]
    sort_by: str

    def header(self) -> list[str]:
        return [f"{metric_spec(m).label} {metric_spec(m).arrow}" for m in self.metrics]


def metric_table(result: Evaluated, metrics: Sequence[str] = tuple(METRICS), sort_by: str = "brier") -> MetricTable:
    """The table of ``result``: methods sorted by ``sort_by`` (Brier by default: it rewards calibration and
    discrimination together, so a constant at the base rate, which can win on ECE alone, does not top it)."""
    winners = result.winners()
    rows = tuple(
        Row(name, tuple(result.methods[name][m] for m in metrics),
            tuple(winners.get(m) == name for m in metrics), float(np.mean(result.scores[name])))
        for name in result.ranked(sort_by)
    )
    return MetricTable(tuple(metrics), rows, sort_by)


# ── renderers ─────────────────────────────────────────────────────────────────────────────────


def to_rich(table: MetricTable, title: str = "", digits: int = 3,
            intervals: Literal["below", "inline", "none"] = "below") -> Table:
    """A ``rich`` table, best values in bold; intervals dimmed under each value (keeps eight columns
    narrow), after it on the same line, or left out."""
    from rich.table import Table

    out = Table(title=title or None)
    out.add_column("method", style="cyan", no_wrap=True)
    for label in table.header():
        out.add_column(label, justify="right")
    for row in table.rows:
        cells = []
        for est, best in zip(row.cells, row.best, strict=True):
            text = est.format(digits) if intervals == "inline" else _value(est, digits)
            if intervals == "below" and est.has_interval and math.isfinite(est.value):
                text += f"\n[dim]{est.low:.{digits}f}–{est.high:.{digits}f}[/dim]"
            cells.append(f"[bold]{text}[/bold]" if best else text)
        out.add_row(row.method, *cells)
    return out


def to_markdown(table: MetricTable, digits: int = 3, label: Callable[[str], str] = str) -> str:
    """A Markdown table: ``value [low, high]`` per cell; ``label`` formats the method names."""
    header = ["method", *table.header()]
    rows = [[label(row.method), *(est.format(digits, undefined="–") for est in row.cells)] for row in table.rows]
    return markdown_table(header, rows, align="r")


def to_html(table: MetricTable, digits: int = 3) -> str:
    """An HTML table with the mean confidence, each value's interval under it and the best in bold."""
    head = "".join(f'<th title="{html.escape(metric_spec(m).description)}">{html.escape(label)}</th>'
                   for m, label in zip(table.metrics, table.header(), strict=True))
    body = []
    for row in table.rows:
        cells = "".join(_html_cell(est, best, digits) for est, best in zip(row.cells, row.best, strict=True))
        body.append(f"<tr><td>{html.escape(row.method)}</td><td>{row.mean_confidence:.{digits}f}</td>{cells}</tr>")
    return (f"<table><thead><tr><th>method</th><th>mean conf.</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "l") -> str:
    """A plain Markdown table; ``align="r"`` right-aligns every column but the first."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(":--" if i == 0 or align == "l" else "--:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _value(est: Estimate, digits: int) -> str:
    return f"{est.value:.{digits}f}" if math.isfinite(est.value) else "n/a"


def _html_cell(est: Estimate, best: bool, digits: int) -> str:
    if not math.isfinite(est.value):
        return '<td title="undefined: all answers in one class">n/a</td>'
    ci = f'<span class="ci">{est.low:.{digits}f}–{est.high:.{digits}f}</span>' if est.has_interval else ""
    return f'<td{" class=best" if best else ""}>{est.value:.{digits}f}{ci}</td>'
