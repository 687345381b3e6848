"""The study ``certa run`` and ``certa demo`` carry out, stage by stage, every stage cached.

1. **Answers** — each dataset's train and test questions answered and graded
   (``pipeline.prepare_dataset``).
2. **Training** — GrACE and ConfTuner trained on the pooled train answers.
3. **Scoring and evaluation** — every method on every test set; metrics per
   dataset and pooled.
4. **Cross-domain** (optional) — learned methods trained on one dataset alone
   and evaluated on each of the others.
5. **Test-time scaling** (optional) — sampled answers with the confidence read
   while sampling; accuracy against samples for every voting strategy.
6. **Costs** — wall time of each method relative to plain generation, from
   the timings each cached stage kept.
7. **Publishing** (optional) — the Markdown write-up (``certa.results``).

Layout of ``out/`` (beyond ``pipeline``'s)::

    cross_domain/trained-on-<A>/<method>   artifacts trained on A alone
    cross_domain/<A>-to-<B>.scores.jsonl   their scores on B's test answers
    cross_domain.json                      metrics of every (method, A, B)
    scaling/generations.jsonl, records.jsonl, scaling.json, scaling.png
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import RunConfig, ScalingSettings
from .errors import CertaError
from .pipeline import (
    TRAINED_METHODS,
    DatasetRecords,
    MethodScores,
    cached_score_stage,
    check_methods,
    generate_stage,
    grade_stage,
    needs_fit,
    prepare_dataset,
    refresh_stamp,
    train_methods,
)
from .records import Record, atomic_write_text
from .training.trainer import training_seconds

if TYPE_CHECKING:
    from .evaluation import EvaluationResult
    from .models import LoadedModel

log = logging.getLogger(__name__)

#: Metrics carried into the cross-domain table.
CROSS_DOMAIN_METRICS = ("ece", "brier", "auroc")


@dataclass
class StudyResult:
    """What ``run_study`` produced: the pooled evaluation and where everything lies."""

    out: Path
    evaluation: EvaluationResult
    by_dataset: dict[str, EvaluationResult]
    costs: dict[str, dict[str, Any]]
    artifacts: dict[str, Path]
    cross_domain: dict[str, Any] = field(default_factory=dict)
    scaling: dict[str, Any] = field(default_factory=dict)
    markdown: Path | None = None


def run_study(config: RunConfig, *, progress: bool = True) -> StudyResult:
    """Run every stage ``config`` asks for; finished stages are reused from ``config.out``."""
    from .evaluation import evaluate
    from .models import load_model

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", config.model_dump_json(indent=2))
    check_methods(config.methods)
    started = time.perf_counter()

    lm = load_model(config.model)
    data = {ds.key: prepare_dataset(config, lm, ds) for ds in config.datasets}
    pooled_train = [r for d in data.values() for r in d.train]
    artifacts = train_methods(config, pooled_train, out / "artifacts")
    models = {name: load_model(str(path)) for name, path in artifacts.items()}
    provenance = _provenance(config, artifacts)

    scored: dict[str, dict[str, MethodScores]] = {}
    per_dataset: dict[str, EvaluationResult] = {}
    for name, d in data.items():
        scored[name] = cached_score_stage(config.methods, d.test, out / name / "scores.jsonl",
                                          fit_records=pooled_train, models=models, default_model=lm,
                                          provenance=provenance)
        per_dataset[name] = _evaluate(config, d.test, scored[name])

    cross = run_cross_domain(config, lm, data, out) if config.cross_domain else {}
    scaling = run_scaling(config, data[config.dataset(config.scaling.dataset).key], artifacts, out) if config.scaling else {}
    costs = method_costs(config.methods, data, scored, artifacts, scaling)

    extra = {
        "config": json.loads(config.model_dump_json()),
        "datasets": {name: {"train": len(d.train), "test": len(d.test)} for name, d in data.items()},
        "costs": costs,
        "generation_seconds": generation_seconds(data),
        "compute_seconds": compute_seconds(data, scored, artifacts, cross, scaling),
        "diagnostics": {m: {name: scored[name][m].diagnostics for name in data} for m in config.methods},
        "by_dataset": {name: res.to_dict() for name, res in per_dataset.items()},
        "run_seconds": time.perf_counter() - started,
        "hardware": _hardware(lm),
    }
    pooled_records = [r for d in data.values() for r in d.test]
    evaluation = evaluate(
        pooled_records, {m: np.concatenate([scored[name][m].scores for name in data]) for m in config.methods},
        n_bins=config.evaluation.n_bins, n_bootstrap=config.evaluation.n_bootstrap, seed=config.seed, extra=extra,
    )
    evaluation.save(out)
    evaluation.to_html(out / "report.html", title=f"certa — {config.model} on {', '.join(per_dataset)}")
    result = StudyResult(out, evaluation, per_dataset, costs, artifacts, cross, scaling)
    if config.publish:
        from .results import write_results

        result.markdown = write_results(config, result)
    return result


def _hardware(lm: LoadedModel) -> dict[str, Any]:
    import os

    import torch

    name = torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else "CPU"
    return {"device": name, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def _evaluate(config: RunConfig, records: Sequence[Record], scored: dict[str, MethodScores]) -> EvaluationResult:
    from .evaluation import evaluate

    return evaluate(records, {m: s.scores for m, s in scored.items()}, n_bins=config.evaluation.n_bins,
                    n_bootstrap=config.evaluation.n_bootstrap, seed=config.seed)


def _provenance(config: RunConfig, artifacts: dict[str, Path]) -> dict[str, str]:
    """What each method's scores depend on besides the records: the model, or the artifact itself."""
    out = {m.split("+", 1)[0]: config.model for m in config.methods}
    for name, path in artifacts.items():
        out[name] = artifact_identity(path)
    return out


