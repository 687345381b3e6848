"""ConfTuner on answers another model wrote (the paper's black-box setting): read them from a file and score them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...errors import InputError
from ...records import Record, from_dict, iter_jsonl
from .method import ConfTuner

if TYPE_CHECKING:
    from ...models import LoadedModel


def read_answers(path: str | os.PathLike[str]) -> list[Record]:
    """Read a JSONL of answers produced elsewhere: ``{id, question, response, ...}`` per line.

    ``answer_type`` / ``choices`` shape the prompt as for certa's own answers;
    ``answers`` and ``correct`` are optional (needed only to evaluate).
    """
    records = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object")
        for name in ("id", "question", "response"):
            if name not in row:
                raise InputError(f"{where}: missing field {name!r}")
            if not isinstance(row[name], (str, int)) or (name != "id" and not str(row[name]).strip()):
                raise InputError(f"{where}: field {name!r} must be a non-empty string")
        # Ungraded answers are fine here (a grade is needed only to evaluate): 0 stands in for none.
        record = from_dict(Record, {"prompt": "", "correct": 0.0, **row, "id": str(row["id"]),
                                    "question": str(row["question"]), "response": str(row["response"])}, where=where)
        if record.answer_type == "choice" and not record.choices:
            raise InputError(f"{where}: answer_type 'choice' needs a non-empty 'choices' list")
        records.append(record)
    if not records:
        raise InputError(f"{path}: no answers")
    return records


def score_answers(lm: LoadedModel, answers: str | os.PathLike[str] | Sequence[Record],
                  batch_size: int = 16) -> np.ndarray:
    """ConfTuner confidences for answers any model gave (a JSONL path or records), one per answer."""
    records = read_answers(answers) if isinstance(answers, (str, os.PathLike)) else list(answers)
    return ConfTuner(model=lm, batch_size=batch_size)(records)
