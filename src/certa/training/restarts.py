"""Restarts: train a read-out several times from other seeds and keep the run the held-out answers prefer.

A read-out trained on a few hundred answers can stall on a plateau where it
reads every answer of a dataset at about one level: ConfTuner on the CPU study
did so in 1 of 3 seeds (docs/RESULTS.md), and its held-out Brier score (.221
against .194 and .196) showed it before any test answer was read. Early
stopping already scores each run on those held-out answers, so the same score
chooses among runs. Every run holds out the same answers (the first run's
split), so the scores compare like with like; their seeds are
:data:`RESTART_SEED_STRIDE` apart, so restarts of seeds 0, 1 and 2 (a seed
study) never share a run. The first run is exactly the single training of
``seed``.

Stall retries are restarts trained only when needed: after the ``restarts``
runs, another run is trained while the best so far has a held-out *Brier skill
score* (1 − its Brier score / that of the training accuracy as a constant)
below ``stall_skill``, up to ``stall_retries`` more. A run that
learned nothing but the base rate scores near 0 (the study's stalled ConfTuner
seeds .07 and .13, the one that learned .57), so a training that does not stall
costs one run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..models.artifact import ARTIFACT_FILE, read_artifact_info
from ..models.card import write_model_card
from ..records import atomic_write_text
from .config import TrainConfig
from .validation import split_validation

if TYPE_CHECKING:
    from ..records import Record

RESTART_SEED_STRIDE = 1000
"""Seeds of one training's restarts are ``seed + k * RESTART_SEED_STRIDE``."""

RESTARTS_DIR = "restarts"
"""Subdirectory of an artifact holding every run of its restarts, one ``seed-N`` directory each."""


_NEEDS_HELD_OUT = ("restarts need held-out answers: validation_fraction > 0 and at least 16 of them, "
                   "both right and wrong")


def restart_configs(config: TrainConfig, records: Sequence[Record] | None = None) -> list[TrainConfig]:
    """One single-run config per run that may train: seeds ``seed + k·stride``, each holding out the first run's split.

    The ``restarts`` runs come first, then the ``stall_retries`` ones (trained only
    while :func:`wants_another_run`). With ``records``, refuses (before anything
    trains) restarts over a split that holds out nothing to choose by, and drops
    the stall retries, which have nothing to measure a stall on.
    """
    held_out = records is None or bool(split_validation(records, config)[1])
    if config.restarts > 1 and not held_out:
        raise InputError(f"restarts: {config.restarts} runs but no held-out answers to choose among them "
                         f"({_NEEDS_HELD_OUT})")
    split = config.seed if config.validation_seed is None else config.validation_seed
    configs = []
    for k in range(config.restarts + (config.stall_retries if held_out else 0)):
        seed = config.seed + k * RESTART_SEED_STRIDE
        configs.append(config.model_copy(update={
            "seed": seed, "restarts": 1, "stall_retries": 0,
            "validation_seed": None if split == seed else split}))
    return configs


def wants_another_run(runs: Sequence[str | os.PathLike[str]], config: TrainConfig) -> bool:
    """Whether to train the next of :func:`restart_configs` after the finished ``runs``.

    Yes while fewer than ``restarts`` have run; after that, only while every run's
    held-out Brier skill score is below ``stall_skill`` (the stall retries).
    """
    if len(runs) < config.restarts:
        return True
    return max(brier_skill(run) for run in runs) < config.stall_skill


def restart_dir(out: str | os.PathLike[str], config: TrainConfig) -> Path:
    """Where the run of ``config`` (one of :func:`restart_configs`) is trained."""
    return Path(out) / RESTARTS_DIR / f"seed-{config.seed}"


def held_out_brier(run: str | os.PathLike[str]) -> float:
    """A trained run's Brier score on its held-out answers at the step early stopping kept."""
    info = read_artifact_info(run)
    value = (info.get("validation") or {}).get("brier")
    if value is None or not math.isfinite(float(value)):
        raise InputError(f"{run}: no held-out Brier score to choose a restart by ({_NEEDS_HELD_OUT})")
    return float(value)


def train_runs(config: TrainConfig, configs: Sequence[TrainConfig],
               train_run: Callable[[int, TrainConfig], Path]) -> list[Path]:
    """Train ``configs`` (from :func:`restart_configs`) in order with ``train_run(k, run_config)``, each only
    while :func:`wants_another_run` after the ones before; the trained runs' directories."""
    runs: list[Path] = []
    for k, run_config in enumerate(configs):
        if runs and not wants_another_run(runs, config):
            break
        runs.append(Path(train_run(k, run_config)))
    return runs


def brier_skill(run: str | os.PathLike[str]) -> float:
    """A trained run's held-out Brier skill score: 1 − its Brier score / that of the accuracy as a constant.

    0 for a run no better than the base rate, 1 for a perfect one. The constant's
    Brier score is accuracy·(1 − accuracy), with the training accuracy the
    artifact records (the held-out share is stratified to match it).
    """
    accuracy = (read_artifact_info(run).get("validation") or {}).get("accuracy")
    if accuracy is None:
        raise InputError(f"{run}: no held-out accuracy to measure a stall by ({_NEEDS_HELD_OUT})")
    constant = float(accuracy) * (1.0 - float(accuracy))
    return 1.0 - held_out_brier(run) / constant if constant > 0 else 0.0


def keep_best(runs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
              skip: Collection[str] = ()) -> Path:
    """Copy the run with the lowest held-out Brier score (the earliest on a tie) into ``out`` as the artifact.

    The run's top-level files are copied (not ``skip`` ones); its ``certa.json``
    is written last, with every run's seed and score under ``restarts``, so
    ``out`` is loadable only once the copy is whole.
    """
    runs = [Path(run) for run in runs]
    if not runs:
        raise InputError("keep_best: no runs to choose from")
    scores = [held_out_brier(run) for run in runs]
    best = min(range(len(runs)), key=lambda i: (scores[i], i))
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    (target / ARTIFACT_FILE).unlink(missing_ok=True)
    for file in sorted(runs[best].iterdir()):
        if file.is_file() and file.name not in skip and file.name != ARTIFACT_FILE:
            partial = target / f".{file.name}.partial"
            shutil.copyfile(file, partial)
            os.replace(partial, target / file.name)
    info: dict[str, Any] = read_artifact_info(runs[best])
    info["restarts"] = {
        "criterion": "held-out Brier score at the step early stopping kept",
        "kept_seed": _seed(runs[best]),
        "runs": [{"seed": _seed(run), "held_out_brier": score, "held_out_brier_skill": brier_skill(run),
                  "path": os.path.relpath(run, target)}
                 for run, score in zip(runs, scores, strict=True)],
    }
    text = json.dumps(info, indent=2, default=str) + "\n"
    write_model_card(target, json.loads(text))
    atomic_write_text(target / ARTIFACT_FILE, text)
    return target


def _seed(run: Path) -> int:
    return int((read_artifact_info(run).get("train_config") or {}).get("seed", 0))
