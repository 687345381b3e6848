"""File-based stages and the study that chains them.

Each stage reads and writes files under one output directory, so a run can
stop anywhere and resume: generation skips ids already written, training
continues from its last checkpoint, scores are cached per method. ``run_study``
is what ``certa run`` and ``certa demo`` call.

Layout of ``out/``::

    config.json                    the validated RunConfig that made the run
    <dataset>/train.generations.jsonl, test.generations.jsonl
    <dataset>/train.records.jsonl,     test.records.jsonl
    <dataset>/scores.jsonl             one row per test id: correct + every method's confidence
    artifacts/grace, artifacts/conftuner   trained methods (certa.load_model-able)
    metrics.json, report.html          evaluation of every method, pooled and per dataset
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import RunConfig
from .errors import CertaError, InputError
from .records import Example, Generation, Record, atomic_write_text, read_jsonl, write_jsonl

if TYPE_CHECKING:
    from .evaluation import EvaluationResult
    from .models import LoadedModel

log = logging.getLogger(__name__)

TRAINED_METHODS = ("grace", "conftuner")


# ── single stages ─────────────────────────────────────────────────────────────────────────────


def generate_stage(
    lm: LoadedModel,
    examples: Sequence[Example],
    out: Path,
    *,
    max_new_tokens: int,
    batch_size: int,
    samples: int = 0,
    temperature: float = 1.0,
    hidden_states: bool = True,
    hooks: Sequence[Any] | None = None,
    seed: int = 0,
) -> list[Generation]:
    """Generate answers into ``out`` (resumable: finished ids are skipped on a re-run)."""
    from .generation import generate

    return generate(
        lm, examples, max_new_tokens=max_new_tokens, batch_size=batch_size, samples=samples,
        temperature=temperature, hidden_states=hidden_states, hooks=hooks, seed=seed, out=out,
    )


def grade_stage(generations: Sequence[Generation], examples: Sequence[Example], out: Path) -> list[Record]:
    """Grade generations against their examples and write the records."""
    from .data import grade

    records = grade(generations, examples)
    write_jsonl(out, records)
    return records


@dataclass
class MethodScores:
    """One method's confidences on the evaluated records, with what it cost."""

    name: str
    scores: np.ndarray
    seconds: float
    cost: str
    diagnostics: dict[str, Any] = field(default_factory=dict)


def score_stage(
    methods: Sequence[str],
    test_records: Sequence[Record],
    *,
    fit_records: Sequence[Record] = (),
    models: dict[str, LoadedModel] | None = None,
    default_model: LoadedModel | None = None,
) -> dict[str, MethodScores]:
    """Fit (when needed) and score every method; ``models`` maps a method to its own model."""
    from .methods import get_method

    models = models or {}
    results: dict[str, MethodScores] = {}
    for name in methods:
        base_name = name.split("+", 1)[0]
        method = get_method(name, model=models.get(base_name, default_model))
        start = time.perf_counter()
        if method.requires_fit:
            if not fit_records:
                raise CertaError(f"method {name!r} must be fitted, but no training records were given")
            method.fit(fit_records)
        scores = method(test_records)
        seconds = time.perf_counter() - start
        diagnostics = dict(getattr(method, "last_diagnostics", {}) or {})
        results[name] = MethodScores(name, scores, seconds, method.cost, diagnostics)
        log.info("scored %s in %.1fs", name, seconds)
    return results


def write_scores(path: Path, records: Sequence[Record], scores: dict[str, MethodScores]) -> Path:
    rows = (
        {"id": r.id, "correct": r.correct, "scores": {m: float(s.scores[i]) for m, s in scores.items()}}
        for i, r in enumerate(records)
    )
    return write_jsonl(path, rows)


