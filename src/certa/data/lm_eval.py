"""Read the per-sample JSONL that ``lm_eval --log_samples`` writes into graded certa records.

lm-evaluation-harness (Gao et al., *A framework for few-shot language model
evaluation*, EleutherAI) writes one ``samples_<task>_<date>.jsonl`` per task:
one row per document and filter, with the document (``doc``), the prompt and
continuation of every request (``arguments``), the model's raw and filtered
responses (``resps`` / ``filtered_resps``, numbers written as strings), the
gold ``target`` (as ``str``) and the task's own per-document metrics.

Two output types carry an answer to calibrate:

- ``generate_until``: the record's ``response`` is the filtered generated text,
  ``answers`` the gold target (each alias when the target is a list) and
  ``correct`` the task's own metric (``exact_match`` first, then ``acc``, then the
  first metric in [0, 1]) — lm_eval graded it, certa does not regrade.
- ``multiple_choice``: the chosen option is the argmax of the per-choice
  log-likelihoods (lm_eval's ``acc``), or of the length-normalised ones
  (``acc_norm``, the log-likelihood divided by the option's length in
  characters) with ``selection="norm"``; ``correct`` is that metric. The meta
  keeps two confidences of the chosen option: ``choice_probability``, its share
  of softmax(log-likelihoods) over the options, and ``choice_probability_norm``,
  the same over the length-normalised log-likelihoods. The ``choice_probability``
  and ``choice_probability_norm`` confidence methods read them.

``loglikelihood`` (one continuation per document) and ``loglikelihood_rolling``
(perplexity) rows have no chosen answer and are rejected with a message.
"""

from __future__ import annotations

import ast
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import InputError
from ..prompts import choice_letters
from ..records import Record, iter_jsonl

log = logging.getLogger(__name__)

#: Keys every row of a ``--log_samples`` file has (lm-eval 0.4.x).
SAMPLE_KEYS = frozenset({"doc_id", "doc", "arguments", "resps", "filtered_resps"})
#: Metrics used as correctness of a generated answer, in order of preference.
PREFERRED_METRICS = ("exact_match", "acc", "em", "accuracy")
#: Document fields taken as the question text when present (else the prompt).
QUESTION_KEYS = ("question", "query", "problem", "input", "prompt")
#: lm_eval's default ``target_delimiter``: put before every multiple-choice continuation.
TARGET_DELIMITER = " "
_FILE_NAME = re.compile(r"^samples_(?P<task>.+?)_(?P<date>\d{4}-\d{2}-\d{2}T[\d.-]+)\.jsonl$")

Selection = Literal["raw", "norm"]


def is_lm_eval_samples(path: str | os.PathLike[str]) -> bool:
    """True when the first row of ``path`` is an lm_eval ``--log_samples`` row.

    Reads one line; any problem reading it (no such file, not JSON) answers
    False, so a caller can fall back to its usual reader and its usual errors.
    """
    try:
        for _, row in iter_jsonl(path):
            return isinstance(row, dict) and SAMPLE_KEYS <= row.keys()
    except (InputError, OSError, UnicodeDecodeError):
        return False
    return False


def task_of(path: str | os.PathLike[str]) -> str:
    """The task name in ``samples_<task>_<date>.jsonl`` (the file's stem when it is named otherwise)."""
    name = Path(path).name
    match = _FILE_NAME.match(name)
    if match:
        return match.group("task")
    stem = Path(name).stem
    return stem[len("samples_"):] if stem.startswith("samples_") and len(stem) > 8 else stem


def read_lm_eval_samples(
    path: str | os.PathLike[str],
    *,
    filter: str | None = None,  # lm_eval's own word for it
    metric: str | None = None,
    selection: Selection = "raw",
) -> list[Record]:
    """Graded records from an ``lm_eval --log_samples`` file (``samples_<task>_<date>.jsonl``).

    Every record keeps what it came from in ``meta["lm_eval"]`` (task, doc id,
    filter, output type, the document, the metrics; for multiple choice the
    log-likelihoods and option lengths). Errors name the file and line.

    Parameters
    ----------
    path
        The samples file of one task.
    filter
        Which of the task's filters to read (e.g. gsm8k's ``"strict-match"``);
        default: the first one in the file (a warning names the others).
    metric
        The per-document metric used as ``correct`` for generated answers
        (default: ``exact_match``, else ``acc``, else the first metric in [0, 1]).
        For multiple choice it is set by ``selection``.
    selection
        Multiple choice only: ``"raw"`` picks the option with the highest
        log-likelihood (lm_eval's ``acc``), ``"norm"`` the highest per-character
        log-likelihood (``acc_norm``).

    Returns
    -------
    list of Record
        One graded record per document, in file order, ids ``"<task>/<doc_id>"``.
    """
    if selection not in ("raw", "norm"):
        raise InputError(f"selection must be 'raw' or 'norm', got {selection!r}")
    task = task_of(path)
    rows = [(lineno, row) for lineno, row in iter_jsonl(path)]
    if not rows:
        raise InputError(f"{path}: no rows")
    for lineno, row in rows:
        if not isinstance(row, dict) or not SAMPLE_KEYS <= row.keys():
            have = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
            raise InputError(f"{path}:{lineno}: not an lm_eval --log_samples row "
                             f"(needs {', '.join(sorted(SAMPLE_KEYS))}; has {have})")
    filters = list(dict.fromkeys(str(row.get("filter", "none")) for _, row in rows))
    chosen_filter = _choose_filter(path, filters, filter)
    records: list[Record] = []
    seen: dict[str, int] = {}
    for lineno, row in rows:
        if str(row.get("filter", "none")) != chosen_filter:
            continue
        where = f"{path}:{lineno}"
        record = _record(row, task, chosen_filter, metric, selection, where)
        if record.id in seen:
            raise InputError(f"{where}: doc_id {row['doc_id']!r} already on line {seen[record.id]}")
        seen[record.id] = lineno
        records.append(record)
    return records


