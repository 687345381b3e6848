"""Sequence likelihood: how probable the model found its own answer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import CertaError
from ...records import Record
from ..base import ConfidenceMethod, Needs, register


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
        return np.array([np.exp(np.mean(per_token(r, "token_logprobs"))) for r in records])


def per_token(record: Record, field: str) -> np.ndarray:
    """A per-token list of the record (``token_logprobs``, ``token_entropies``) or a CertaError naming it."""
    values = getattr(record, field)
    remote = record.meta.get("remote") if isinstance(record.meta, dict) else None
    if not values and isinstance(remote, dict):
        what = ("top_logprobs (the entropies are computed from them)" if field == "token_entropies"
                else "token log-probs")
        raise CertaError(f"record {record.id!r} came from the server at {remote.get('base_url')}, which returned no "
                         f"{what}; methods that read {field} cannot score it (consistency, verbalized, p_true, "
                         "apricot and ConfTuner need none of them)")
    if not values:
        raise CertaError(
            f"record {record.id!r} has no {field}; produce it with certa.generate "
            "(or `certa generate`), which records them for every answer"
        )
    return np.asarray(values, dtype=float)
