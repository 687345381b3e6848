"""The study's training stage: each trained method's artifact, reused while nothing it was made from changed."""

from __future__ import annotations

import gc
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..methods.base import MethodSpec
from ..models import load_base_model
from ..records import Record, atomic_write_text
from ..training.config import TrainConfig
from ..training.restarts import keep_best, restart_configs, restart_dir, train_runs
from ..training.trainer import CHECKPOINT_DIR, TRAIN_LOG
from .config import RunConfig
from .stages import fingerprint, record_key, stamp_is

log = logging.getLogger(__name__)

TRAINED_FROM = "trained-from.txt"
TRAINING_FOR = "training-for.txt"


def trained_methods(methods: Sequence[str]) -> list[str]:
    """The base names of the methods that must be trained into an artifact, in order, once each."""
    names = [MethodSpec.parse(m).base for m in methods if MethodSpec.parse(m).trained]
    return list(dict.fromkeys(names))


def train_methods(config: RunConfig, records: Sequence[Record], root: Path,
                  tuned: Mapping[str, Mapping[str, Any]] | None = None,
                  ready: Mapping[str, Path] | None = None) -> dict[str, Path]:
    """Train every trained method the config lists on ``records``; reuse an artifact made the same way.

    ``tuned`` holds, per method, the values a tuning search chose (they override the config's);
    ``ready`` artifacts (the tuning's winners, trained on these very records) are used as they are.
    """
    artifacts: dict[str, Path] = {}
    for method in trained_methods(config.methods):
        if ready and method in ready:
            artifacts[method] = Path(ready[method])
            continue
        train_config = config.train_config(method, (tuned or {}).get(method))
        artifacts[method] = train_artifact(config, method, train_config, records, root / method)
    return artifacts


def train_artifact(config: RunConfig, method: str, train_config: TrainConfig, records: Sequence[Record],
                   out: Path) -> Path:
    """Train one artifact into ``out``, or reuse it while nothing it was made from changed.

    An artifact is reused while a fingerprint of the base model, the method's
    full resolved config and the graded records matches its ``trained-from.txt``.
    Training loads its own copy of the base model and frees it afterwards, so one
    training's added tokens and adapter never leak into another.
    """
    made_from = fingerprint(config.model, method, train_config.model_dump(), record_key(records, graded=True))
    if (out / "certa.json").exists() and stamp_is(out / TRAINED_FROM, made_from):
        log.info("reusing trained %s at %s", method, out)
        return out
    _start_or_resume(out, made_from)
    configs = restart_configs(train_config, records)
    if len(configs) > 1:  # each run is an artifact of its own, reused by its own fingerprint
        runs = train_runs(train_config, configs, lambda _, run_config: train_artifact(
            config, method, run_config, records, restart_dir(out, run_config)))
        keep_best(runs, out, skip=(TRAINED_FROM, TRAINING_FOR))
        atomic_write_text(out / TRAINED_FROM, made_from)
        return out
    lm = load_base_model(config.model)
    MethodSpec.parse(method).base_class.train(  # type: ignore[attr-defined]
        lm, records, train_config, out, resume=True, in_place=True)
    del lm
    gc.collect()
    atomic_write_text(out / TRAINED_FROM, made_from)
    return out


def _start_or_resume(out: Path, made_from: str) -> None:
    """Keep checkpoints only when they belong to this very training; otherwise start it afresh.

    A training interrupted under the same fingerprint resumes from its last
    checkpoint; checkpoints left by another config or other records (an
    earlier run, a copied directory) are deleted rather than resumed from.
    """
    marker = out / TRAINING_FOR
    if stamp_is(marker, made_from):
        return
    if (out / CHECKPOINT_DIR).exists():
        log.warning("%s: checkpoints are from another training config or data; starting afresh", out)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    (out / TRAIN_LOG).unlink(missing_ok=True)
    (out / TRAINED_FROM).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, made_from)
