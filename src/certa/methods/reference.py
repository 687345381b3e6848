"""The base rate: one constant confidence, the accuracy on the training answers.

The reference every confidence method must beat to mean anything. It is
perfectly calibrated in expectation when train and test accuracy agree
(so its ECE is sampling noise) and it cannot tell answers apart (AUROC 0.5):
a method's ECE says little unless its AUROC is above this row's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from ..records import Record
from .base import ConfidenceMethod, Needs, register


@register("base_rate")
class BaseRate(ConfidenceMethod):
    """A constant: the share of correct training answers (calibrated, blind; the reference row)."""

    needs = Needs.FIT
    cost = "free (one constant); fit: the training accuracy"

    def fit(self, records: Sequence[Record]) -> BaseRate:
        if not records:
            raise InputError("base_rate: no records to fit on")
        self.rate = float(np.mean([r.correct for r in records]))
        self.fitted = True
        return self

    def score(self, records: Sequence[Record]) -> np.ndarray:
        return np.full(len(records), self.rate)
