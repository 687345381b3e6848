"""File-based stages: generate, grade, train, score.

Each stage reads and writes files under one output directory, so a run can
stop anywhere and resume: generation skips ids already written, training
continues from its last checkpoint, scores are cached per method and redone
only when their inputs change. ``certa.study.run_study`` chains them.

Layout of ``out/``::

    config.json                    the validated RunConfig that made the run
    <dataset>/train.generations.jsonl, test.generations.jsonl
    <dataset>/train.records.jsonl,     test.records.jsonl
    <dataset>/generation-settings.json the settings that made the generations (a change redoes them)
    <dataset>/scores.jsonl             one row per test id: correct + every method's confidence
    <dataset>/scores.jsonl.meta.json   per method: cache key, timings, cost, diagnostics
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

from .config import DatasetSettings, RunConfig
from .errors import CertaError, InputError
from .records import Example, Generation, Record, atomic_write_text, iter_jsonl, read_jsonl, write_jsonl

if TYPE_CHECKING:
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
    """One method's confidences on the evaluated records, with what they cost.

    ``seconds`` is scoring time, ``fit_seconds`` fitting time (0 for
    training-free methods), ``needs`` the method's ``Needs`` flags by name.
    """

    name: str
    scores: np.ndarray
    seconds: float
    cost: str
    diagnostics: dict[str, Any] = field(default_factory=dict)
    fit_seconds: float = 0.0
    needs: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Everything but the scores (what the score cache keeps beside them)."""
        return {"seconds": self.seconds, "fit_seconds": self.fit_seconds, "cost": self.cost,
                "needs": self.needs, "diagnostics": self.diagnostics}


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
        fitted = time.perf_counter()
        scores = method(test_records)
        seconds = time.perf_counter() - fitted
        diagnostics = dict(getattr(method, "last_diagnostics", {}) or {})
        needs = [flag.name for flag in type(method.needs) if flag in method.needs and flag.name]
        results[name] = MethodScores(name, scores, seconds, method.cost, diagnostics, fitted - start, needs)
        log.info("scored %s in %.1fs", name, seconds)
    return results


def cached_score_stage(
    methods: Sequence[str],
    test_records: Sequence[Record],
    path: Path,
    *,
    fit_records: Sequence[Record] = (),
    models: dict[str, LoadedModel] | None = None,
    default_model: LoadedModel | None = None,
    provenance: dict[str, str] | None = None,
) -> dict[str, MethodScores]:
    """``score_stage`` that keeps its results in ``path`` and rescores only what changed.

    A method's cached scores are reused while its inputs are unchanged: its
    name, ``provenance[method]`` (the model or artifact it reads), the fit
    records (ids, answers, grades) and the scored answers. The cache is
    ``path`` (a scores JSONL) plus ``path.meta.json`` holding each method's key,
    timings, cost and diagnostics.
    """
    provenance = provenance or {}
    keys = {m: _fingerprint(m, provenance.get(m.split("+", 1)[0], ""), _record_key(fit_records, graded=True)
                            if needs_fit(m) else None, _record_key(test_records, graded=False))
            for m in methods}
    cached = _read_score_cache(path, [r.id for r in test_records])
    results = {m: cached[m][0] for m in methods if m in cached and cached[m][1] == keys[m]}
    todo = [m for m in methods if m not in results]
    if todo:
        results.update(score_stage(todo, test_records, fit_records=fit_records, models=models,
                                   default_model=default_model))
    ordered = {m: results[m] for m in methods}
    if todo or set(cached) != set(methods):
        write_scores(path, test_records, ordered)
        meta = {m: {"key": keys[m], **s.summary()} for m, s in ordered.items()}
        atomic_write_text(_cache_meta_path(path), json.dumps(meta, indent=1))
    return ordered


def needs_fit(name: str) -> bool:
    from .methods import method_class
    from .methods.base import Needs

    return any(Needs.FIT in method_class(part).needs for part in name.split("+"))


def _record_key(records: Sequence[Record], *, graded: bool) -> str:
    parts = [(r.id, r.response, r.correct if graded else None, r.samples) for r in records]
    return _fingerprint(parts)


def _cache_meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def _read_score_cache(path: Path, ids: list[str]) -> dict[str, tuple[MethodScores, str]]:
    """Cached (scores, key) per method, or nothing when the cache is missing or for other answers."""
    meta_path = _cache_meta_path(path)
    if not (path.exists() and meta_path.exists()):
        return {}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        rows = [row for _, row in iter_jsonl(path)]
    except (CertaError, ValueError) as exc:
        log.warning("ignoring unreadable score cache %s (%s)", path, exc)
        return {}
    if [row.get("id") for row in rows] != ids:
        return {}
    cached = {}
    for name, info in meta.items():
        if not all(name in row.get("scores", {}) for row in rows):
            continue
        scores = np.asarray([row["scores"][name] for row in rows], dtype=float)
        cached[name] = (MethodScores(name, scores, info["seconds"], info["cost"], info.get("diagnostics", {}),
                                     info.get("fit_seconds", 0.0), info.get("needs", [])), info["key"])
    return cached


