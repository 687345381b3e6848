"""Acting on confidence: ``abstain``, ``scale``, ``self-correct``, ``cascade``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from ..models import load_model
from ..records import atomic_write_text, write_jsonl
from ..scores import read_scores
from ..study.stages import load_records
from ..uses.cascade import cascade as run_cascade
from ..uses.cascade import plot_cascade
from ..uses.selective import apply_threshold, select_threshold
from ..uses.self_correct import self_correct
from ..uses.voting import budget_ladder, plot_scaling, run_strategies, scaling_curves
from .app import ModelOpt, app, check_output, console, print_rows


@app.command()
def abstain(
    inp: Annotated[Path, typer.Option("--in", "-i", help="calibration scores JSONL (certa score): confidences with grades")],
    method: Annotated[str, typer.Option(help="whose confidence to threshold (a column of --in)")],
    target_error: Annotated[float, typer.Option(help="the error rate among answered questions to guarantee")] = 0.1,
    delta: Annotated[float, typer.Option(help="allowed probability that the calibration draw gives a threshold missing the target")] = 0.05,
    bound: Annotated[str, typer.Option(help="tail bound: auto, binomial, hoeffding_bentkus or hoeffding")] = "auto",
    test: Annotated[Path | None, typer.Option(help="test scores JSONL: report the threshold's realized coverage and error there")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write the threshold (and test outcome) as JSON here")] = None,
) -> None:
    """The lowest confidence threshold certified to keep the error of answered questions at most the target.

    Learn-then-Test with fixed-sequence testing (docs/abstention.md): with probability at least
    1 - delta over the calibration draw, answers with confidence >= t are wrong at most target-error
    of the time. A target no threshold can meet is an error naming the lowest one this data certifies.
    """
    if out is not None:
        check_output(out, directory=False)
    calibration = read_scores(inp)
    threshold = select_threshold(calibration.column(method, where=str(inp)), calibration.correct,
                                 target_error, delta, bound)  # type: ignore[arg-type]
    report: dict = {"method": method, "calibration": str(inp), **threshold.to_dict()}
    rows = {"calibration": {"threshold": threshold.threshold, "coverage": threshold.coverage,
                            "error": threshold.error, "answered": f"{threshold.n_kept}/{threshold.n_calibration}"}}
    if test is not None:
        held_out = read_scores(test)
        outcome = apply_threshold(threshold, held_out.column(method, where=str(test)), held_out.correct)
        report["test"] = {"path": str(test), **outcome.to_dict()}
        rows["test"] = {"threshold": outcome.threshold, "coverage": outcome.coverage,
                        "error": outcome.error if outcome.error is not None else "-",
                        "answered": f"{outcome.n_kept}/{outcome.n}"}
    print_rows(f"{method}: error <= {target_error:g} with probability >= {1 - delta:g}", rows,
               ("threshold", "coverage", "error", "answered"))
    if out is not None:
        atomic_write_text(out, json.dumps(report, indent=2))
        console.print(f"threshold: {out}")


@app.command()
def scale(
    inp: Annotated[Path, typer.Option("--in", "-i", help="graded records with samples (and GrACE sample confidences)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for scaling.json and scaling.png")] = Path("scaling"),
    budget: Annotated[int, typer.Option(help="sample budget B")] = 8,
    tau: Annotated[float, typer.Option(help="GrACE-ES stops at the first sample with confidence above tau")] = 0.8,
    confidence: Annotated[str, typer.Option(help="which per-sample confidence to use")] = "grace",
) -> None:
    """Test-time scaling: SC, adaptive SC, early-stopping SC, GrACE-SC and GrACE-ES at budget B."""
    if not 0.0 <= tau <= 1.0:
        raise InputError(f"--tau is a confidence threshold in [0, 1], got {tau}")
    check_output(out, directory=True)
    records = load_records(inp)
    if not any(r.sample_confidence for r in records):
        console.print(f"{inp} carries no per-sample confidences: GrACE-SC and GrACE-ES are left out")
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
    check_output(out, directory=True)
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
    check_output(out, directory=True)
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
