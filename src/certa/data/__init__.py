"""Datasets, splits and grading.

``load_dataset(name_or_path, split, limit, seed)`` returns examples from a
bundled dataset (``dataset_names()``), a JSONL file or ``hf:owner/name``;
``grade(generations, examples)`` turns generations into graded records;
``extract_answer`` gives the normalised final answer used for voting.
"""

from .answers import extract_answer
from .graded import read_graded
from .grading import Grader, get_grader, grade, grader_names, register_grader, token_f1
from .judge import LLMJudge
from .loaders import (
    SPLITS,
    DatasetInfo,
    dataset_names,
    describe_dataset,
    load_dataset,
    read_examples,
    split_of,
    take_subset,
)

__all__ = [
    "SPLITS",
    "DatasetInfo",
    "Grader",
    "LLMJudge",
    "dataset_names",
    "describe_dataset",
    "extract_answer",
    "get_grader",
    "grade",
    "grader_names",
    "load_dataset",
    "read_examples",
    "read_graded",
    "register_grader",
    "split_of",
    "take_subset",
    "token_f1",
]
