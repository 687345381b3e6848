"""The single stages: ``generate``, ``grade``, ``train``, ``score``, ``evaluate``, ``report``."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from ..data import grade as grade_answers
from ..data import load_dataset, read_graded
from ..errors import InputError
from ..evaluation import evaluate as run_evaluate
from ..generation import DEFAULTS, GenerationSettings
from ..generation import generate as generate_answers
from ..methods.base import MethodSpec, Needs, method_names
from ..methods.runner import score_methods
from ..models import load_model
from ..records import Generation, read_jsonl, write_jsonl
from ..scores import read_scores, write_scores
from ..study.config import load_yaml_mapping
from ..study.stages import load_records, training_answers
from .app import DatasetOpt, LimitOpt, ModelOpt, SplitOpt, app, console
from .fields import field_options, given_values
from .study import print_summary


def _help(field: str) -> str:
    return GenerationSettings.model_fields[field].description or field


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="generations JSONL (resumes if it exists)")],
    model: ModelOpt = "default",
    dataset: DatasetOpt = "arithmetic",
    split: SplitOpt = "test",
    limit: LimitOpt = None,
    samples: Annotated[int, typer.Option(help="extra sampled answers per question")] = 0,
    temperature: Annotated[float, typer.Option(help=_help("temperature"))] = DEFAULTS.temperature,
    max_new_tokens: Annotated[int, typer.Option(help=_help("max_new_tokens"))] = DEFAULTS.max_new_tokens,
    batch_size: Annotated[int, typer.Option(help=_help("batch_size"))] = DEFAULTS.batch_size,
    hidden_states: Annotated[bool, typer.Option(help="store the last hidden state (probe, GrACE targets)")] = True,
    token_stats: Annotated[bool, typer.Option(help="store per-token Rényi / Fisher-Rao statistics")] = False,
    seed: int = 0,
) -> None:
    """Answer a dataset's questions (batched), keeping log-probs, hidden states and samples."""
    examples = load_dataset(dataset, split=split, limit=limit, seed=seed)
    gens = generate_answers(load_model(model), examples, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            samples=samples, temperature=temperature, hidden_states=hidden_states,
                            token_stats=token_stats, seed=seed, out=out)
    console.print(f"wrote {len(gens)} generations to {out}")


@app.command()
def grade(
    inp: Annotated[Path, typer.Option("--in", "-i", help="generations JSONL")],
    out: Annotated[Path, typer.Option("--out", "-o", help="graded records JSONL")],
    dataset: DatasetOpt = "arithmetic",
) -> None:
    """Grade generations against the dataset's answers (joined by id)."""
    records = grade_answers(read_jsonl(inp, Generation), load_dataset(dataset, split="all"))
    if not records:
        raise InputError(f"{inp}: no generations to grade")
    write_jsonl(out, records)
    acc = sum(r.correct for r in records) / len(records)
    console.print(f"graded {len(records)} answers: accuracy {acc:.3f} → {out}")


train_app = typer.Typer(help="Train a confidence method on the base model's own graded answers (LoRA + read-out).",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


def _train_command(method: str) -> None:
    """Register ``certa train <method>`` with one option per field of the method's config class."""
    cls = MethodSpec.parse(method).base_class
    config_class = cls.config_class  # type: ignore[attr-defined]

    def command(**options: Any) -> None:
        config: dict[str, Any] = load_yaml_mapping(options["config"]) if options["config"] else {}
        config.update(given_values(config_class, options))
        where = f"{options['config']}" if options["config"] else "options"
        train_config = cls.resolve_config(config, where=where)  # type: ignore[attr-defined]
        lm = load_model(options["model"])
        out = Path(options["out"])
        if options["records"] is not None:
            records = load_records(options["records"])
        else:
            needs_hidden = Needs.HIDDEN_STATES in cls.fit_needs
            records = training_answers(lm, options["dataset"], out, limit=options["limit"], hidden_states=needs_hidden)
        path = cls.train(lm, records, train_config, out, resume=options["resume"], in_place=True)  # type: ignore[attr-defined]
        console.print(f"trained {method} on {len(records)} answers → {path} "
                      f"(load with certa.load_model({str(path)!r}))")

    common = [
        inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
            Path, typer.Option("--out", "-o", help="artifact directory")]),
        inspect.Parameter("model", inspect.Parameter.KEYWORD_ONLY, default="default", annotation=ModelOpt),
        inspect.Parameter("dataset", inspect.Parameter.KEYWORD_ONLY, default="arithmetic", annotation=DatasetOpt),
        inspect.Parameter("limit", inspect.Parameter.KEYWORD_ONLY, default=300, annotation=LimitOpt),
        inspect.Parameter("records", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Path | None, typer.Option(help="graded train records to use instead of generating")]),
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Path | None, typer.Option(help="YAML with training settings (the options below override it)")]),
        inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option(help="continue from the latest checkpoint")]),
    ]
    taken = {p.name for p in common}
    command.__signature__ = inspect.Signature(common + [p for p in field_options(config_class) if p.name not in taken])
    command.__doc__ = f"Train {method}: {cls.describe()} ({cls.paper})."  # type: ignore[attr-defined]
    train_app.command(method)(command)


for _name in method_names():
    if MethodSpec.parse(_name).trained:
        _train_command(_name)


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
    methods = [m.strip() for m in method.split(",") if m.strip()]
    specs = [MethodSpec.parse(m) for m in methods]
    records = read_graded(inp, dataset)
    fit_records = load_records(fit) if fit else ()
    lm = load_model(model) if any(Needs.MODEL in s.needs for s in specs) else None
    models = {lm.method: lm} if lm is not None and lm.method else {}
    default = lm.view(None) if lm is not None and lm.adapter else lm
    scored = score_methods(methods, records, fit_records=fit_records, models=models, default_model=default)
    write_scores(out, records, {m: s.scores for m, s in scored.items()})
    console.print(f"scored {len(records)} answers with {', '.join(methods)} → {out}")


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
    print_summary(result)
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


def _evaluate_scores(path: Path, **options: Any):
    table = read_scores(path)
    return run_evaluate(table.correct, table.scores, extra={"input": str(path)}, **options)
