"""Token-SAR: the answer's log-probs weighted by how much each token matters to its meaning."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import CertaError, InputError
from ...records import Record
from ..base import ConfidenceMethod, Needs, register
from ..embeddings import embed_texts
from .likelihood import per_token

if TYPE_CHECKING:
    from ...models import LoadedModel

Embedder = Callable[[Sequence[str]], np.ndarray]


def token_relevance(similarities: Sequence[float] | np.ndarray) -> np.ndarray:
    """Normalised token relevance ``R_t = (1 - s_t) / sum_j (1 - s_j)`` (Duan et al. 2023, eq. 4).

    ``s_t`` is the similarity of the answer with and without token t, so a
    token whose removal changes nothing gets weight 0. Negative relevance
    (a similarity above 1) is clipped to 0; when no token is relevant the
    weights fall back to uniform. The weights sum to 1.
    """
    sims = np.asarray(similarities, dtype=float)
    if sims.size == 0:
        raise InputError("token_relevance: no tokens")
    relevance = np.clip(1.0 - sims, 0.0, None)
    total = relevance.sum()
    return relevance / total if total > 0 else np.full(sims.size, 1.0 / sims.size)


def token_sar(logprobs: Sequence[float] | np.ndarray, similarities: Sequence[float] | np.ndarray) -> float:
    """Token-SAR uncertainty ``E = sum_t -log p_t * R_t`` with the relevance weights of :func:`token_relevance`.

    A relevance-weighted negative log-likelihood (≥ 0); with uniform weights it
    is the mean negative log-prob, i.e. log perplexity. ``exp(-E)`` is the
    relevance-weighted geometric mean of the token probabilities.
    """
    logp = np.asarray(logprobs, dtype=float)
    weights = token_relevance(similarities)
    if weights.shape != logp.shape:
        raise InputError(f"token_sar: {logp.size} log-probs but {weights.size} similarities")
    return float(-np.sum(logp * weights))


def removal_texts(context: str, token_ids: Sequence[int], tokenizer: Any) -> tuple[list[str], np.ndarray]:
    """The answer text and the answer text without each token, each after ``context``.

    Returns ``[full, without_0, ..., without_{n-1}]`` and a mask of the tokens
    that are special (end-of-turn and the like): those carry no meaning and
    get similarity 1 without being embedded (LM-Polygraph does the same).
    """
    ids = [int(t) for t in token_ids]
    special = set(getattr(tokenizer, "all_special_ids", [])) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    lead = f"{context} " if context else ""
    full = lead + tokenizer.decode(ids, skip_special_tokens=True)
    without = [lead + tokenizer.decode(ids[:t] + ids[t + 1:], skip_special_tokens=True) for t in range(len(ids))]
    return [full, *without], np.array([t in special for t in ids], dtype=bool)


def token_similarities(context: str, token_ids: Sequence[int], tokenizer: Any, *,
                       embed: Embedder = embed_texts) -> np.ndarray:
    """Cosine similarity of ``context + answer`` with ``context + answer without token t``, for each t.

    ``embed`` maps texts to unit vectors (default: the bundled all-MiniLM-L6-v2);
    special tokens get similarity 1 (relevance 0).
    """
    texts, special = removal_texts(context, token_ids, tokenizer)
    return _similarities_from_vectors(_embed_unique(texts, embed), special)


def _embed_unique(texts: Sequence[str], embed: Embedder) -> list[np.ndarray]:
    unique = list(dict.fromkeys(texts))
    vectors = np.asarray(embed(unique), dtype=float) if unique else np.empty((0, 0))
    index = {t: i for i, t in enumerate(unique)}
    return [vectors[index[t]] for t in texts]


def _similarities_from_vectors(vectors: Sequence[np.ndarray], special: np.ndarray) -> np.ndarray:
    full, without = vectors[0], np.asarray(vectors[1:])
    sims = without @ full if len(without) else np.empty(0)
    return np.where(special, 1.0, sims)


@register("token_sar")
class TokenSAR(ConfidenceMethod):
    """Token-SAR: exp(-relevance-weighted mean of -log p), token relevance read by sentence embeddings.

    Duan et al. 2023/2024 ("Shifting attention to relevance: towards the
    predictive uncertainty quantification of free-form LLMs", arXiv:2307.01379);
    LM-Polygraph's ``TokenSAR``. Token t's relevance is 1 - cos(emb(q + answer),
    emb(q + answer without t)) with the bundled all-MiniLM-L6-v2 (LM-Polygraph:
    a RoBERTa-large cross-encoder); the uncertainty is ``E = sum_t -log p_t R_t``
    with relevance normalised to sum 1 (:func:`token_sar`) and the confidence
    ``exp(-E)``, in [0, 1]. Needs the model only for its tokenizer (to drop one
    token at a time); ``embed=`` swaps the embedder.
    """

    needs = Needs.LOGPROBS | Needs.MODEL
    cost = "n + 1 MiniLM sentence embeddings per answer of n tokens (no extra pass through the LM)"

    def __init__(self, model: LoadedModel | None = None, *, with_question: bool = True,
                 embed: Embedder | None = None):
        super().__init__(model, with_question=with_question)
        self.with_question = with_question
        self.embed = embed

    def score(self, records: Sequence[Record]) -> np.ndarray:
        assert self.model is not None
        logprobs = [per_token(r, "token_logprobs") for r in records]
        prepared = []
        for record, lp in zip(records, logprobs, strict=True):
            if len(record.token_ids) != len(lp):
                raise CertaError(f"record {record.id!r} has {len(record.token_ids)} token_ids but {len(lp)} "
                                 "token_logprobs; token_sar needs both from the same generation")
            prepared.append(removal_texts(record.question if self.with_question else "", record.token_ids,
                                          self.model.tokenizer))
        # One embedding call for every answer's texts; identical texts are embedded once.
        vectors = _embed_unique([t for texts, _ in prepared for t in texts], self.embed or embed_texts)
        scores, start = [], 0
        for (texts, special), lp in zip(prepared, logprobs, strict=True):
            sims = _similarities_from_vectors(vectors[start:start + len(texts)], special)
            start += len(texts)
            scores.append(np.exp(-token_sar(lp, sims)))
        return np.array(scores)
