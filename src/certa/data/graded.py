"""Reading answers a user brings: graded records, or generations to grade against a dataset."""

from __future__ import annotations

import os

from ..errors import InputError
from ..records import Generation, Record, iter_jsonl, read_jsonl
from .grading import grade
from .lm_eval import is_lm_eval_samples, read_lm_eval_samples
from .loaders import load_dataset


def read_graded(path: str | os.PathLike[str], dataset: str | None = None) -> list[Record]:
    """Records from ``path``: graded records as they are, an ``lm_eval --log_samples`` file (graded by
    lm-eval's own metric), or generations graded against ``dataset``.

    A file whose rows carry ``correct`` is already graded; any other file holds
    generations and needs ``dataset`` (its gold answers are joined by id).
    Naming a ``dataset`` for a graded file is an error: its grades would stand
    and the dataset would silently go unused.
    """
    if is_lm_eval_samples(path):
        _check_no_dataset(path, dataset, "lm-eval's log of graded samples")
        return read_lm_eval_samples(path)
    first = next((obj for _, obj in iter_jsonl(path)), None)
    if first is None:
        raise InputError(f"{path}: no rows")
    if isinstance(first, dict) and "correct" in first:
        _check_no_dataset(path, dataset, "graded records (rows carry 'correct')")
        return read_jsonl(path, Record)
    if dataset is None:
        raise InputError(f"{path}: rows have no 'correct' field; pass --dataset to grade them first")
    return grade(read_jsonl(path, Generation), load_dataset(dataset, split="all"))


def _check_no_dataset(path: str | os.PathLike[str], dataset: str | None, holds: str) -> None:
    if dataset is not None:
        raise InputError(f"{path} holds {holds}, which keep their own grades: drop --dataset {dataset}, "
                         "or pass the generations to grade them against it")