def _choose_filter(path: Any, filters: list[str], wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in filters:
            raise InputError(f"{path}: no rows with filter {wanted!r}; the file has {', '.join(filters)}")
        return wanted
    if len(filters) > 1:
        log.warning("%s: reading filter %r; the file also has %s (choose one with filter=)",
                    path, filters[0], ", ".join(repr(f) for f in filters[1:]))
    return filters[0]


def _record(row: dict[str, Any], task: str, filter_name: str, metric: str | None, selection: Selection,
            where: str) -> Record:
    args = _arguments(row, where)
    metrics = {name: row[name] for name in row.get("metrics", []) if name in row}
    doc = row["doc"] if isinstance(row["doc"], dict) else {"text": row["doc"]}
    context = args[0][0] if args and isinstance(args[0][0], str) else ""
    meta: dict[str, Any] = {"lm_eval": {"task": task, "doc_id": row["doc_id"], "filter": filter_name,
                                        "doc": doc, "metrics": metrics, "target": row.get("target")}}
    base = {"id": f"{task}/{row['doc_id']}", "prompt": context, "model": "",
            "question": _question(doc, context)}
    kind = _output_type(args, where)
    meta["lm_eval"]["output_type"] = kind
    if kind == "generate_until":
        return _generated(row, base, meta, metrics, metric, where)
    if kind == "multiple_choice":
        return _multiple_choice(row, args, base, meta, metrics, selection, where)
    raise InputError(
        f"{where}: output type {kind!r} has no chosen answer to calibrate; certa reads generate_until "
        "and multiple_choice samples")


def _arguments(row: dict[str, Any], where: str) -> list[list[Any]]:
    """The requests' arguments: the file writes ``{"gen_args_0": {"arg_0": ..., "arg_1": ...}, ...}``."""
    raw = row["arguments"]
    if isinstance(raw, dict):
        requests = [raw[k] for k in sorted(raw, key=_index_of)]
        return [[req[k] for k in sorted(req, key=_index_of)] if isinstance(req, dict) else list(req)
                for req in requests]
    if isinstance(raw, list):  # an older or unsanitised layout: a list of argument tuples
        return [list(req) if isinstance(req, (list, tuple)) else [req] for req in raw]
    raise InputError(f"{where}: field 'arguments' is neither an object nor a list")


def _index_of(key: str) -> int:
    digits = re.search(r"(\d+)$", key)
    return int(digits.group(1)) if digits else 0


def _output_type(args: list[list[Any]], where: str) -> str:
    if not args:
        raise InputError(f"{where}: field 'arguments' is empty")
    if all(len(a) >= 2 and isinstance(a[1], dict) for a in args):
        return "generate_until"
    if all(len(a) >= 2 and isinstance(a[1], str) for a in args):
        return "multiple_choice" if len(args) > 1 else "loglikelihood"
    if all(len(a) == 1 for a in args):
        return "loglikelihood_rolling"
    raise InputError(f"{where}: cannot tell the task's output type from its 'arguments'")


def _question(doc: Mapping[str, Any], context: str) -> str:
    for key in QUESTION_KEYS:
        value = doc.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return context


def _gold_aliases(target: Any) -> list[str]:
    """``target`` is written as ``str(target)``: a list of aliases reads back as its Python repr."""
    if isinstance(target, list):
        return [str(t) for t in target]
    text = "" if target is None else str(target)
    if text.startswith("[") and text.endswith("]"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return [text]
        if isinstance(value, list):
            return [str(v) for v in value]
    return [text]


def _generated(row: dict[str, Any], base: dict[str, Any], meta: dict[str, Any], metrics: dict[str, Any],
               metric: str | None, where: str) -> Record:
    filtered = row["filtered_resps"]
    response = filtered[0] if isinstance(filtered, list) and filtered else filtered
    if isinstance(response, list):  # repeats with no reducing filter: the first answer
        response = response[0] if response else ""
    name, value = _correctness(metrics, metric, where)
    meta["lm_eval"]["correct_metric"] = name
    meta["lm_eval"]["resps"] = row["resps"]
    return Record(**base, response=str(response), answers=_gold_aliases(row.get("target")), answer_type="short",
                  correct=value, meta=meta)


def _correctness(metrics: dict[str, Any], wanted: str | None, where: str) -> tuple[str, float]:
    def unit(value: Any) -> float | None:
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0:
            return float(value)
        return None

    if wanted is not None:
        if wanted not in metrics:
            raise InputError(f"{where}: no metric {wanted!r}; this task logs {', '.join(metrics) or 'none'}")
        value = unit(metrics[wanted])
        if value is None:
            raise InputError(f"{where}: metric {wanted!r} is {metrics[wanted]!r}, not a number in [0, 1]")
        return wanted, value
    for name in (*PREFERRED_METRICS, *metrics):
        if name in metrics and (value := unit(metrics[name])) is not None:
            return name, value
    raise InputError(f"{where}: none of the task's metrics ({', '.join(metrics) or 'none'}) is a per-answer "
                     "score in [0, 1] that could serve as correctness")


def _multiple_choice(row: dict[str, Any], args: list[list[Any]], base: dict[str, Any], meta: dict[str, Any],
                     metrics: dict[str, Any], selection: Selection, where: str) -> Record:
    continuations = [str(a[1]) for a in args]
    lls = _loglikelihoods(row["filtered_resps"], len(continuations), where)
    if "acc_mutual_info" in metrics and len(continuations) % 2 == 0 and all(
            a[0] == "" for a in args[len(args) // 2:]):
        half = len(continuations) // 2  # the second half are unconditional ("", option) requests
        continuations, lls = continuations[:half], lls[:half]
    delimiter = TARGET_DELIMITER if all(c.startswith(TARGET_DELIMITER) for c in continuations) else ""
    options = [c[len(delimiter):] for c in continuations]
    gold = _gold_indices(row.get("target"), options, where)
    lengths = _option_lengths(options, continuations, lls, gold, metrics.get("acc_norm"))
    chosen = int(np.argmax(lls)) if selection == "raw" else int(np.argmax(lls / lengths))
    metric_name = "acc" if selection == "raw" else "acc_norm"
    correct = float(chosen in gold)
    logged = metrics.get(metric_name)
    if isinstance(logged, (int, float)) and float(logged) != correct:
        raise InputError(f"{where}: lm_eval's {metric_name}={logged:g} disagrees with the option chosen "
                         f"from the log-likelihoods ({chosen}, gold {sorted(gold)}); is the file edited?")
    letters = choice_letters(len(options))
    meta["choice_probability"] = float(softmax(lls)[chosen])
    meta["choice_probability_norm"] = float(softmax(lls / lengths)[chosen])
    meta["lm_eval"].update(loglikelihoods=lls.tolist(), option_lengths=lengths.tolist(), selection=selection,
                           correct_metric=metric_name, chosen_index=chosen, gold_indices=sorted(gold))
    answers = [letters[g] for g in sorted(gold)] + [options[g] for g in sorted(gold)]
    return Record(**base, response=options[chosen], answers=answers, answer_type="choice", choices=options,
                  correct=correct, meta=meta)


def _option_lengths(options: Sequence[str], continuations: Sequence[str], lls: np.ndarray, gold: set[int],
                    acc_norm: Any) -> np.ndarray:
    """Characters per option, as lm_eval's ``acc_norm`` divides by: the option text without the
    delimiter put before it. A task with another ``target_delimiter`` can make that guess wrong;
    then the logged ``acc_norm`` tells, and the continuation's own length is used."""
    lengths = np.array([max(len(o), 1) for o in options], dtype=float)
    if isinstance(acc_norm, (int, float)) and float(int(np.argmax(lls / lengths)) in gold) != float(acc_norm):
        whole = np.array([max(len(c), 1) for c in continuations], dtype=float)
        if float(int(np.argmax(lls / whole)) in gold) == float(acc_norm):
            return whole
    return lengths


def _loglikelihoods(filtered: Any, n: int, where: str) -> np.ndarray:
    if not isinstance(filtered, list) or len(filtered) != n:
        raise InputError(f"{where}: expected {n} (log-likelihood, is-greedy) responses in 'filtered_resps'")
    values = []
    for item in filtered:
        ll = item[0] if isinstance(item, (list, tuple)) else item
        try:
            number = float(ll)
        except (TypeError, ValueError):
            raise InputError(f"{where}: log-likelihood {ll!r} is not a number") from None
        if not math.isfinite(number):
            raise InputError(f"{where}: log-likelihood {ll!r} is not finite")
        values.append(number)
    return np.asarray(values)


def _gold_indices(target: Any, options: Sequence[str], where: str) -> set[int]:
    """The gold option(s): lm_eval logs ``str(doc_to_target(doc))``: an index, an option text or a list."""
    found: set[int] = set()
    for alias in _gold_aliases(target):
        text = alias.strip()
        if text.lstrip("-").isdigit() and 0 <= int(text) < len(options):
            found.add(int(text))
        elif alias in options:
            found.add(options.index(alias))
    if not found:
        raise InputError(f"{where}: target {target!r} names none of the {len(options)} options")
    return found


def softmax(x: np.ndarray) -> np.ndarray:
    """A numerically stable softmax of a 1-d array."""
    z = np.asarray(x, dtype=float) - np.max(x)
    e = np.exp(z)
    return e / e.sum()
