"""Sequence likelihood: how probable the model found its own answer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...errors import CertaError, InputError
from ...records import Record
from ..base import ConfidenceMethod, Needs, register

if TYPE_CHECKING:
    from ...models import LoadedModel


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


class VocabularyNormalised:
    """Mixin for methods that divide by log V: V from ``vocab_size=``, the model, or the record's meta."""

    vocab_size: int | None

    def _init_vocab(self, model: LoadedModel | None, vocab_size: int | None) -> None:
        if vocab_size is not None and vocab_size < 2:
            raise InputError(f"vocab_size must be at least 2, got {vocab_size}")
        if vocab_size is None and model is not None:
            vocab_size = int(model.model.get_output_embeddings().weight.shape[0])
        self.vocab_size = vocab_size

    def log_vocab(self, record: Record) -> float:
        """log V for ``record``; a one-line error when V is known nowhere."""
        vocab = self.vocab_size or (record.meta or {}).get("vocab_size")
        if not vocab:
            raise CertaError(f"{getattr(self, 'name', 'this method')} needs the vocabulary size to normalise record "
                             f"{record.id!r}: pass model=certa.load_model(...) or vocab_size=N")
        return math.log(int(vocab))
