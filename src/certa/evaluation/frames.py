"""pandas views of certa's results: records, per-method metrics and per-answer scores.

Pure functions that build a new ``pandas.DataFrame`` from what certa already
holds; nothing is computed anew. pandas is optional: without it these raise
``MissingDependencyError`` with the install command.

- :func:`records_to_pandas` — one row per record (graded answer).
- :func:`metrics_to_pandas` — one row per confidence method of an
  ``EvaluationResult`` (wide), or one row per method and
  metric (``long=True``), each with its bootstrap interval.
- :func:`scores_to_pandas` — one row per answer: its correctness and every
  method's confidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from ..errors import MissingDependencyError
from ..records import Record
from .specs import METRICS

if TYPE_CHECKING:
    import pandas as pd

    from .table import Evaluated

#: Record fields that hold one value per generated token (or a hidden-state vector): left out by default.
PER_TOKEN_FIELDS = ("token_ids", "token_logprobs", "token_entropies", "hidden_state")


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise MissingDependencyError("this needs the 'pandas' package: pip install 'certa[pandas]'") from None
    return pandas


def records_to_pandas(records: Sequence[Record], *, per_token: bool = False) -> pd.DataFrame:
    """One row per record, one column per field, in ``Record`` field order.

    ``confidence`` (confidences read during generation, by method) is spread into
    ``confidence.<method>`` columns. The per-token fields (``token_ids``,
    ``token_logprobs``, ``token_entropies``) and ``hidden_state`` are left out
    unless ``per_token=True``; ``n_tokens`` counts the generated tokens either way.
    ``meta`` stays one column of dicts.
    """
    pandas = _pandas()
    names = [f.name for f in fields(Record) if per_token or f.name not in PER_TOKEN_FIELDS]
    methods = list(dict.fromkeys(m for r in records for m in r.confidence))
    rows = []
    for record in records:
        row: dict[str, Any] = {}
        for name in names:
            if name == "confidence":
                row.update({f"confidence.{m}": record.confidence.get(m) for m in methods})
                continue
            row[name] = getattr(record, name)
            if name == "response":
                row["n_tokens"] = len(record.token_ids)
        rows.append(row)
    columns = [c for name in names for c in
               ([f"confidence.{m}" for m in methods] if name == "confidence" else
                [name, "n_tokens"] if name == "response" else [name])]
    return pandas.DataFrame(rows, columns=columns)


def metrics_to_pandas(result: Evaluated, *, long: bool = False) -> pd.DataFrame:
    """The metrics of every method with their bootstrap intervals.

    Wide (default): indexed by method, columns ``<metric>``, ``<metric>_low``,
    ``<metric>_high`` for each metric of ``certa.evaluation.METRICS``, then
    ``mean_confidence`` and ``n``; methods in the order they were evaluated.
    Long (``long=True``): columns ``method``, ``metric``, ``value``, ``low``,
    ``high``, ``higher_is_better``, with an ``accuracy`` row (method ``None``)
    first. Undefined values are NaN.
    """
    import numpy as np

    pandas = _pandas()
    if long:
        acc = result.accuracy
        rows = [{"method": None, "metric": "accuracy", "value": acc.value, "low": acc.low, "high": acc.high,
                 "higher_is_better": True}]
        for method, estimates in result.methods.items():
            rows += [{"method": method, "metric": metric, "value": est.value, "low": est.low, "high": est.high,
                      "higher_is_better": METRICS[metric].higher_is_better} for metric, est in estimates.items()]
        return pandas.DataFrame(rows, columns=["method", "metric", "value", "low", "high", "higher_is_better"])
    rows = []
    for method, estimates in result.methods.items():
        row: dict[str, Any] = {"method": method}
        for metric, est in estimates.items():
            row.update({metric: est.value, f"{metric}_low": est.low, f"{metric}_high": est.high})
        row["mean_confidence"] = float(np.mean(result.scores[method]))
        row["n"] = result.n
        rows.append(row)
    return pandas.DataFrame(rows).set_index("method")


def scores_to_pandas(result: Evaluated) -> pd.DataFrame:
    """One row per answer: ``correct`` and one column per method's confidence, in input order."""
    pandas = _pandas()
    return pandas.DataFrame({"correct": result.correct, **{m: s for m, s in result.scores.items()}})
