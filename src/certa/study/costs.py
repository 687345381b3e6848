"""What each method cost in a study, from the timings every cached stage kept.

Generation splits each batch's wall time into answer, confidence and samples
(``Generation.meta["seconds"]``), the trainer logs seconds per step and the
score cache keeps scoring and fit time; the tables here add them up, so a
cached re-run reports what a run from scratch costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..methods.runner import MethodScores
from ..records import Record
from ..training.trainer import training_seconds
from .stages import DatasetRecords


def phase_seconds(records: Sequence[Record]) -> dict[str, float]:
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
    phases = [phase_seconds(d.test) for d in data.values()]
    answer = sum(p.get("answer", 0.0) for p in phases)
    samples = sum(p.get("samples", 0.0) for p in phases)
    n = sum(len(d.test) for d in data.values())
    costs: dict[str, dict[str, Any]] = {}
    for m in methods:
        runs = [scored[name][m] for name in data]
        seconds = sum(s.seconds for s in runs) + (samples if "samples" in runs[0].needs else 0.0)
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
    return {name: phase_seconds(d.test) for name, d in data.items()}


def compute_seconds(data: dict[str, DatasetRecords], scored: dict[str, dict[str, MethodScores]],
                    artifacts: dict[str, Path], cross: dict[str, Any], scaling: dict[str, Any],
                    seeds: dict[str, Any] | None = None, curve: dict[str, Any] | None = None,
                    tuning: dict[str, Any] | None = None) -> dict[str, float]:
    """The compute each stage took when it ran, from the timings its cache kept.

    This is what a run from scratch costs (less model loading), however many
    cached re-runs came since.
    """
    stages: dict[str, float] = {}
    for name, d in data.items():
        stages[f"answers: {name}"] = sum(phase_seconds(d.train).values()) + sum(phase_seconds(d.test).values())
    for name, path in artifacts.items():
        stages[f"training: {name}"] = training_seconds(path)
    stages["scoring and fitting: every method"] = sum(
        s.total_seconds for per_dataset in scored.values() for s in per_dataset.values())
    if cross:
        stages["cross-domain: training"] = cross["seconds"]["training"]
        stages["cross-domain: scoring and fitting"] = cross["seconds"]["scoring"]
    for label, summary in (("further seeds", seeds), ("learning curve", curve)):
        if summary:
            stages[f"{label}: training"] = summary["seconds"]["training"]
            stages[f"{label}: scoring"] = summary["seconds"]["scoring"]
    if tuning:
        # The chosen combination's training is the study's own artifact, counted above under "training".
        rows = [(row, row["values"] == t["chosen"]) for t in tuning.values() for row in t["rows"]]
        stages["tuning: calibration answers"] = sum(sum(phase_seconds(d.calibration).values()) for d in data.values())
        stages["tuning: training the other combinations"] = sum(
            row["seconds"]["training"] for row, chosen in rows if not chosen)
        stages["tuning: scoring calibration answers"] = sum(row["seconds"]["scoring"] for row, _ in rows)
    if scaling:
        stages["scaling: sampled answers with confidence"] = (
            scaling["answer_seconds"] + scaling["sample_seconds"] + scaling["realtime_confidence_seconds"])
    return stages
