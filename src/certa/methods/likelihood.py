"""Sequence likelihood: how probable the model found its own answer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import CertaError
from ..records import Record
from .base import ConfidenceMethod, Needs, register


@register("sequence_likelihood")
class SequenceLikelihood(ConfidenceMethod):
    """exp(mean log p) over the answer tokens: the length-normalised answer probability.

    Free: it reads the log-probs the generation already recorded. The mean
    runs over every generated token, the end-of-turn token included when the
    model emitted it (its probability is how sure the model was that the
    answer is complete).
    """

    needs = Needs.LOGPROBS
    cost = "free (reads the generation's token log-probs)"

    def score(self, records: Sequence[Record]) -> np.ndarray:
        return np.array([np.exp(np.mean(token_logprobs(r))) for r in records])


def token_logprobs(record: Record) -> np.ndarray:
    """The record's per-token log-probs, or a CertaError naming the record when there are none."""
    if not record.token_logprobs:
        raise CertaError(
            f"record {record.id!r} has no token_logprobs; produce it with certa.generate "
            "(or `certa generate`), which records them for every answer"
        )
    return np.asarray(record.token_logprobs, dtype=float)
