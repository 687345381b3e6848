"""The study's score cache: each method's confidences kept in ``scores.jsonl`` and redone only when stale.

A method's cached scores are reused while its inputs are unchanged: its name,
its provenance (the model or the artifact it reads), the fit records (ids,
answers, grades) and the scored answers. The cache is a scores file
(:mod:`certa.scores`) plus ``<file>.meta.json`` holding each method's key,
timings, cost and diagnostics; this module alone reads and writes them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CertaError
from ..methods.base import MethodSpec
from ..methods.runner import MethodScores, score_methods
from ..records import Record, atomic_write_text
from ..scores import read_scores, write_scores
from .stages import fingerprint, record_key

if TYPE_CHECKING:
    from ..models import LoadedModel

log = logging.getLogger(__name__)


def cached_scores(
    methods: Sequence[str],
    records: Sequence[Record],
    path: Path,
    *,
    fit_records: Sequence[Record] = (),
    models: Mapping[str, LoadedModel] | None = None,
    default_model: LoadedModel | None = None,
    provenance: Mapping[str, str] | None = None,
) -> dict[str, MethodScores]:
    """:func:`~certa.methods.runner.score_methods` that keeps its results in ``path``, rescoring only what changed.

    ``provenance`` maps a method's base name to what its scores depend on besides
    the records (the base model's name, or an artifact's id).
    """
    provenance = provenance or {}
    keys = {}
    for m in methods:
        spec = MethodSpec.parse(m)
        fit_key = record_key(fit_records, graded=True) if spec.requires_fit else None
        keys[m] = fingerprint(m, provenance.get(spec.base, ""), fit_key, record_key(records, graded=False))
    cached = _read(path, [r.id for r in records])
    results = {m: cached[m][0] for m in methods if m in cached and cached[m][1] == keys[m]}
    todo = [m for m in methods if m not in results]
    if todo:
        results.update(score_methods(todo, records, fit_records=fit_records, models=models,
                                     default_model=default_model))
    ordered = {m: results[m] for m in methods}
    if todo or set(cached) != set(methods):
        write_scores(path, records, {m: s.scores for m, s in ordered.items()})
        meta = {m: {"key": keys[m], **s.summary()} for m, s in ordered.items()}
        atomic_write_text(_meta_path(path), json.dumps(meta, indent=1))
    return ordered


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def _read(path: Path, ids: list[str]) -> dict[str, tuple[MethodScores, str]]:
    """Cached (scores, key) per method, or nothing when the cache is missing or for other answers."""
    meta_path = _meta_path(path)
    if not (path.exists() and meta_path.exists()):
        return {}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        table = read_scores(path)
    except (CertaError, ValueError) as exc:
        log.warning("ignoring unreadable score cache %s (%s)", path, exc)
        return {}
    if table.ids != ids or not isinstance(meta, dict):
        return {}
    cached = {}
    for name, info in meta.items():
        if name not in table.scores:
            continue
        try:
            scores = np.asarray(table.scores[name], dtype=float)
            cached[name] = (MethodScores(name, scores, float(info["seconds"]), info["cost"],
                                         info.get("diagnostics", {}), info.get("fit_seconds", 0.0),
                                         info.get("needs", [])), str(info["key"]))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a hand-edited or foreign meta file
            log.warning("ignoring the cached scores of %s in %s (%s: %s)", name, path, type(exc).__name__, exc)
    return cached
