"""Token entropy: how spread out the model's next-token distributions were while answering."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...records import Record
from ..base import ConfidenceMethod, Needs, register
from .likelihood import VocabularyNormalised, per_token

if TYPE_CHECKING:
    from ...models import LoadedModel


@register("token_entropy")
class TokenEntropy(VocabularyNormalised, ConfidenceMethod):
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
        self._init_vocab(model, vocab_size)

    def score(self, records: Sequence[Record]) -> np.ndarray:
        return np.array([1.0 - np.mean(per_token(r, "token_entropies")) / self.log_vocab(r) for r in records])