def write_scores(path: Path, records: Sequence[Record], scores: dict[str, MethodScores]) -> Path:
    rows = (
        {"id": r.id, "correct": r.correct, "scores": {m: float(s.scores[i]) for m, s in scores.items()}}
        for i, r in enumerate(records)
    )
    return write_jsonl(path, rows)


def read_scores(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read a scores.jsonl (``certa score`` output) into (correct, {method: confidences})."""
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
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{where}: field {name!r} is not a number ({value!r})") from None
    if not np.isfinite(number):
        raise InputError(f"{where}: field {name!r} is {value!r}; confidences must be finite")
    return number


# ── one dataset's answers ─────────────────────────────────────────────────────────────────────


@dataclass
class DatasetRecords:
    """A dataset's graded train and test answers from the base model."""

    name: str
    train: list[Record]
    test: list[Record]


def prepare_dataset(config: RunConfig, lm: LoadedModel, ds: DatasetSettings) -> DatasetRecords:
    """Generate (resumably) and grade one dataset's train and test answers under ``config.out/<name>``.

    Train questions get the greedy answer only; test questions also get
    ``generation.samples`` sampled answers. Files made with other generation
    settings are stale and are regenerated.
    """
    from .data import load_dataset

    gen = config.generation
    d = Path(config.out) / ds.key
    files = [d / f"{split}.generations.jsonl" for split in ("train", "test")]
    settings = {"model": config.model, "seed": config.seed, **gen.model_dump(exclude={"batch_size"})}
    refresh_stamp(d / "generation-settings.json", settings, files)
    train_ex = load_dataset(ds.name, split="train", limit=ds.train_limit, seed=config.seed)
    test_ex = load_dataset(ds.name, split="test", limit=ds.test_limit, seed=config.seed)
    log.info("%s: %d train / %d test questions", ds.key, len(train_ex), len(test_ex))
    train_gen = generate_stage(lm, train_ex, files[0], max_new_tokens=gen.max_new_tokens,
                               batch_size=gen.batch_size, seed=config.seed)
    test_gen = generate_stage(lm, test_ex, files[1], max_new_tokens=gen.max_new_tokens,
                              batch_size=gen.batch_size, samples=gen.samples, temperature=gen.temperature,
                              seed=config.seed)
    return DatasetRecords(ds.key, grade_stage(train_gen, train_ex, d / "train.records.jsonl"),
                          grade_stage(test_gen, test_ex, d / "test.records.jsonl"))


def refresh_stamp(stamp: Path, settings: dict[str, Any], outputs: Sequence[Path]) -> None:
    """Delete ``outputs`` (and their partial files) when they were made with other ``settings``.

    The stamp records the settings that made the outputs, so a changed
    setting redoes exactly the stage it affects and nothing else.
    """
    text = json.dumps(settings, sort_keys=True, default=str)
    if stamp.exists() and not _stamp_is(stamp, text):
        stale = [p for p in outputs if p.exists() or p.with_name(p.name + ".partial").exists()]
        if stale:
            log.warning("%s: settings changed; redoing %s", stamp.parent, ", ".join(p.name for p in stale))
        for p in outputs:
            p.unlink(missing_ok=True)
            p.with_name(p.name + ".partial").unlink(missing_ok=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, text)


def check_methods(methods: Sequence[str]) -> None:
    """Fail early, naming the method, when a listed method does not exist."""
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
        # Defaults are left out so that a new option whose default keeps the old behaviour reuses artifacts.
        fingerprint = _fingerprint(config.model, train_config.model_dump(exclude_defaults=True),
                                   _record_key(records, graded=True))
        stamp = out / "trained-from.txt"
        if (out / "certa.json").exists() and _stamp_is(stamp, fingerprint):
            log.info("reusing trained %s at %s", method, out)
        else:
            _start_or_resume(out, fingerprint)
            train_method(method, load_model(config.model), records, train_config, out, resume=True)
            atomic_write_text(stamp, fingerprint)
        artifacts[method] = out
    return artifacts


def _start_or_resume(out: Path, fingerprint: str) -> None:
    """Keep checkpoints only when they belong to this very training; otherwise start it afresh.

    A training interrupted under the same fingerprint resumes from its last
    checkpoint; checkpoints left by another config or other records (an
    earlier run, a copied directory) are deleted rather than resumed from.
    """
    import shutil

    from .training.trainer import CHECKPOINT_DIR, TRAIN_LOG

    marker = out / "training-for.txt"
    if _stamp_is(marker, fingerprint):
        return
    if (out / CHECKPOINT_DIR).exists():
        log.warning("%s: checkpoints are from another training config or data; starting afresh", out)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    (out / TRAIN_LOG).unlink(missing_ok=True)
    (out / "trained-from.txt").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, fingerprint)


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


def _stamp_is(stamp: Path, text: str) -> bool:
    return stamp.exists() and stamp.read_text(encoding="utf-8").strip() == text


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def load_records(path: str | Path) -> list[Record]:
    """Read graded records (``certa grade`` output)."""
    records = read_jsonl(path, Record)
    if not records:
        raise InputError(f"{path}: no records")
    return records
