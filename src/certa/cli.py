"""The ``certa`` command line: a thin layer over the Python API.

Every subcommand reads and writes files, so stages chain and resume. Errors a
user can fix print one line and exit with code 2; ``--debug`` shows the
traceback.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .errors import CertaError, InputError

app = typer.Typer(
    name="certa",
    help="Calibrated confidence for every answer a language model gives.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# A pipe reports 80 columns, which wraps every metric cell; logs and CI get a wider page.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)
_state = {"debug": False}

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="'default', an HF id or path, a .gguf file, or a certa artifact.")]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="bundled name (see `certa datasets`), a JSONL path, or hf:owner/name.")]
SplitOpt = Annotated[str, typer.Option("--split", help="train, calibration, test or all (deterministic by id hash).")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="use at most this many questions (a stable subset).")]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks and debug logs")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show progress logs")] = False,
) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# ── the main job ─────────────────────────────────────────────────────────────────────────────


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("demo_out"),
    quick: Annotated[bool, typer.Option("--quick", help="small sizes: finishes in a few minutes on 2 CPU cores")] = False,
    model: ModelOpt = "default",
) -> None:
    """Run the whole study on the bundled default model and data, print the table, write the report."""
    from .demo import demo_config
    from .study import run_study

    config = demo_config(out=out, quick=quick, model=model)
    console.print(f"[bold]certa demo[/] on {config.model}: {', '.join(d.name for d in config.datasets)} → {out}")
    result = run_study(config)
    _print_study(result)


@app.command()
def run(config_path: Annotated[Path, typer.Argument(help="YAML run configuration (see configs/).")]) -> None:
    """Run a study described by a YAML config (stages are cached and resume)."""
    from .config import RunConfig
    from .study import run_study

    config = RunConfig.from_yaml(config_path)
    _print_study(run_study(config))


def _print_study(result) -> None:
    _print_summary(result.evaluation)
    for name, res in result.by_dataset.items():
        console.print(f"[bold]{name}[/]: n={res.n}, accuracy={res.accuracy.format()}")
    console.print(f"metrics: {result.out / 'metrics.json'}\nreport:  {result.out / 'report.html'}")
    if result.markdown:
        console.print(f"results: {result.markdown}")


def _print_summary(result) -> None:
    """A table that fits a terminal: headline metrics with their 95% CIs (all metrics: metrics.json)."""
    from rich.table import Table

    columns = ("ece", "brier", "auroc", "aurc")
    table = Table(title=f"n={result.n}, accuracy {result.accuracy.format()}, ECE over {result.n_bins} bins")
    table.add_column("method", no_wrap=True)
    for col in columns:
        table.add_column(col.upper() if col != "brier" else "Brier", justify="right")
    for name in sorted(result.methods, key=lambda m: _sort_key(result.methods[m]["brier"].value)):
        table.add_row(name, *(result.methods[name][col].format(2) for col in columns))
    console.print(table)


def _sort_key(value: float) -> float:
    return value if value == value else float("inf")  # NaN last


# ── single stages ─────────────────────────────────────────────────────────────────────────────


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="generations JSONL (resumes if it exists)")],
    model: ModelOpt = "default",
    dataset: DatasetOpt = "arithmetic",
    split: SplitOpt = "test",
    limit: LimitOpt = None,
    samples: Annotated[int, typer.Option(help="extra sampled answers per question")] = 0,
    temperature: Annotated[float, typer.Option(help="temperature of the sampled answers")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(help="answer length limit")] = 48,
    batch_size: Annotated[int, typer.Option(help="questions per batch")] = 16,
    hidden_states: Annotated[bool, typer.Option(help="store the last hidden state (probe, GrACE targets)")] = True,
    seed: int = 0,
) -> None:
    """Answer a dataset's questions (batched), keeping log-probs, hidden states and samples."""
    from .data import load_dataset
    from .models import load_model
    from .pipeline import generate_stage

    examples = load_dataset(dataset, split=split, limit=limit, seed=seed)
    lm = load_model(model)
    gens = generate_stage(
        lm, examples, out, max_new_tokens=max_new_tokens, batch_size=batch_size, samples=samples,
        temperature=temperature, hidden_states=hidden_states, seed=seed,
    )
    console.print(f"wrote {len(gens)} generations to {out}")