def artifact_identity(path: Path) -> str:
    """A digest of a trained artifact's weights and metadata: scores cached for it are valid while it holds."""
    import hashlib

    digest = hashlib.sha1()
    for name in ("certa.json", "adapter_model.safetensors", "trained-from.txt"):
        file = path / name
        if file.exists():
            digest.update(name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


# ── cross-domain ──────────────────────────────────────────────────────────────────────────────


def learned_methods(methods: Sequence[str]) -> list[str]:
    """The methods that learn from graded answers (trained or fitted): those a domain shift can hurt."""
    return [m for m in methods if m in TRAINED_METHODS or needs_fit(m)]


def run_cross_domain(config: RunConfig, lm: LoadedModel, data: dict[str, DatasetRecords], out: Path
                     ) -> dict[str, Any]:
    """Train on each listed dataset alone, evaluate on every listed dataset's test answers.

    Returns (and writes to ``out/cross_domain.json``)
    ``{"methods": [...], "datasets": [...], "results": [{"method", "train", "test", metric: {"value", "ci"}}]}``;
    rows with ``train == test`` are the in-domain reference.
    """
    from .models import load_model

    assert config.cross_domain is not None
    names = [config.dataset(name).key for name in config.cross_domain.datasets]
    methods = learned_methods(config.methods)
    root = out / "cross_domain"
    rows: list[dict[str, Any]] = []
    seconds = {"training": 0.0, "scoring": 0.0}
    for source in names:
        artifacts = train_methods(config, data[source].train, root / f"trained-on-{source}")
        seconds["training"] += sum(training_seconds(path) for path in artifacts.values())
        models = {name: load_model(str(path)) for name, path in artifacts.items()}
        for target in names:
            scored = cached_score_stage(methods, data[target].test, root / f"{source}-to-{target}.scores.jsonl",
                                        fit_records=data[source].train, models=models, default_model=lm,
                                        provenance=_provenance(config, artifacts))
            seconds["scoring"] += sum(x.seconds + x.fit_seconds for x in scored.values())
            result = _evaluate(config, data[target].test, scored)
            for method in methods:
                estimates = result.methods[method]
                rows.append({"method": method, "train": source, "test": target,
                             **{k: estimates[k].to_dict() for k in CROSS_DOMAIN_METRICS}})
    summary = {"methods": methods, "datasets": list(names), "results": rows, "seconds": seconds}
    atomic_write_text(out / "cross_domain.json", json.dumps(summary, indent=1))
    return summary


# ── test-time scaling ─────────────────────────────────────────────────────────────────────────


def run_scaling(config: RunConfig, data: DatasetRecords, artifacts: dict[str, Path], out: Path) -> dict[str, Any]:
    """Sample ``budget`` answers per test question with the trained confidence read while sampling.

    The answering model is the base model (a certa artifact answers with its
    adapter off), so the samples are the base model's; the artifact's
    real-time hook adds a confidence to each. Curves run over budgets
    1, 2, 4, … up to ``budget``; GrACE-ES is also swept over ``tau_sweep``
    at the full budget (every point is reported, none is picked).
    """
    from .data import load_dataset
    from .models import load_model
    from .scaling import plot_scaling, run_strategies, scaling_curves

    settings: ScalingSettings = config.scaling  # type: ignore[assignment]
    artifact = artifacts.get(settings.confidence)
    if artifact is None:
        raise CertaError(f"scaling reads {settings.confidence!r} confidences, but no such artifact was trained")
    root = out / "scaling"
    generations = root / "generations.jsonl"
    stamp = {"artifact": artifact_identity(artifact), "seed": config.seed,
             "max_new_tokens": config.generation.max_new_tokens,
             **settings.model_dump(include={"test_limit", "budget", "temperature"})}
    refresh_stamp(root / "generation-settings.json", stamp, [generations])
    source = config.dataset(data.name).name
    examples = load_dataset(source, split="test", limit=settings.test_limit, seed=config.seed)
    lm = load_model(str(artifact))
    gens = generate_stage(lm, examples, generations, max_new_tokens=config.generation.max_new_tokens,
                          batch_size=config.generation.batch_size, samples=settings.budget,
                          temperature=settings.temperature, hidden_states=False, seed=config.seed)
    records = grade_stage(gens, examples, root / "records.jsonl")

    budgets = sorted({b for b in (1, 2, 4, 8, 16, 32, 64) if b < settings.budget} | {settings.budget})
    options = {"confidence": settings.confidence, "tau": settings.tau}
    curves = scaling_curves(records, budgets, **options)
    sweep = [{"tau": tau, **run_strategies(records, settings.budget, strategies=["grace_es"],
                                           confidence=settings.confidence, tau=tau)["grace_es"]}
             for tau in settings.tau_sweep]
    at_budget = run_strategies(records, settings.budget, per_question=True, **options)
    plot_curves = {**curves, f"grace_es (τ sweep at B={settings.budget})":
                   [{"budget": settings.budget, **{k: p[k] for k in ("accuracy", "mean_samples")}} for p in sweep]}
    plot_scaling(plot_curves, root / "scaling.png")
    seconds = _phase_seconds(records)
    summary = {
        **settings.model_dump(), "dataset": data.name, "questions": len(records),
        "greedy_accuracy": float(np.mean([r.correct for r in records])),
        "curves": curves, "tau_sweep": sweep,
        "correct_at_budget": {name: r["correct"] for name, r in at_budget.items()},
        "realtime_confidence_seconds": seconds.get("confidence", 0.0),
        "answer_seconds": seconds.get("answer", 0.0), "sample_seconds": seconds.get("samples", 0.0),
        "plot": str(root / "scaling.png"),
    }
    atomic_write_text(root / "scaling.json", json.dumps(summary, indent=1))
    return summary


# ── costs ─────────────────────────────────────────────────────────────────────────────────────


def _phase_seconds(records: Sequence[Record]) -> dict[str, float]:
    """Generation wall time per phase (answer, confidence, samples), summed from ``meta["seconds"]``."""
    totals: dict[str, float] = {}
    for r in records:
        for phase, seconds in (r.meta.get("seconds") or {}).items():
            totals[phase] = totals.get(phase, 0.0) + float(seconds)
    return totals


def method_costs(methods: Sequence[str], data: dict[str, DatasetRecords],
                 scored: dict[str, dict[str, MethodScores]], artifacts: dict[str, Path],
                 scaling: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method: its extra work, and its wall time on the test answers relative to plain generation.

    Plain generation is the greedy answers' decoding time. A method that reads
    samples is charged their sampling time; a fitted method's fit time and a
    trained method's training time are reported beside it, not in the ratio.
    GrACE also gets the ratio of its confidence read in real time while
    decoding, measured in the scaling stage.
    """
    phases = [_phase_seconds(d.test) for d in data.values()]
    answer = sum(p.get("answer", 0.0) for p in phases)
    samples = sum(p.get("samples", 0.0) for p in phases)
    n = sum(len(d.test) for d in data.values())
    costs: dict[str, dict[str, Any]] = {}
    for m in methods:
        runs = [scored[name][m] for name in data]
        seconds = sum(s.seconds for s in runs) + (samples if "SAMPLES" in runs[0].needs else 0.0)
        entry: dict[str, Any] = {
            "cost": runs[0].cost, "needs": runs[0].needs, "seconds": seconds,
            "ms_per_answer": 1000 * seconds / n if n else float("nan"),
            "relative_to_generation": seconds / answer if answer else float("nan"),
            "fit_seconds": max(s.fit_seconds for s in runs),
        }
        if m in artifacts:
            entry["training_seconds"] = training_seconds(artifacts[m])
        if m == scaling.get("confidence") and scaling.get("answer_seconds"):
            entry["realtime_relative_to_generation"] = (
                scaling["realtime_confidence_seconds"] / scaling["answer_seconds"])
        costs[m] = entry
    return costs


def generation_seconds(data: dict[str, DatasetRecords]) -> dict[str, dict[str, float]]:
    """Per dataset, the test answers' generation time by phase (answer, samples)."""
    return {name: _phase_seconds(d.test) for name, d in data.items()}


def compute_seconds(data: dict[str, DatasetRecords], scored: dict[str, dict[str, MethodScores]],
                    artifacts: dict[str, Path], cross: dict[str, Any], scaling: dict[str, Any]
                    ) -> dict[str, float]:
    """The compute each stage took when it ran, from the timings its cache kept.

    This is what a run from scratch costs (less model loading), however many
    cached re-runs came since.
    """
    stages: dict[str, float] = {}
    for name, d in data.items():
        stages[f"answers: {name}"] = sum(_phase_seconds(d.train).values()) + sum(_phase_seconds(d.test).values())
    for name, path in artifacts.items():
        stages[f"training: {name}"] = training_seconds(path)
    stages["scoring and fitting: every method"] = sum(
        s.seconds + s.fit_seconds for per_dataset in scored.values() for s in per_dataset.values())
    if cross:
        stages["cross-domain: training"] = cross["seconds"]["training"]
        stages["cross-domain: scoring and fitting"] = cross["seconds"]["scoring"]
    if scaling:
        stages["scaling: sampled answers with confidence"] = (
            scaling["answer_seconds"] + scaling["sample_seconds"] + scaling["realtime_confidence_seconds"])
    return stages
