"""The configuration of ``certa demo``: the bundled default model on bundled data.

Sizes are chosen so that ``--quick`` finishes in about three minutes on an idle
two-core CPU (after the one-time model conversion; docs/benchmarks.md has the
measured stages) and the full demo within about twenty to forty.
"""

from __future__ import annotations

from pathlib import Path

from .config import DEFAULT_BASELINES, DatasetSettings, EvaluationSettings, GenerationSettings, RunConfig

#: Datasets on which the default model is right about half the time, so every method has signal to find.
DEMO_DATASETS = ("capitals-phrased", "arithmetic-easy")


def demo_config(out: Path, *, quick: bool = False, model: str = "default") -> RunConfig:
    """The demo study: every baseline plus GrACE and ConfTuner, trained on the train split."""
    train_limit, test_limit = (64, 40) if quick else (300, 150)
    # The quick demo trains as every study does (a held-out share chooses the stopping step and the final
    # map, which falls back to the base rate where the held-out answers show no signal), for 4 epochs at most,
    # and trains ConfTuner once (no stall retries): a quick look, not the best artifact.
    training: dict[str, dict[str, float]] = {name: {"epochs": 4.0, "batch_size": 16} if quick else {"batch_size": 16}
                                             for name in ("grace", "conftuner")}
    if quick:
        training["conftuner"]["stall_retries"] = 0
    return RunConfig(
        model=model,
        out=out,
        datasets=[DatasetSettings(name=d, train_limit=train_limit, test_limit=test_limit) for d in DEMO_DATASETS],
        methods=[*DEFAULT_BASELINES, "grace", "conftuner"],
        generation=GenerationSettings(max_new_tokens=16 if quick else 32, batch_size=16, samples=2 if quick else 4),
        training=training,
        evaluation=EvaluationSettings(n_bins=10, n_bootstrap=200 if quick else 1000),
    )