@app.command()
def grade(
    inp: Annotated[Path, typer.Option("--in", "-i", help="generations JSONL")],
    out: Annotated[Path, typer.Option("--out", "-o", help="graded records JSONL")],
    dataset: DatasetOpt = "arithmetic",
) -> None:
    """Grade generations against the dataset's answers (joined by id)."""
    from .data import load_dataset
    from .pipeline import grade_stage
    from .records import Generation, read_jsonl

    gens = read_jsonl(inp, Generation)
    if not gens:
        raise InputError(f"{inp}: no generations to grade")
    examples = load_dataset(dataset, split="all")
    records = grade_stage(gens, examples, out)
    acc = sum(r.correct for r in records) / len(records)
    console.print(f"graded {len(records)} answers: accuracy {acc:.3f} → {out}")


@app.command()
def train(
    method: Annotated[str, typer.Argument(help="grace (a <CNF> token, SPEC §1) or conftuner (tokenized Brier, SPEC §2)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="artifact directory")],
    model: ModelOpt = "default",
    dataset: DatasetOpt = "arithmetic",
    limit: LimitOpt = 300,
    records: Annotated[Path | None, typer.Option(help="graded train records to use instead of generating")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML with training hyper-parameters")] = None,
    epochs: Annotated[float | None, typer.Option(help="override epochs")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the latest checkpoint")] = False,
) -> None:
    """Train a confidence method on the base model's own graded answers (LoRA + confidence read-out)."""
    _train(method, out, model, dataset, limit, records, config, epochs, resume)


def _train(method, out, model, dataset, limit, records_path, config_path, epochs, resume) -> None:
    from .models import load_model
    from .pipeline import TRAINED_METHODS, load_records, train_method
    from .training.objective import TrainConfig

    if method not in TRAINED_METHODS:
        from .errors import UnknownNameError

        raise UnknownNameError("trainable method", method, TRAINED_METHODS)

    train_config = TrainConfig()
    if config_path is not None:
        from .config import load_yaml_mapping

        train_config = _validated(TrainConfig, load_yaml_mapping(config_path), str(config_path))
    if epochs is not None:
        train_config = train_config.model_copy(update={"epochs": epochs})
    lm = load_model(model)
    if records_path is not None:
        records = load_records(records_path)
    else:
        records = _own_graded_answers(lm, dataset, limit, Path(out))
    path = train_method(method, lm, records, train_config, Path(out), resume=resume)
    console.print(f"trained {method} on {len(records)} answers → {path} (load with certa.load_model({str(path)!r}))")


def _own_graded_answers(lm, dataset: str, limit: int | None, out: Path):
    """The base model's own greedy answers on the train split, graded (the training data of both methods)."""
    from .data import load_dataset
    from .pipeline import generate_stage, grade_stage

    examples = load_dataset(dataset, split="train", limit=limit)
    gens = generate_stage(lm, examples, out / "train.generations.jsonl", max_new_tokens=48, batch_size=16)
    return grade_stage(gens, examples, out / "train.records.jsonl")


def _validated(model_cls, data, where):
    from pydantic import ValidationError

    from .config import format_validation_error

    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{where}: {format_validation_error(exc)}") from None


@app.command()
def score(
    inp: Annotated[Path, typer.Option("--in", "-i", help="graded records JSONL (or answers + --dataset)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="scores JSONL")] = Path("scores.jsonl"),
    method: Annotated[str, typer.Option("--method", help="comma-separated method names (see `certa methods`)")] = "sequence_likelihood",
    model: ModelOpt = "default",
    fit: Annotated[Path | None, typer.Option(help="graded train records for methods that must be fitted")] = None,
    dataset: Annotated[str | None, typer.Option(help="grade ungraded answers against this dataset first")] = None,
) -> None:
    """Score answers with confidence methods — including answers written by another (black-box) model."""
    from .models import load_model
    from .pipeline import load_records, score_stage, write_scores

    methods = [m.strip() for m in method.split(",") if m.strip()]
    records = _records_or_answers(inp, dataset)
    fit_records = load_records(fit) if fit else ()
    needs_model = _methods_need_model(methods)
    lm = load_model(model) if needs_model else None
    models = {lm.artifact["method"]: lm} if lm is not None and lm.artifact else {}
    scored = score_stage(methods, records, fit_records=fit_records, models=models, default_model=lm)
    write_scores(out, records, scored)
    console.print(f"scored {len(records)} answers with {', '.join(methods)} → {out}")


def _records_or_answers(path: Path, dataset: str | None):
    from .records import Generation, Record, iter_jsonl, read_jsonl

    first = next((obj for _, obj in iter_jsonl(path)), None)
    if first is None:
        raise InputError(f"{path}: no rows")
    if "correct" in first:
        return read_jsonl(path, Record)
    if dataset is None:
        raise InputError(f"{path}: rows have no 'correct' field; pass --dataset to grade them first")
    from .data import grade, load_dataset

    return grade(read_jsonl(path, Generation), load_dataset(dataset, split="all"))


def _methods_need_model(methods) -> bool:
    from .methods import Needs, method_class

    return any(Needs.MODEL in method_class(part).needs for m in methods for part in m.split("+"))


@app.command()
def evaluate(
    inp: Annotated[Path, typer.Option("--in", "-i", help="scores JSONL from `certa score`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for metrics.json and report.html")] = Path("eval"),
    n_bins: Annotated[int, typer.Option(help="ECE bins")] = 10,
    n_bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the CIs")] = 1000,
) -> None:
    """Compute calibration metrics with bootstrap CIs; write metrics.json and report.html."""
    result = _evaluate_scores(inp, n_bins=n_bins, n_bootstrap=n_bootstrap)
    result.save(out)
    result.to_html(out / "report.html", title=f"certa — {inp.name}")
    _print_summary(result)
    console.print(f"metrics: {out / 'metrics.json'}\nreport:  {out / 'report.html'}")


@app.command()
def report(
    inp: Annotated[Path, typer.Option("--in", "-i", help="scores JSONL from `certa score`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file")] = Path("report.html"),
    n_bins: Annotated[int, typer.Option(help="bins of the reliability diagrams")] = 10,
) -> None:
    """Write a self-contained HTML report (reliability diagrams, risk–coverage curves)."""
    _evaluate_scores(inp, n_bins=n_bins).to_html(out, title=f"certa — {inp.name}")
    console.print(f"report: {out}")


def _evaluate_scores(path: Path, **options):
    from .evaluation import evaluate as run_evaluate
    from .pipeline import read_scores

    correct, scores = read_scores(path)
    return run_evaluate(correct, scores, extra={"input": str(path)}, **options)


# ── using the confidence ──────────────────────────────────────────────────────────────────────


@app.command()
def scale(
    inp: Annotated[Path, typer.Option("--in", "-i", help="graded records with samples (and GrACE sample confidences)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for scaling.json and scaling.png")] = Path("scaling"),
    budget: Annotated[int, typer.Option(help="sample budget B")] = 8,
    tau: Annotated[float, typer.Option(help="GrACE-ES stops at the first sample with confidence above tau")] = 0.8,
    confidence: Annotated[str, typer.Option(help="which per-sample confidence to use")] = "grace",
) -> None:
    """Test-time scaling: SC, adaptive SC, early-stopping SC, GrACE-SC and GrACE-ES at budget B."""
    from .pipeline import load_records
    from .records import atomic_write_text
    from .scaling import plot_scaling, run_strategies, scaling_curves

    records = load_records(inp)
    results = run_strategies(records, budget, confidence=confidence, tau=tau)
    budgets = sorted({b for b in (1, 2, 4, 8, 16, 32) if b < budget} | {budget})
    curves = scaling_curves(records, budgets, confidence=confidence, tau=tau)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "scaling.json", json.dumps({"budget": budget, "tau": tau, "results": results,
                                                        "curves": curves}, indent=2))
    plot_scaling(curves, out / "scaling.png")
    _print_rows("strategy", results, ("accuracy", "mean_samples"))
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
    from .models import load_model
    from .pipeline import load_records
    from .records import atomic_write_text, write_jsonl
    from .scaling import self_correct

    records = load_records(inp)
    confidences = _scores_for(scores, method, records)
    result = self_correct(load_model(model), records, confidences, threshold=threshold,
                          max_new_tokens=max_new_tokens)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "records.jsonl", result.records)
    atomic_write_text(out / "self_correct.json", json.dumps(result.to_dict(), indent=2))
    _print_rows("self-correction", {"result": result.to_dict()}, tuple(result.to_dict()))


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
    from .pipeline import load_records
    from .records import atomic_write_text
    from .scaling import cascade as run_cascade
    from .scaling import plot_cascade

    records = load_records(inp)
    confidences = _scores_for(scores, method, records)
    if not strong.startswith(("http://", "https://")):
        from .models import load_model

        strong = load_model(strong)
    result = run_cascade(records, confidences, strong, strong_model_name=strong_model_name,
                         max_new_tokens=max_new_tokens)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "cascade.json", json.dumps(result.to_dict(), indent=2))
    plot_cascade(result, out / "cascade.png")
    for k, acc in zip(result.ks, result.accuracy, strict=True):
        console.print(f"k={k:>4}  accuracy={acc:.3f}")
    console.print(f"results: {out / 'cascade.json'}\nplot:    {out / 'cascade.png'}")


def _scores_for(path: Path, method: str, records) -> list[float]:
    """One method's confidences from a scores file, aligned to the records by id."""
    from .records import iter_jsonl

    by_id = {}
    for lineno, row in iter_jsonl(path):
        scores = row.get("scores")
        value = scores.get(method) if isinstance(scores, dict) else None
        if value is None:
            raise InputError(f"{path}:{lineno}: no score for method {method!r}")
        try:
            number = float("nan") if isinstance(value, (bool, str)) else float(value)
        except (TypeError, ValueError, OverflowError):
            number = float("nan")
        if not math.isfinite(number):
            raise InputError(f"{path}:{lineno}: score {value!r} for method {method!r} is not a finite number")
        by_id[str(row.get("id"))] = number
    missing = [r.id for r in records if r.id not in by_id]
    if missing:
        raise InputError(f"{path}: no score for record {missing[0]!r} ({len(missing)} missing)")
    return [by_id[r.id] for r in records]


def _print_rows(title: str, rows: dict, columns: tuple[str, ...]) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("")
    for col in columns:
        table.add_column(col, justify="right")
    for name, values in rows.items():
        table.add_row(name, *(f"{values[c]:.3f}" if isinstance(values[c], float) else str(values[c]) for c in columns))
    console.print(table)


# ── catalogues ────────────────────────────────────────────────────────────────────────────────


@app.command()
def methods() -> None:
    """List every confidence method with what it is and what it costs."""
    from rich.table import Table

    from .methods import method_class, method_names

    table = Table(title="confidence methods")
    for col in ("name", "what", "cost", "needs"):
        table.add_column(col)
    for name in method_names():
        cls = method_class(name)
        needs = ", ".join(flag.name.lower() for flag in type(cls.needs) if flag in cls.needs and flag.value) or "-"
        table.add_row(name, cls.describe(), cls.cost, needs)
    console.print(table)
    console.print("Any method can be wrapped in a post-hoc calibrator: e.g. 'sequence_likelihood+platt'.")


@app.command()
def datasets() -> None:
    """List the bundled datasets."""
    from .data import dataset_names, describe_dataset

    for name in dataset_names():
        console.print(f"[bold]{name}[/]: {describe_dataset(name)}")


@app.command()
def serve(
    model: ModelOpt = "default",
    method: Annotated[str | None, typer.Option(help="confidence method (default: the artifact's own, else sequence_likelihood)")] = None,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="require this bearer token", envvar="CERTA_API_KEY")] = None,
    model_name: Annotated[str | None, typer.Option(help="the model id clients send (default: --model)")] = None,
    max_batch: Annotated[int, typer.Option(help="requests decoded together")] = 16,
    batch_wait_ms: Annotated[float, typer.Option(help="how long a batch waits to fill")] = 10.0,
    max_queue: Annotated[int, typer.Option(help="queued requests before answering 429")] = 256,
) -> None:
    """Serve an OpenAI-compatible API whose every choice carries a confidence."""
    from .server import serve as run_server

    run_server(model, method=method, host=host, port=port, api_key=api_key, model_name=model_name,
               max_batch=max_batch, batch_wait_ms=batch_wait_ms, max_queue=max_queue)


def main() -> None:
    """Console-script entry point: one-line errors (exit 2) unless --debug."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(standalone_mode=False)
    except CertaError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted; finished work is saved and a re-run resumes it")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors carry their own exit code and message
        if isinstance(exc, _click_exception_types()):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, OSError) and not _state["debug"]:
            err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)
        raise


def _click_exception_types() -> tuple[type[Exception], ...]:
    # Recent typer vendors click as ``typer._click``, whose exceptions are not ``click``'s own.
    import click

    vendored = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    return (click.ClickException, vendored)


if __name__ == "__main__":  # pragma: no cover
    main()
