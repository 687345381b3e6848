"""The model cascade (ConfTuner, arXiv 2508.18847): the k least-confident questions go to a stronger model."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import grade
from ..errors import InputError
from ..evaluation.figures import line_figure
from ..records import Example, Record, atomic_write_bytes
from .answering import GenerateFn, check_confidences, generator_for

if TYPE_CHECKING:
    from ..models import LoadedModel


@dataclass
class CascadeResult:
    """Accuracy when the k least-confident questions go to the strong model, for each k."""

    ks: list[int]
    accuracy: list[float]
    strong_accuracy: float      # the strong model's accuracy on the questions it answered
    order: list[str]            # record ids, least confident first

    def to_dict(self) -> dict[str, Any]:
        return {"curve": [{"k": k, "fraction": k / len(self.order), "accuracy": a}
                          for k, a in zip(self.ks, self.accuracy, strict=True)],
                "strong_accuracy": self.strong_accuracy}


def cascade(
    records: Sequence[Record],
    confidences: Sequence[float] | np.ndarray,
    strong: LoadedModel | str | GenerateFn,
    ks: Iterable[int] | None = None,
    *,
    strong_model_name: str = "",
    api_key: str | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    grader: str | Callable[[str, Example], float] | None = None,
) -> CascadeResult:
    """Send the k least-confident questions to ``strong`` and keep the rest, for each k in ``ks``.

    ``strong`` is a loaded certa model, the base URL of an OpenAI-compatible
    server (``http://host:port/v1``; ``strong_model_name`` picks its model and
    ``api_key`` defaults to ``$OPENAI_API_KEY``), or a function
    ``examples -> generations``. The strong model answers the ``max(ks)``
    least-confident questions once; every k reuses those answers. ``ks``
    defaults to 0 %, 10 %, …, 100 % of the questions; ``grader`` is passed to
    ``certa.data.grade`` (default: by answer type).
    """
    conf = check_confidences(records, confidences)
    n = len(records)
    ks = sorted({int(k) for k in (ks if ks is not None else np.linspace(0, n, 11).round())})
    if ks[0] < 0 or ks[-1] > n:
        raise InputError(f"every k must lie in [0, {n}], got {ks[0]}..{ks[-1]}")
    order = np.argsort(conf, kind="stable")  # least confident first; ties keep file order
    routed = [records[i] for i in order[: ks[-1]]]
    generate_fn = generator_for(strong, strong_model_name, api_key, max_new_tokens, batch_size)
    strong_correct = np.zeros(0)
    if routed:
        examples = [r.example() for r in routed]
        graded = {r.id: r.correct for r in grade(list(generate_fn(examples)), examples, grader)}
        strong_correct = np.array([graded[r.id] for r in routed])
    own = np.array([r.correct for r in records])[order]
    accuracy = [float((strong_correct[:k].sum() + own[k:].sum()) / n) for k in ks]
    return CascadeResult(ks, accuracy, float(strong_correct.mean()) if routed else float("nan"),
                         [records[i].id for i in order])


def plot_cascade(result: CascadeResult, path: str | os.PathLike[str]) -> Path:
    """Accuracy against the share of questions sent to the strong model (a PNG at ``path``)."""
    n = len(result.order)
    png = line_figure({"by confidence": ([k / n for k in result.ks], list(result.accuracy))},
                      xlabel="share of questions sent to the strong model", ylabel="accuracy", title="Model cascade")
    return atomic_write_bytes(path, png)