def read_scores(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read a scores.jsonl (``certa score`` output) into (correct, {method: confidences})."""
    from .records import iter_jsonl

    correct: list[float] = []
    columns: dict[str, list[float]] = {}
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if "correct" not in row or "scores" not in row or not isinstance(row["scores"], dict):
            raise InputError(f"{where}: a scores row needs 'correct' and a 'scores' object")
        if len(correct) and set(row["scores"]) != set(columns):
            raise InputError(f"{where}: methods differ from the first row ({sorted(columns)})")
        correct.append(_finite(row["correct"], "correct", where))
        for name, value in row["scores"].items():
            columns.setdefault(name, []).append(_finite(value, f"scores.{name}", where))
    if not correct:
        raise InputError(f"{path}: no rows")
    return np.asarray(correct), {m: np.asarray(v) for m, v in columns.items()}


def _finite(value: Any, name: str, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: field {name!r} is not a number ({value!r})") from None
    if not np.isfinite(number):
        raise InputError(f"{where}: field {name!r} is {value!r}; confidences must be finite")
    return number


# ── the study ─────────────────────────────────────────────────────────────────────────────────


@dataclass
class StudyResult:
    """What ``run_study`` produced: the pooled evaluation and where everything lies."""

    out: Path
    evaluation: EvaluationResult
    by_dataset: dict[str, EvaluationResult]
    costs: dict[str, dict[str, float]]
    artifacts: dict[str, Path]


def run_study(config: RunConfig, *, progress: bool = True) -> StudyResult:
    """Generate, grade, train, score and evaluate as ``config`` says; resumes from ``config.out``."""
    from .data import load_dataset
    from .evaluation import evaluate
    from .models import load_model

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", config.model_dump_json(indent=2))
    _check_methods(config.methods)

    lm = load_model(config.model)
    gen = config.generation
    train_records: dict[str, list[Record]] = {}
    test_records: dict[str, list[Record]] = {}
    gen_seconds: dict[str, float] = {}
    for ds in config.datasets:
        train_ex = load_dataset(ds.name, split="train", limit=ds.train_limit, seed=config.seed)
        test_ex = load_dataset(ds.name, split="test", limit=ds.test_limit, seed=config.seed)
        d = out / ds.name
        log.info("%s: %d train / %d test questions", ds.name, len(train_ex), len(test_ex))
        train_gen = generate_stage(
            lm, train_ex, d / "train.generations.jsonl", max_new_tokens=gen.max_new_tokens,
            batch_size=gen.batch_size, seed=config.seed,
        )
        start = time.perf_counter()
        test_gen = generate_stage(
            lm, test_ex, d / "test.generations.jsonl", max_new_tokens=gen.max_new_tokens,
            batch_size=gen.batch_size, samples=gen.samples, temperature=gen.temperature, seed=config.seed,
        )
        gen_seconds[ds.name] = time.perf_counter() - start
        train_records[ds.name] = grade_stage(train_gen, train_ex, d / "train.records.jsonl")
        test_records[ds.name] = grade_stage(test_gen, test_ex, d / "test.records.jsonl")

    pooled_train = [r for rs in train_records.values() for r in rs]
    artifacts = train_methods(config, pooled_train, out / "artifacts")
    models = {name: load_model(str(path)) for name, path in artifacts.items()}

    per_dataset: dict[str, EvaluationResult] = {}
    all_scores: dict[str, list[np.ndarray]] = {m: [] for m in config.methods}
    costs: dict[str, dict[str, float]] = {m: {"seconds": 0.0} for m in config.methods}
    diagnostics: dict[str, dict[str, Any]] = {}
    for ds in config.datasets:
        records = test_records[ds.name]
        scored = score_stage(config.methods, records, fit_records=pooled_train, models=models, default_model=lm)
        write_scores(out / ds.name / "scores.jsonl", records, scored)
        for name, s in scored.items():
            all_scores[name].append(s.scores)
            costs[name]["seconds"] += s.seconds
            costs[name]["cost"] = s.cost  # type: ignore[assignment]
            diagnostics.setdefault(name, {})[ds.name] = s.diagnostics
        per_dataset[ds.name] = evaluate(
            records, {m: s.scores for m, s in scored.items()},
            n_bins=config.evaluation.n_bins, n_bootstrap=config.evaluation.n_bootstrap, seed=config.seed,
        )

    total_gen = sum(gen_seconds.values()) or float("nan")
    for name in costs:
        costs[name]["relative_to_generation"] = costs[name]["seconds"] / total_gen
    pooled_records = [r for ds in config.datasets for r in test_records[ds.name]]
    extra = {
        "config": json.loads(config.model_dump_json()),
        "generation_seconds": gen_seconds,
        "costs": costs,
        "diagnostics": diagnostics,
        "by_dataset": {name: res.to_dict() for name, res in per_dataset.items()},
    }
    evaluation = evaluate(
        pooled_records, {m: np.concatenate(v) for m, v in all_scores.items()},
        n_bins=config.evaluation.n_bins, n_bootstrap=config.evaluation.n_bootstrap, seed=config.seed,
        extra=extra,
    )
    evaluation.save(out)
    evaluation.to_html(out / "report.html", title=f"certa — {config.model} on {', '.join(per_dataset)}")
    return StudyResult(out, evaluation, per_dataset, costs, artifacts)


def _check_methods(methods: Sequence[str]) -> None:
    from .methods import method_class

    if not methods:
        raise InputError("config: 'methods' is empty")
    for name in methods:
        for part in name.split("+"):
            method_class(part)


def train_methods(config: RunConfig, records: Sequence[Record], root: Path) -> dict[str, Path]:
    """Train the trainable methods the config asks for; reuse an artifact trained with the same config.

    Each method trains on its own fresh copy of the base model (a cached load is
    fast), so one method's added tokens and adapter never leak into another or
    into the baselines.
    """
    from .models import load_model

    artifacts: dict[str, Path] = {}
    for method in TRAINED_METHODS:
        if method not in config.methods:
            continue
        train_config = getattr(config.training, method)
        if train_config is None:
            from .training.objective import TrainConfig

            train_config = TrainConfig(seed=config.seed)
        out = root / method
        fingerprint = _fingerprint(config.model, train_config.model_dump(), sorted(r.id for r in records))
        stamp = out / "trained-from.txt"
        if (out / "certa.json").exists() and stamp.exists() and stamp.read_text() == fingerprint:
            log.info("reusing trained %s at %s", method, out)
        else:
            train_method(method, load_model(config.model), records, train_config, out, resume=True)
            atomic_write_text(stamp, fingerprint)
        artifacts[method] = out
    return artifacts


def train_method(method: str, lm: LoadedModel, records: Sequence[Record], config: Any, out: Path,
                 *, resume: bool = False) -> Path:
    """Train GrACE or ConfTuner on graded records of the base model's own answers."""
    if method == "grace":
        from .methods.grace import train_grace

        return Path(train_grace(lm, records, config, out, resume=resume))
    if method == "conftuner":
        from .methods.conftuner import train_conftuner

        return Path(train_conftuner(lm, records, config, out, resume=resume))
    from .errors import UnknownNameError

    raise UnknownNameError("trainable method", method, TRAINED_METHODS)


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def load_records(path: str | Path) -> list[Record]:
    """Read graded records (``certa grade`` output)."""
    records = read_jsonl(path, Record)
    if not records:
        raise InputError(f"{path}: no records")
    return records
