"""The study's tuning stage: each trained method's hyper-parameters chosen on calibration-split answers.

For every combination of the values a ``tuning.grids.<method>`` section lists,
an artifact is trained on the pooled train answers (early stopping and the
final recalibration use a held-out share of those, as always) and judged on the
pooled *calibration*-split answers, a split no method trains on and the test
numbers never see. The combination with the best criterion (Brier by default)
is what the study then trains with; every row of the search is kept in
``tuning.json`` and printed in the write-up, and the chosen values are stored in
the final artifact's ``certa.json``.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics
from ..methods.base import get_method
from ..models import load_model
from ..models.artifact import artifact_id
from ..records import Record, atomic_write_text
from ..training.trainer import training_seconds
from .config import RunConfig
from .stages import fingerprint, record_key
from .training import train_artifact

log = logging.getLogger(__name__)

SCORES_FILE = "calibration.scores.json"
"""In each grid point's folder: its confidences on the calibration answers, reused while nothing changed."""


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of a grid's values, in a stable order."""
    names = sorted(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]


def run_tuning(config: RunConfig, train: Sequence[Record], calibration: Mapping[str, Sequence[Record]], root: Path
               ) -> dict[str, dict[str, Any]]:
    """Search each grid; return (and write to ``root/tuning.json``) per method its rows and chosen values.

    ``calibration`` maps each dataset to its calibration-split answers: the criterion is taken on all of them
    pooled, and each row also reports every dataset's own Brier score, AUROC and spread of confidences, which
    show a read-out that ranks one dataset and reads another at one level (a pooled score cannot).
    """
    assert config.tuning is not None
    pooled = [r for records in calibration.values() for r in records]
    if not pooled:
        raise ValueError("tuning needs calibration-split answers; none were generated")
    results: dict[str, dict[str, Any]] = {}
    for method, grid in config.tuning.grids.items():
        rows = [_try(config, method, point, train, calibration, root / method) for point in grid_points(grid)]
        best = min(rows, key=lambda row: row[config.tuning.criterion])
        results[method] = {"grid": grid, "criterion": config.tuning.criterion, "rows": rows,
                           "chosen": best["values"], "artifact": best["artifact"],
                           "calibration_answers": len(pooled)}
        _note_choice(Path(best["artifact"]), {k: v for k, v in results[method].items() if k != "rows"})
        log.info("tuning %s: chose %s (%s %.4f)", method, best["values"], config.tuning.criterion,
                 best[config.tuning.criterion])
    atomic_write_text(root / "tuning.json", json.dumps(results, indent=1, default=str))
    return results


def _try(config: RunConfig, method: str, values: dict[str, Any], train: Sequence[Record],
         calibration: Mapping[str, Sequence[Record]], root: Path) -> dict[str, Any]:
    train_config = config.train_config(method, values)
    out = root / fingerprint(values)[:12]
    artifact = train_artifact(config, method, train_config, train, out)
    pooled = [r for records in calibration.values() for r in records]
    scores, scoring = _calibration_scores(method, artifact, pooled)
    correct = np.array([r.correct for r in pooled])
    info = json.loads((artifact / "certa.json").read_text(encoding="utf-8"))
    ends = np.cumsum([len(records) for records in calibration.values()])
    by_dataset = {name: _judged(scores[end - len(records):end], correct[end - len(records):end])
                  for (name, records), end in zip(calibration.items(), ends, strict=True) if records}
    return {"values": values, "artifact": str(out), "brier": metrics.brier(scores, correct),
            "nll": metrics.nll(scores, correct), "ece": metrics.ece(scores, correct, n_bins=config.evaluation.n_bins),
            "auroc": metrics.auroc(scores, correct), "by_dataset": by_dataset, "steps": info.get("steps"),
            "best_step": (info.get("validation") or {}).get("best_step"),
            "seconds": {"training": training_seconds(artifact), "scoring": scoring}}


def _calibration_scores(method: str, artifact: Path, pooled: Sequence[Record]) -> tuple[np.ndarray, float]:
    """The grid point's confidences on the calibration answers and the seconds they took, kept in the
    artifact's folder while the artifact and the answers are the same (a re-run rescored every point)."""
    cache = artifact / SCORES_FILE
    key = fingerprint(method, artifact_id(artifact), record_key(pooled, graded=False))
    try:
        kept = json.loads(cache.read_text(encoding="utf-8"))
        if kept["key"] == key:
            return np.asarray(kept["scores"], dtype=float), float(kept["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing or damaged: score again
    lm = load_model(artifact)
    start = time.perf_counter()
    scores = np.asarray(get_method(method, model=lm)(pooled), dtype=float)
    seconds = time.perf_counter() - start
    del lm
    gc.collect()
    atomic_write_text(cache, json.dumps({"key": key, "scores": scores.tolist(), "seconds": seconds}))
    return scores, seconds


def _judged(scores: np.ndarray, correct: np.ndarray) -> dict[str, float | int]:
    """One dataset's calibration answers: how many, their Brier score and AUROC, and the confidences' spread."""
    return {"answers": int(correct.size), "brier": metrics.brier(scores, correct),
            "auroc": metrics.auroc(scores, correct), "sd": float(np.std(scores))}


def _note_choice(artifact: Path, tuning: dict[str, Any]) -> None:
    """Record in the chosen artifact's ``certa.json`` how its settings were chosen (not part of its id)."""
    file = artifact / "certa.json"
    info = json.loads(file.read_text(encoding="utf-8"))
    if info.get("tuning") != tuning:
        atomic_write_text(file, json.dumps({**info, "tuning": tuning}, indent=2, default=str))
