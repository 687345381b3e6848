"""The single stages: ``generate``, ``grade``, ``train``, ``score``, ``evaluate``, ``report``."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from ..data import grade as grade_answers
from ..data import load_dataset, read_graded
from ..errors import InputError
from ..evaluation import evaluate as run_evaluate
from ..generation import DEFAULTS, GenerationSettings
from ..methods.base import MethodSpec, Needs, method_names
from ..methods.runner import score_methods
from ..models import load_model
from ..models.remote import is_remote_spec, parse_remote_spec
from ..parallel import Processes, generate_parallel, model_device, processes, score_parallel
from ..records import Generation, Record, read_jsonl, write_jsonl
from ..scores import read_scores
from ..study.config import load_yaml_mapping
from ..study.stages import load_records, training_answers
from .app import DatasetOpt, LimitOpt, ModelOpt, SplitOpt, app, check_output, console
from .fields import field_options, given_values
from .study import print_summary


def _help(field: str) -> str:
    return GenerationSettings.model_fields[field].description or field


EngineOpt = Annotated[str, typer.Option(help="hf (transformers) or vllm (needs the 'vllm' extra and a GPU)")]


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="generations JSONL (resumes if it exists)")],
    model: ModelOpt = "default",
    dataset: DatasetOpt = "arithmetic",
    split: SplitOpt = "test",
    limit: LimitOpt = None,
    samples: Annotated[int, typer.Option(min=0, help="extra sampled answers per question")] = 0,
    temperature: Annotated[float, typer.Option(min=0.0, help=_help("temperature"))] = DEFAULTS.temperature,
    max_new_tokens: Annotated[int, typer.Option(min=1, help=_help("max_new_tokens"))] = DEFAULTS.max_new_tokens,
    batch_size: Annotated[int, typer.Option(min=1, help=_help("batch_size"))] = DEFAULTS.batch_size,
    hidden_states: Annotated[bool, typer.Option(help="store the last hidden state (probe, GrACE targets)")] = True,
    token_stats: Annotated[bool, typer.Option(help="store per-token Rényi / Fisher-Rao statistics")] = False,
    seed: int = 0,
    engine: EngineOpt = "hf",
    vocab_size: Annotated[int | None, typer.Option(help="-m openai:...: the served model's vocabulary size "
                                                   "(token_entropy normalises by it)")] = None,
    concurrency: Annotated[int, typer.Option(help="-m openai:...: requests in flight at once")] = 8,
) -> None:
    """Answer a dataset's questions (batched), keeping log-probs, hidden states and samples.

    -m openai:BASE_URL[#model] asks any OpenAI-compatible server (API key from OPENAI_API_KEY);
    `accelerate launch --num_processes N -m certa.cli generate ...` splits the questions across N processes.
    """
    check_output(out, directory=False)
    examples = load_dataset(dataset, split=split, limit=limit, seed=seed)
    procs = processes()
    if is_remote_spec(model):
        from ..remote_generation import generate_remote

        gens = generate_parallel(parse_remote_spec(model), examples, out, procs=procs, generate_fn=generate_remote,
                                 max_new_tokens=max_new_tokens, samples=samples, temperature=temperature, seed=seed,
                                 vocab_size=vocab_size, concurrency=concurrency)
    elif engine == "vllm":
        if procs.distributed:
            raise InputError("--engine vllm runs in one process (vLLM spreads a model over GPUs itself: "
                             "tensor parallelism); start it without accelerate launch")
        from ..vllm_engine import generate_vllm

        gens = generate_vllm(model, examples, max_new_tokens=max_new_tokens, samples=samples,
                             temperature=temperature, seed=seed, out=out)
    else:
        _check_engine(engine)
        lm = load_model(model, device=model_device(procs))
        gens = generate_parallel(lm, examples, out, procs=procs, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, samples=samples, temperature=temperature,
                                 hidden_states=hidden_states, token_stats=token_stats, seed=seed)
    if procs.is_main:
        console.print(f"wrote {len(gens)} generations to {out}")


def _check_engine(engine: str) -> None:
    if engine not in ("hf", "vllm"):
        raise InputError(f"--engine must be 'hf' or 'vllm', got {engine!r}")


@app.command()
def grade(
    inp: Annotated[Path, typer.Option("--in", "-i", help="generations JSONL")],
    out: Annotated[Path, typer.Option("--out", "-o", help="graded records JSONL")],
    dataset: DatasetOpt = "arithmetic",
) -> None:
    """Grade generations against the dataset's answers (joined by id)."""
    check_output(out, directory=False)
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
        procs = processes()
        out = check_output(Path(options["out"]), directory=True)
        records = None
        if options["records"] is not None:  # read (and checked) before a model of many GB is loaded
            records = load_records(options["records"])
            cls.check_training_records(records)  # type: ignore[attr-defined]
        lm = load_model(options["model"], device=model_device(procs))
        if records is None:
            needs_hidden = Needs.HIDDEN_STATES in cls.fit_needs
            records = _training_answers(lm, options["dataset"], out, options["limit"], needs_hidden, procs)
        # Under accelerate launch every process trains on all records; the trainer's DDP splits the batches.
        path = cls.train(lm, records, train_config, out, resume=options["resume"], in_place=True)  # type: ignore[attr-defined]
        if procs.is_main:
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


def _training_answers(lm: Any, dataset: str, out: Path, limit: int | None, hidden_states: bool,
                      procs: Processes) -> list[Record]:
    """The base model's graded train-split answers; under accelerate launch each process answers its share."""
    if not procs.distributed:
        return training_answers(lm, dataset, out, limit=limit, hidden_states=hidden_states)
    examples = load_dataset(dataset, split="train", limit=limit, seed=0)
    gens = generate_parallel(lm, examples, out / "train.generations.jsonl", procs=procs,
                             hidden_states=hidden_states, seed=0)
    records = grade_answers(gens, examples)
    if procs.is_main:
        write_jsonl(out / "train.records.jsonl", records)
    procs.barrier()
    return records


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
    if not methods:
        raise InputError(f"--method {method!r}: name at least one method (see `certa methods`)")
    check_output(out, directory=False)
    specs = [MethodSpec.parse(m) for m in methods]
    records = read_graded(inp, dataset)
    fit_records = load_records(fit) if fit else ()
    procs = processes()
    needs_model = any(Needs.MODEL in s.needs for s in specs)
    if needs_model and is_remote_spec(model):
        _check_remote_methods(specs, model)
        # Only the methods that ask the server get it; the rest read the records alone.
        models, default = dict.fromkeys(REMOTE_READOUTS, parse_remote_spec(model)), None
    else:
        lm = load_model(model, device=model_device(procs)) if needs_model else None
        models = {lm.method: lm} if lm is not None and lm.method else {}
        default = lm.view(None) if lm is not None and lm.adapter else lm

    def score_shard(shard: Sequence[Record]) -> dict[str, Any]:
        scored = score_methods(methods, shard, fit_records=fit_records, models=models, default_model=default)
        return {m: s.scores for m, s in scored.items()}

    # Under accelerate launch each process scores its share of the answers; the main process merges them.
    score_parallel(score_shard, records, out, methods, procs=procs)
    if procs.is_main:
        console.print(f"scored {len(records)} answers with {', '.join(methods)} → {out}")


#: Methods that read a model and also work with one behind a server (they ask it over the chat API).
REMOTE_READOUTS = frozenset({"p_true", "verbalized"})


def _check_remote_methods(specs: Sequence[MethodSpec], model: str) -> None:
    for spec in specs:
        if Needs.MODEL in spec.needs and spec.base not in REMOTE_READOUTS:
            raise InputError(f"method {spec.name!r} needs the model's weights, which a server ({model}) does not "
                             f"expose; with -m openai:... the model-reading methods are {', '.join(sorted(REMOTE_READOUTS))}")


@app.command()
def evaluate(
    inp: Annotated[Path, typer.Option("--in", "-i", help="scores JSONL from `certa score`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for metrics.json and report.html")] = Path("eval"),
    n_bins: Annotated[int, typer.Option(help="ECE bins")] = 10,
    n_bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the CIs")] = 1000,
) -> None:
    """Compute calibration metrics with bootstrap CIs; write metrics.json and report.html."""
    check_output(out, directory=True)
    result = _evaluate_scores(inp, n_bins=n_bins, n_bootstrap=n_bootstrap)
    result.save(out, report_title=f"certa — {inp.name}")
    print_summary(result)
    console.print(f"metrics: {out / 'metrics.json'}\nreport:  {out / 'report.html'}")


@app.command()
def report(
    inp: Annotated[Path, typer.Option("--in", "-i", help="scores JSONL from `certa score`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file")] = Path("report.html"),
    n_bins: Annotated[int, typer.Option(help="bins of the reliability diagrams")] = 10,
) -> None:
    """Write a self-contained HTML report (reliability diagrams, risk–coverage curves)."""
    check_output(out, directory=False)
    _evaluate_scores(inp, n_bins=n_bins).to_html(out, title=f"certa — {inp.name}")
    console.print(f"report: {out}")


def _evaluate_scores(path: Path, **options: Any):
    table = read_scores(path)
    return run_evaluate(table.correct, table.scores, extra={"input": str(path)}, **options)
