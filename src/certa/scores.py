"""Score files: one row per answer, its correctness and every method's confidence.

``certa score`` writes them, ``certa evaluate``, ``report``, ``abstain``,
``self-correct`` and ``cascade`` read them, and a study caches its scores in
the same format: this module is their one reader and writer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .records import Record, iter_jsonl, write_jsonl


@dataclass
class ScoreTable:
    """Answers (``ids``, ``correct``) and each method's confidences, aligned by position."""

    ids: list[str]
    correct: np.ndarray
    scores: dict[str, np.ndarray]

    def column(self, method: str, ids: Sequence[str] | None = None, where: str = "scores") -> np.ndarray:
        """One method's confidences, in the order of ``ids`` when given; errors name what is missing."""
        if method not in self.scores:
            raise InputError(f"{where}: no scores for method {method!r} (found: {', '.join(sorted(self.scores))})")
        values = self.scores[method]
        if ids is None:
            return values
        index = {answer_id: i for i, answer_id in enumerate(self.ids)}
        missing = [i for i in ids if i not in index]
        if missing:
            raise InputError(f"{where}: no score for answer {missing[0]!r} ({len(missing)} missing)")
        return values[[index[i] for i in ids]]


def write_scores(path: str | os.PathLike[str], records: Sequence[Record],
                 scores: Mapping[str, Sequence[float] | np.ndarray]) -> Path:
    """Write one row per record (``id``, ``correct``, ``scores``), atomically."""
    rows = ({"id": r.id, "correct": r.correct, "scores": {m: float(s[i]) for m, s in scores.items()}}
            for i, r in enumerate(records))
    return write_jsonl(path, rows)


def read_scores(path: str | os.PathLike[str]) -> ScoreTable:
    """Read a scores file; errors name the file, line and field."""
    ids: list[str] = []
    correct: list[float] = []
    columns: dict[str, list[float]] = {}
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict) or "correct" not in row or not isinstance(row.get("scores"), dict):
            raise InputError(f"{where}: a scores row needs 'correct' and a 'scores' object")
        if correct and set(row["scores"]) != set(columns):
            raise InputError(f"{where}: methods differ from the first row ({sorted(columns)})")
        ids.append(str(row.get("id", len(ids))))
        correct.append(_finite(row["correct"], "correct", where))
        for name, value in row["scores"].items():
            columns.setdefault(name, []).append(_finite(value, f"scores.{name}", where))
    if not correct:
        raise InputError(f"{path}: no rows")
    return ScoreTable(ids, np.asarray(correct), {m: np.asarray(v) for m, v in columns.items()})


def _finite(value: Any, name: str, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{where}: field {name!r} is not a number ({value!r})") from None
    if not np.isfinite(number):
        raise InputError(f"{where}: field {name!r} is {value!r}; confidences must be finite")
    if not 0.0 <= number <= 1.0:  # said here, with the line, rather than later as "confidence[5]"
        raise InputError(f"{where}: field {name!r} = {number:g} is outside [0, 1]")
    return number
