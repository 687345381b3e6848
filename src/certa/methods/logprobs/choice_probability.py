"""The probability a log-likelihood multiple-choice evaluation gives its chosen option.

An lm-evaluation-harness ``multiple_choice`` task scores every option by its
log-likelihood and picks the largest; the softmax of those log-likelihoods over
the options is the model's probability for each (the option-normalised
likelihood of Brown et al., 2020, as used by the harness's ``acc``), and the
chosen option's share is a free confidence. ``choice_probability_norm`` does the
same over log-likelihoods divided by each option's length in characters (the
harness's ``acc_norm``), which stops long options from losing only for their
length. Both are read from the record's ``meta``, where
``certa.data.lm_eval.read_lm_eval_samples`` puts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from ...errors import CertaError
from ...records import Record
from ..base import ConfidenceMethod, Needs, register


@register("choice_probability")
class ChoiceProbability(ConfidenceMethod):
    """softmax over the options' log-likelihoods, at the chosen option (lm-eval multiple choice; free)."""

    needs = Needs.NOTHING
    cost = "free (reads the option log-likelihoods lm_eval logged)"
    key: ClassVar[str] = "choice_probability"

    def score(self, records: Sequence[Record]) -> np.ndarray:
        return np.array([self._read(r) for r in records])

    def _read(self, record: Record) -> float:
        value = (record.meta or {}).get(self.key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise CertaError(
                f"record {record.id!r} has no {self.key!r} in its meta; it comes from the samples file of an "
                "lm_eval multiple_choice task (`lm_eval --log_samples`, read by certa.data.lm_eval)")
        return float(value)


@register("choice_probability_norm")
class ChoiceProbabilityNorm(ChoiceProbability):
    """softmax over per-character option log-likelihoods, at the chosen option (lm-eval acc_norm; free)."""

    key: ClassVar[str] = "choice_probability_norm"
