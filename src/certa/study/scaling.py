"""The study's test-time-scaling stage: sampled answers with the trained confidence read while sampling.

The answering model is the base model (a certa artifact answers with its
adapters off), so the samples are the base model's; the artifact's real-time
hook adds a confidence to each. GrACE-ES's threshold τ is chosen on
calibration-split questions sampled the same way (the fewest mean samples
that match SC's accuracy there, else the most accurate τ) and only then run
on the test questions; the test-split sweep over τ is reported for reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import load_dataset
from ..records import Record, atomic_write_text
from ..uses.voting import budget_ladder, plot_scaling, run_strategies, scaling_curves
from .config import RunConfig, ScalingSettings
from .costs import phase_seconds
from .stages import Evidence, generate_stage, grade_stage, refresh_stamp

if TYPE_CHECKING:
    from ..models import LoadedModel


def run_scaling(config: RunConfig, dataset: str, lm: LoadedModel, out: Path) -> dict[str, Any]:
    """Sample ``budget`` answers per calibration and test question with ``lm``'s confidence (its artifact view)."""
    settings: ScalingSettings = config.scaling  # type: ignore[assignment]
    root = out / "scaling"
    records = {split: _sampled(config, settings, dataset, lm, root, split)
               for split in ("calibration", "test")}
    tau, calibration_sweep = choose_tau(records["calibration"], settings)
    test = records["test"]
    options = {"confidence": settings.confidence, "tau": tau}
    curves = scaling_curves(test, budget_ladder(settings.budget), **options)
    test_sweep = _sweep(test, settings)
    at_budget = run_strategies(test, settings.budget, per_question=True, **options)
    plot_curves = {**curves, f"grace_es (τ sweep at B={settings.budget})":
                   [{"budget": settings.budget, **{k: p[k] for k in ("accuracy", "mean_samples")}} for p in test_sweep]}
    plot_scaling(plot_curves, root / "scaling.png")
    seconds = phase_seconds(test)
    summary = {
        **settings.model_dump(), "dataset": dataset, "questions": len(test),
        "calibration_questions": len(records["calibration"]), "tau": tau,
        "greedy_accuracy": float(np.mean([r.correct for r in test])),
        "curves": curves, "tau_sweep": test_sweep, "calibration_tau_sweep": calibration_sweep,
        "correct_at_budget": {name: r["correct"] for name, r in at_budget.items()},
        "realtime_confidence_seconds": seconds.get("confidence", 0.0),
        "answer_seconds": seconds.get("answer", 0.0), "sample_seconds": seconds.get("samples", 0.0),
        "plot": str(root / "scaling.png"),
    }
    atomic_write_text(root / "scaling.json", json.dumps(summary, indent=1))
    return summary


def choose_tau(records: list[Record], settings: ScalingSettings) -> tuple[float, list[dict[str, Any]]]:
    """τ for GrACE-ES from calibration questions: the fewest mean samples among the τ whose accuracy
    matches SC at the full budget, else the most accurate τ (ties: fewer samples)."""
    sweep = _sweep(records, settings)
    sc = run_strategies(records, settings.budget, strategies=["sc"], confidence=settings.confidence)["sc"]["accuracy"]
    matching = [p for p in sweep if p["accuracy"] >= sc]
    best = (min(matching, key=lambda p: p["mean_samples"]) if matching
            else max(sweep, key=lambda p: (p["accuracy"], -p["mean_samples"])))
    return float(best["tau"]), sweep


def _sweep(records: list[Record], settings: ScalingSettings) -> list[dict[str, Any]]:
    return [{"tau": tau, **run_strategies(records, settings.budget, strategies=["grace_es"],
                                          confidence=settings.confidence, tau=tau)["grace_es"]}
            for tau in settings.tau_sweep]


def _sampled(config: RunConfig, settings: ScalingSettings, dataset: str, lm: LoadedModel, root: Path,
             split: str) -> list[Record]:
    generations = root / f"{split}.generations.jsonl"
    limit = settings.test_limit if split == "test" else settings.calibration_limit
    stamp = {"artifact": lm.artifact_id, "seed": config.seed, "limit": limit,
             "max_new_tokens": config.generation.max_new_tokens,
             **settings.model_dump(include={"budget", "temperature"})}
    refresh_stamp(root / f"{split}.generation-settings.json", stamp, [generations])
    examples = load_dataset(config.dataset(dataset).name, split=split, limit=limit, seed=config.seed)
    gens = generate_stage(lm, examples, generations, config, Evidence(), hooks=None, samples=settings.budget,
                          temperature=settings.temperature)
    return grade_stage(gens, examples, root / f"{split}.records.jsonl")
