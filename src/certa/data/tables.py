"""Examples from a table: a pandas ``DataFrame``, a ``datasets.Dataset`` or a list of dicts.

The columns are those of the JSONL schema (``docs/data.md``): ``id``,
``question`` and ``answers`` are required; ``answer_type`` (default ``short``),
``choices``, ``source`` and ``meta`` are optional; any other column is kept in
each example's ``meta``. Cells may hold what tables hold: ``answers`` a list,
tuple or NumPy array of strings (or one string or number, taken as the only
answer), ``choices`` a list or array, numbers as NumPy scalars, a missing value
as ``None`` or NaN. Errors name the table, the row and the column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import InputError
from ..records import ANSWER_TYPES, Example
from .grading import check_gold

REQUIRED_COLUMNS = ("id", "question", "answers")
OPTIONAL_COLUMNS = ("answer_type", "choices", "source", "meta")


def examples_from_table(table: Any, where: str = "table") -> list[Example]:
    """Check and convert every row of ``table`` into an ``Example``.

    ``table`` is a pandas ``DataFrame``, a Hugging Face ``datasets.Dataset`` (one
    split, not a ``DatasetDict``) or a sequence of mappings; ``where`` names it
    in error messages (``"DataFrame row 3: ..."``). Raises ``InputError`` for a
    missing column, an empty table, a repeated id, and any cell that does not
    fit its column (the same checks as a JSONL file).
    """
    columns, rows, labels = _rows(table, where)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(f"{where}: no column {missing[0]!r} (it has {', '.join(map(str, columns)) or 'none'}); "
                         f"needed: {', '.join(REQUIRED_COLUMNS)}; optional: {', '.join(OPTIONAL_COLUMNS)}")
    examples: list[Example] = []
    first_row: dict[str, Any] = {}
    for row, label in zip(rows, labels, strict=True):
        at = f"{where} row {label}"
        example = _example(row, at)
        if example.id in first_row:
            raise InputError(f"{at}: id {example.id!r} already used in row {first_row[example.id]}")
        first_row[example.id] = label
        examples.append(example)
    if not examples:
        raise InputError(f"{where}: no rows")
    return examples


def _rows(table: Any, where: str) -> tuple[list[str], list[Mapping[str, Any]], list[Any]]:
    """(columns, rows as mappings, a label per row for messages)."""
    kind = type(table).__module__.split(".")[0]
    if kind == "pandas" and hasattr(table, "to_dict") and hasattr(table, "columns"):
        if not table.columns.is_unique:
            dupes = table.columns[table.columns.duplicated()].tolist()
            raise InputError(f"{where}: column {dupes[0]!r} appears more than once")
        return [str(c) for c in table.columns], table.to_dict(orient="records"), list(table.index)
    if kind == "datasets":
        if not hasattr(table, "column_names") or isinstance(table.column_names, dict):
            raise InputError(f"{where}: a DatasetDict holds several splits; pass one, e.g. table['test']")
        return list(table.column_names), list(table), list(range(len(table)))
    if isinstance(table, Iterable) and not isinstance(table, (str, bytes, Mapping)):
        rows = list(table)
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, Mapping)), None)
        if bad is not None:
            raise InputError(f"{where} row {bad}: expected a mapping of column to value, "
                             f"got {type(rows[bad]).__name__}")
        columns = list(dict.fromkeys(str(k) for r in rows for k in r))
        return columns, rows, list(range(len(rows)))
    raise InputError(f"{where}: expected a pandas DataFrame, a datasets.Dataset or a list of dicts, "
                     f"got {type(table).__name__}")


def _example(row: Mapping[str, Any], at: str) -> Example:
    cells = {str(k): _plain(v) for k, v in row.items()}
    answer_type = _text(cells.get("answer_type"), "answer_type", at, required=False) or "short"
    if answer_type not in ANSWER_TYPES:
        raise InputError(f"{at}: column 'answer_type' is {answer_type!r}; expected one of {ANSWER_TYPES}")
    meta = cells.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise InputError(f"{at}: column 'meta' must hold a dict, got {type(meta).__name__}")
    extra = {k: None if _missing(v) else v for k, v in cells.items()
             if k not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS}
    example = Example(
        id=_identifier(cells.get("id"), at),
        question=_text(cells.get("question"), "question", at, required=True),
        answers=_answers(cells.get("answers"), at),
        answer_type=answer_type,  # type: ignore[arg-type]  # checked above
        choices=_choices(cells.get("choices"), at),
        source=_text(cells.get("source"), "source", at, required=False),
        meta={**(meta or {}), **extra},
    )
    try:
        example.validate()
    except InputError as exc:
        raise InputError(f"{at}: {exc}") from None
    check_gold(example, at)
    return example


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays (what pandas and datasets hand back) as plain Python values."""
    if hasattr(value, "tolist") and type(value).__module__.split(".")[0] in {"numpy", "pandas"}:
        return value.tolist()
    if type(value).__name__ in {"NAType", "NaTType"}:  # pandas' missing markers
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _scalar_text(value: Any) -> str | None:
    """A string or number as text (``3.0`` → ``"3"``); ``None`` for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def _identifier(value: Any, at: str) -> str:
    text = None if _missing(value) else _scalar_text(value)
    if text is None or not text.strip():
        raise InputError(f"{at}: column 'id' must be a non-empty string or number, got {value!r}")
    return text


def _text(value: Any, column: str, at: str, *, required: bool) -> str:
    if _missing(value):
        if required:
            raise InputError(f"{at}: column {column!r} is empty")
        return ""
    if not isinstance(value, str):
        raise InputError(f"{at}: column {column!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise InputError(f"{at}: column {column!r} is empty")
    return value


def _answers(value: Any, at: str) -> list[str]:
    if _missing(value):
        raise InputError(f"{at}: column 'answers' is empty")
    items = value if isinstance(value, list) else [value]
    answers = []
    for item in items:
        text = _scalar_text(item)
        if text is None:
            raise InputError(f"{at}: column 'answers' must hold strings, got {item!r}")
        answers.append(text)
    if not answers:
        raise InputError(f"{at}: column 'answers' is empty")
    return answers


def _choices(value: Any, at: str) -> list[str] | None:
    if _missing(value):
        return None
    if not isinstance(value, list):
        raise InputError(f"{at}: column 'choices' must hold a list of option texts, got {type(value).__name__}")
    options = []
    for item in value:
        text = _scalar_text(item)
        if text is None:
            raise InputError(f"{at}: column 'choices' must hold strings, got {item!r}")
        options.append(text)
    return options or None
