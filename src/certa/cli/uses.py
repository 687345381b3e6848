"""Acting on confidence: ``scale``, ``self-correct``, ``cascade``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..models import load_model
from ..records import atomic_write_text, write_jsonl
from ..scores import read_scores
from ..study.stages import load_records
from ..uses.cascade import cascade as run_cascade
from ..uses.cascade import plot_cascade
from ..uses.self_correct import self_correct
from ..uses.voting import budget_ladder, plot_scaling, run_strategies, scaling_curves
from .app import ModelOpt, app, console, print_rows


@app.command()
def scale(
    inp: Annotated[Path, typer.Option("--in", "-i", help="graded records with samples (and GrACE sample confidences)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for scaling.json and scaling.png")] = Path("scaling"),
    budget: Annotated[int, typer.Option(help="sample budget B")] = 8,
    tau: Annotated[float, typer.Option(help="GrACE-ES stops at the first sample with confidence above tau")] = 0.8,
    confidence: Annotated[str, typer.Option(help="which per-sample confidence to use")] = "grace",
) -> None:
    """Test-time scaling: SC, adaptive SC, early-stopping SC, GrACE-SC and GrACE-ES at budget B."""
    records = load_records(inp)
    results = run_strategies(records, budget, confidence=confidence, tau=tau)
    curves = scaling_curves(records, budget_ladder(budget), confidence=confidence, tau=tau)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "scaling.json", json.dumps({"budget": budget, "tau": tau, "results": results,
                                                        "curves": curves}, indent=2))
    plot_scaling(curves, out / "scaling.png")
    print_rows("strategy", results, ("accuracy", "mean_samples"))
    console.print(f"results: {out / 'scaling.json'}\nplot:    {out / 'scaling.png'}")


@app.command("self-correct")
def self_correct_cmd(
    inp: Annotated[Path, typer.Option("--in", "-i", help="graded records")],
    scores: Annotated[Path, typer.Option(help="scores JSONL (certa score) holding the confidence")],
    method: Annotated[str, typer.Option(help="which method's confidence in --scores to use")] = "conftuner",
    model: ModelOpt = "default",
    threshold: Annotated[float, typer.Option(help="re-ask questions whose confidence is below this")] = 0.5,
    max_new_tokens: Annotated[int, typer.Option(help="length limit of the second attempt")] = 128,
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for results")] = Path("self_correct"),
) -> None:
    """Re-ask the questions answered with low confidence; report accuracy before and after."""
    records = load_records(inp)
    confidences = read_scores(scores).column(method, [r.id for r in records], where=str(scores))
    result = self_correct(load_model(model), records, confidences, threshold=threshold,
                          max_new_tokens=max_new_tokens)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "records.jsonl", result.records)
    atomic_write_text(out / "self_correct.json", json.dumps(result.to_dict(), indent=2))
    print_rows("self-correction", {"result": result.to_dict()}, tuple(result.to_dict()))


@app.command()
def cascade(
    inp: Annotated[Path, typer.Option("--in", "-i", help="graded records of the small model")],
    scores: Annotated[Path, typer.Option(help="scores JSONL (certa score) holding the confidence")],
    strong: Annotated[str, typer.Option(help="stronger model: a certa model spec or an OpenAI-compatible base URL")],
    method: Annotated[str, typer.Option(help="which method's confidence in --scores to use")] = "conftuner",
    strong_model_name: Annotated[str, typer.Option(help="model name to send to an OpenAI-compatible URL")] = "",
    max_new_tokens: Annotated[int, typer.Option(help="answer length limit of the strong model")] = 128,
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for cascade.json and cascade.png")] = Path("cascade"),
) -> None:
    """Send the k least-confident questions to a stronger model; accuracy versus k."""
    records = load_records(inp)
    confidences = read_scores(scores).column(method, [r.id for r in records], where=str(scores))
    strong_model = strong if strong.startswith(("http://", "https://")) else load_model(strong)
    result = run_cascade(records, confidences, strong_model, strong_model_name=strong_model_name,
                         max_new_tokens=max_new_tokens)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "cascade.json", json.dumps(result.to_dict(), indent=2))
    plot_cascade(result, out / "cascade.png")
    for k, acc in zip(result.ks, result.accuracy, strict=True):
        console.print(f"k={k:>4}  accuracy={acc:.3f}")
    console.print(f"results: {out / 'cascade.json'}\nplot:    {out / 'cascade.png'}")
