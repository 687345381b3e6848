"""``certa demo`` and ``certa run``: whole studies, every stage cached."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..evaluation import HEADLINE_METRICS, metric_spec, metric_table, to_rich
from ..study import RunConfig, StudyResult, run_study, tune_study
from ..study.demo import demo_config
from .app import ModelOpt, app, check_output, console


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("demo_out"),
    quick: Annotated[bool, typer.Option("--quick", help="small sizes: finishes in a few minutes on 2 CPU cores")] = False,
    model: ModelOpt = "default",
) -> None:
    """Run the whole study on the bundled default model and data, print the table, write the report."""
    check_output(out, directory=True)
    config = demo_config(out=out, quick=quick, model=model)
    console.print(f"[bold]certa demo[/] on {config.model}: {', '.join(d.name for d in config.datasets)} → {out}")
    print_study(run_study(config))


@app.command()
def run(config_path: Annotated[Path, typer.Argument(help="YAML run configuration (see configs/).")]) -> None:
    """Run a study described by a YAML config (stages are cached and resume)."""
    print_study(run_study(RunConfig.from_yaml(config_path)))


@app.command()
def tune(config_path: Annotated[Path, typer.Argument(help="YAML run configuration with a 'tuning' section.")]) -> None:
    """Choose the trained methods' settings on calibration-split answers (the config's tuning grids)."""
    from rich.table import Table

    for method, result in tune_study(RunConfig.from_yaml(config_path)).items():
        names = sorted(result["grid"])
        table = Table(title=f"{method}: {len(result['rows'])} combinations on {result['calibration_answers']} "
                            f"calibration answers ({result['criterion']})")
        for column in (*names, "Brier", "ECE", "AUROC"):
            table.add_column(column, justify="right")
        for row in result["rows"]:
            style = "bold" if row["values"] == result["chosen"] else None
            table.add_row(*(str(row["values"][n]) for n in names),
                          *(f"{row[k]:.3f}" for k in ("brier", "ece", "auroc")), style=style)
        console.print(table)
        console.print(f"chosen for {method}: {result['chosen']} → {result['artifact']}")


def print_study(result: StudyResult) -> None:
    """The pooled table, each dataset's accuracy and where the outputs are."""
    print_summary(result.evaluation)
    for name, res in result.by_dataset.items():
        console.print(f"[bold]{name}[/]: n={res.n}, accuracy={res.accuracy.format()}")
    console.print(f"metrics: {result.out / 'metrics.json'}\nreport:  {result.out / 'report.html'}")
    if result.markdown:
        console.print(f"results: {result.markdown}")


def print_summary(result) -> None:
    """A table that fits a terminal: headline metrics with their 95% CIs (all metrics: metrics.json)."""
    title = f"n={result.n}, accuracy {result.accuracy.format()}, ECE over {result.n_bins} bins"
    console.print(to_rich(metric_table(result, HEADLINE_METRICS), title=title, digits=2, intervals="inline"))
    excluding = [metric_spec(name).label for name in HEADLINE_METRICS
                 if any(name in scores and scores[name].interval_excludes_value for scores in result.methods.values())]
    if excluding:
        console.print(f"[dim]Where an interval excludes its point estimate ({', '.join(excluding)}), the bootstrap is "
                      "showing the metric's small-sample bias (a binned ECE reads higher on resamples), not an error: "
                      "docs/metrics.md.[/]")
