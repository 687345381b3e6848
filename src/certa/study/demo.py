"""The configuration of ``certa demo``: the bundled default model on bundled data.

Sizes are chosen so that ``--quick`` finishes within a few minutes on two CPU
cores and the full demo within about fifteen.
"""

from __future__ import annotations

from pathlib import Path

from .config import DEFAULT_BASELINES, DatasetSettings, EvaluationSettings, GenerationSettings, RunConfig

DEMO_DATASETS = ("arithmetic", "triviaqa")


def demo_config(out: Path, *, quick: bool = False, model: str = "default") -> RunConfig:
    """The demo study: every baseline plus GrACE and ConfTuner, trained on the train split."""
    train_limit, test_limit = (32, 32) if quick else (200, 100)
    training = {"grace": {"epochs": 1.0 if quick else 2.0, "batch_size": 8},
                "conftuner": {"epochs": 1.0, "batch_size": 8}}
    return RunConfig(
        model=model,
        out=out,
        datasets=[DatasetSettings(name=d, train_limit=train_limit, test_limit=test_limit) for d in DEMO_DATASETS],
        methods=[*DEFAULT_BASELINES, "grace", "conftuner"],
        generation=GenerationSettings(max_new_tokens=24 if quick else 40, batch_size=16, samples=2 if quick else 4),
        training=training,
        evaluation=EvaluationSettings(n_bins=10, n_bootstrap=200 if quick else 1000),
    )
