"""Token entropy: how spread out the model's next-token distributions were while answering."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...errors import CertaError, InputError
from ...records import Record
from ..base import ConfidenceMethod, Needs, register
from .likelihood import per_token

if TYPE_CHECKING:
    from ...models import LoadedModel


@register("token_entropy")
class TokenEntropy(ConfidenceMethod):
    """1 − mean normalised entropy of the answer-token distributions (entropy / log vocab size).

    Each generated token's entropy is divided by log(V), the entropy of a
    uniform distribution over the V-token vocabulary, so the score lies in
    [0, 1] whatever the model. V comes from ``vocab_size=``, else the model's
    output size (``model=``), else ``meta["vocab_size"]`` of the record.
    """

    needs = Needs.LOGPROBS
    cost = "free (reads the generation's token entropies)"

    def __init__(self, model: LoadedModel | None = None, *, vocab_size: int | None = None):
        super().__init__(model, vocab_size=vocab_size)
        if vocab_size is not None and vocab_size < 2:
            raise InputError(f"vocab_size must be at least 2, got {vocab_size}")
        if vocab_size is None and model is not None:
            vocab_size = int(model.model.get_output_embeddings().weight.shape[0])
        self.vocab_size = vocab_size

    def score(self, records: Sequence[Record]) -> np.ndarray:
        return np.array([1.0 - np.mean(per_token(r, "token_entropies")) / math.log(self._vocab(r))
                         for r in records])

    def _vocab(self, record: Record) -> int:
        vocab = self.vocab_size or record.meta.get("vocab_size")
        if not vocab:
            raise CertaError(
                f"token_entropy needs the vocabulary size to normalise record {record.id!r}: "
                "pass model=certa.load_model(...) or vocab_size=N"
            )
        return int(vocab)
