"""``hf:owner/name[:config][@split]``: a Hugging Face dataset mapped onto certa's ``Example``.

Needs the optional ``datasets`` package and a network connection (or a local
HF cache). Common column layouts are recognised: ``question``/``query``/
``problem``/``input`` for the question; ``answer``/``answers``/``answerKey``/
``target``/``label`` for the gold answer, which may be a GSM8K solution ending in
``#### 18``, a TriviaQA answer object with aliases, a list of aliases, a number,
a boolean (yes/no), or an option index / letter / text when the row has
``choices``/``options`` (a list, or ARC's ``{"text": [...], "label": [...]}``).
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError, MissingDependencyError
from ..prompts import choice_letters
from ..records import Example
from .answers import canonical_number

QUESTION_COLUMNS = ("question", "query", "problem", "input", "prompt")
ANSWER_COLUMNS = ("answer", "answers", "answerKey", "target", "label")
CHOICE_COLUMNS = ("choices", "options")
ID_COLUMNS = ("id", "question_id", "qid")
DEFAULT_HF_SPLIT = "test"


def parse_hf_reference(ref: str) -> tuple[str, str | None, str]:
    """``"owner/name:config@split"`` → ``("owner/name", "config", "split")``."""
    ref, _, split = ref.partition("@")
    name, _, config = ref.partition(":")
    if not name:
        raise InputError("hf: reference needs a dataset name, e.g. hf:openai/gsm8k:main@test")
    return name, config or None, split or DEFAULT_HF_SPLIT


def load_hf_dataset(ref: str) -> list[Example]:
    """Load and map every row of one split of a Hugging Face dataset."""
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError(
            "loading hf: datasets needs the 'datasets' package: pip install 'certa[hf]'") from None
    name, config, split = parse_hf_reference(ref)
    try:
        rows = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # the library raises many types (offline, missing config, bad split)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"could not load Hugging Face dataset {name!r} (split {split!r}): {message}") from None
    source = f"hf:{name}" + (f":{config}" if config else "")
    examples = [row_to_example(dict(row), i, source) for i, row in enumerate(rows)]
    if not examples:
        raise InputError(f"{source}: split {split!r} has no rows")
    ids = [ex.id for ex in examples]
    if len(set(ids)) != len(ids):
        raise InputError(f"{source}: its id column repeats ids; certa needs unique ids")
    return examples


def _first_column(row: dict[str, Any], columns: tuple[str, ...]) -> str | None:
    return next((c for c in columns if row.get(c) not in (None, "", [])), None)


def row_to_example(row: dict[str, Any], index: int, source: str) -> Example:
    """One dataset row as an ``Example``; a row that fits no known layout names its columns."""
    where = f"{source} row {index}"
    q_col = _first_column(row, QUESTION_COLUMNS)
    a_col = _first_column(row, ANSWER_COLUMNS)
    if q_col is None or a_col is None:
        missing = "question" if q_col is None else "answer"
        expected = QUESTION_COLUMNS if q_col is None else ANSWER_COLUMNS
        raise InputError(f"{where}: no {missing} column (looked for {', '.join(expected)}; "
                         f"columns are {', '.join(row)})")
    id_col = _first_column(row, ID_COLUMNS)
    example_id = str(row[id_col]) if id_col else f"{source.removeprefix('hf:')}-{index}"
    choices = _choices(row)
    answers, answer_type, choices = _answers(row[a_col], choices, where)
    return Example(id=example_id, question=str(row[q_col]).strip(), answers=answers, answer_type=answer_type,
                   choices=choices, source=source)


def _choices(row: dict[str, Any]) -> list[str] | None:
    col = _first_column(row, CHOICE_COLUMNS)
    if col is None:
        return None
    value = row[col]
    if isinstance(value, dict):  # ARC: {"text": [...], "label": [...]}
        value = value.get("text") or []
    return [str(v) for v in value]


def _answers(raw: Any, choices: list[str] | None, where: str) -> tuple[list[str], str, list[str] | None]:
    """(answers, answer_type, choices) from a raw gold value."""
    if choices:
        index = _choice_index(raw, choices, where)
        return [choice_letters(len(choices))[index], choices[index]], "choice", choices
    if isinstance(raw, bool):
        return (["A", "Yes"] if raw else ["B", "No"]), "choice", ["Yes", "No"]
    if isinstance(raw, (int, float)):
        return [canonical_number(str(raw)) or str(raw)], "numeric", None
    if isinstance(raw, dict):
        aliases = [raw.get("value")] + list(raw.get("aliases") or []) + list(raw.get("text") or [])
        return _dedupe(aliases, where), "short", None
    if isinstance(raw, list):
        return _dedupe(raw, where), "short", None
    text = str(raw)
    if "####" in text:  # GSM8K: a worked solution, then "#### answer"
        number = canonical_number(text.rsplit("####", 1)[1])
        if number is None:
            raise InputError(f"{where}: text after '####' is not a number: {text.rsplit('####', 1)[1].strip()!r}")
        return [number], "numeric", None
    number = canonical_number(text)
    return ([number], "numeric", None) if number is not None else ([text.strip()], "short", None)


def _choice_index(raw: Any, choices: list[str], where: str) -> int:
    letters = choice_letters(len(choices))
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(choices):
        return raw
    text = str(raw).strip()
    if len(text) == 1 and text.upper() in letters:
        return letters.index(text.upper())
    if text in choices:
        return choices.index(text)
    if text.isdigit() and 1 <= int(text) <= len(choices):  # ARC's numeric labels "1".."4"
        return int(text) - 1
    raise InputError(f"{where}: answer {raw!r} is not an index, letter or text of its {len(choices)} choices")


def _dedupe(values: list[Any], where: str) -> list[str]:
    answers = list(dict.fromkeys(str(v).strip() for v in values if v is not None and str(v).strip()))
    if not answers:
        raise InputError(f"{where}: the answer is empty")
    return answers
