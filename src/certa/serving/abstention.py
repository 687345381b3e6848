"""Abstention in the server: withhold an answer whose confidence is below a certified threshold.

The threshold comes from :func:`certa.uses.selective.select_threshold` (Learn-then-Test, see
``docs/abstention.md``), fitted at start-up on a calibration file holding the served method's
confidences and grades, or read from a trained artifact's ``certa.json``
(``"selective_threshold"``: a ``SelectiveThreshold.to_dict()``).

The threshold is compared with the method's **raw** confidence, the number it was fitted on,
never with a recalibrated one: online recalibration changes the number a client sees, not the
decision (the recalibration maps are non-decreasing, so they keep the ranking the threshold
cuts). Applying a threshold fitted on raw scores to recalibrated ones would void the guarantee.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..records import Record, iter_jsonl, read_jsonl
from ..scores import read_scores
from ..uses.selective import SelectiveThreshold, select_threshold

#: The text an abstained answer is replaced with unless the server is given another (``--refusal``).
DEFAULT_REFUSAL = "I am not confident enough to answer this reliably."

#: Where a trained artifact's ``certa.json`` stores a certified threshold.
ARTIFACT_KEY = "selective_threshold"


@dataclass(frozen=True)
class Abstention:
    """Withhold answers with raw confidence ``< threshold``; replace them with ``refusal``.

    ``certified`` is the Learn-then-Test result behind the threshold (target error, delta, coverage
    on the calibration set); ``None`` for a threshold given by hand, which carries no guarantee.
    ``source`` says where it came from (a file, an artifact).
    """

    threshold: float
    refusal: str = DEFAULT_REFUSAL
    certified: SelectiveThreshold | None = None
    source: str = "given"

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not math.isfinite(self.threshold) or not 0.0 <= self.threshold <= 1.0:
            raise InputError(f"abstention threshold must be a number in [0, 1], got {self.threshold!r}")
        if not isinstance(self.refusal, str) or not self.refusal.strip():
            raise InputError("the refusal text must be a non-empty string")

    def withholds(self, raw_confidence: float) -> bool:
        """Whether an answer with this raw confidence is withheld."""
        return raw_confidence < self.threshold

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"threshold": self.threshold, "applied_to": "raw confidence",
                               "refusal": self.refusal, "source": self.source}
        if self.certified is not None:
            c = self.certified
            out.update(target_error=c.target_error, delta=c.delta, bound=c.bound,
                       calibration_coverage=c.coverage, calibration_error=c.error, n_calibration=c.n_calibration)
        return out

    def describe(self) -> str:
        if self.certified is None:
            return f"abstains below raw confidence {self.threshold:.4g} ({self.source}; no guarantee)"
        c = self.certified
        return (f"abstains below raw confidence {self.threshold:.4g}: error <= {c.target_error:g} with "
                f"probability >= {1 - c.delta:g}, coverage {c.coverage:.1%} on {c.n_calibration} "
                f"calibration answers ({self.source})")


def calibration_data(path: str | os.PathLike[str], method: str,
                     score_records: Callable[[Sequence[Record]], Sequence[float]] | None = None,
                     *, column: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(confidences, grades) of the served method from a calibration file.

    A scores file (``certa score`` output: rows with ``correct`` and ``scores``) gives the column
    ``column`` (default: the method's name). A file of graded records (``certa grade`` output) is
    scored with ``score_records``, the served method itself, so the calibration confidences are
    computed exactly as served ones are.
    """
    first = next(iter(iter_jsonl(path)), None)
    if first is None:
        raise InputError(f"{path}: no rows")
    _, row = first
    if isinstance(row, dict) and isinstance(row.get("scores"), dict):
        table = read_scores(path)
        return table.column(column or method, where=str(path)), table.correct
    if column is not None:
        raise InputError(f"{path}: holds graded records, not scores; --calibration-column applies to scores files")
    if score_records is None:
        raise InputError(f"{path}: holds graded records; scoring them needs the served model")
    records = read_jsonl(path, Record)
    conf = np.asarray(score_records(records), dtype=float)
    return conf, np.asarray([r.correct for r in records], dtype=float)


def fit_abstention(conf: Sequence[float] | np.ndarray, correct: Sequence[float] | np.ndarray, target_error: float,
                   delta: float = 0.05, *, refusal: str = DEFAULT_REFUSAL, source: str = "calibration") -> Abstention:
    """The certified threshold for ``target_error`` at ``delta`` (:func:`select_threshold`); a target no
    threshold meets raises :class:`~certa.errors.InputError` naming what the data can certify."""
    found = select_threshold(conf, correct, target_error, delta)
    return Abstention(found.threshold, refusal, found, source)


def stored_abstention(artifact: Mapping[str, Any] | None, target_error: float, delta: float = 0.05, *,
                      refusal: str = DEFAULT_REFUSAL, where: str = "the artifact") -> Abstention:
    """The threshold a trained artifact stores, if it certifies ``target_error`` at ``delta``.

    A threshold certified for a lower target error or a smaller delta also meets the request, so it
    is used as is; anything else is an error that says how to fit one.
    """
    stored = (artifact or {}).get(ARTIFACT_KEY)
    if stored is None:
        raise InputError(f"{where} stores no abstention threshold ({ARTIFACT_KEY!r} in certa.json); "
                         "pass --calibration FILE with the served method's confidences and grades")
    if not isinstance(stored, Mapping):
        raise InputError(f"{where}: {ARTIFACT_KEY!r} in certa.json must be an object")
    found = SelectiveThreshold.from_dict(stored)
    if found.target_error > target_error or found.delta > delta:
        raise InputError(f"{where} stores a threshold certified for error {found.target_error:g} at delta "
                         f"{found.delta:g}, which does not meet error {target_error:g} at delta {delta:g}; "
                         "pass --calibration FILE to fit one")
    return Abstention(found.threshold, refusal, found, f"{where}'s certa.json")
