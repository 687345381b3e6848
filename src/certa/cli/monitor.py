"""``certa monitor``: the calibration report of a served model's labelled traffic, overall and per window."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..serving.monitor import monitor as run_monitor
from .app import app, check_output, console
from .study import print_summary


@app.command()
def monitor(
    db: Annotated[Path, typer.Option("--db", help="the feedback database of `certa serve --db`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for metrics.json, report.html, windows/ and drift.png")] = Path("monitor"),
    window: Annotated[str, typer.Option(help="time window of serving time: 1d, 6h, 30m, 90s (UTC-aligned)")] = "1d",
    method: Annotated[str | None, typer.Option(help="the confidence method, when the database holds several")] = None,
    model: Annotated[str | None, typer.Option(help="only answers served under this model name")] = None,
    n_bins: Annotated[int, typer.Option(help="ECE bins")] = 10,
    n_bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the CIs")] = 1000,
) -> None:
    """Evaluate served answers against the labels sent to /v1/feedback, overall and per time window."""
    check_output(out, directory=True)
    found = run_monitor(db, out, window=window, method=method, model=model, n_bins=n_bins, n_bootstrap=n_bootstrap)
    print_summary(found.overall)
    for w in found.windows:
        ece = w.result.methods[found.method]["ece"]
        console.print(f"{w.directory.name}: n={w.result.n:<5} accuracy {w.result.accuracy.format(2)}  "
                      f"ECE {ece.format(3)}")
    console.print(f"metrics: {out / 'metrics.json'}\nreport:  {out / 'report.html'}\n"
                  f"windows: {out / 'windows.json'} ({len(found.windows)}), drift: {out / 'drift.png'}")
