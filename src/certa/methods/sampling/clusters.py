"""Semantic clusters of an answer set: the number of semantic sets and discrete semantic entropy.

Both start from the same relation: two answers mean the same when each
supports the other, ``S[i, j] >= threshold`` and ``S[j, i] >= threshold``
(bidirectional entailment when ``S`` holds NLI entailment probabilities).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.sparse.csgraph import connected_components

from ...errors import InputError


def _square(similarity: np.ndarray) -> np.ndarray:
    matrix = np.asarray(similarity, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise InputError(f"a similarity matrix must be square and non-empty, got shape {matrix.shape}")
    return matrix


def equivalent(similarity: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean ``[m, m]``: answers i and j support each other at ``threshold`` (every answer is its own match)."""
    matrix = _square(similarity)
    same = (matrix >= threshold) & (matrix.T >= threshold)
    np.fill_diagonal(same, True)
    return same


def number_of_semantic_sets(similarity: np.ndarray, threshold: float) -> int:
    """Lin, Trivedi & Sun 2023's NumSemSets: connected components of the :func:`equivalent` graph (1..m)."""
    count, _ = connected_components(equivalent(similarity, threshold), directed=False)
    return int(count)


def semantic_clusters(similarity: np.ndarray, threshold: float) -> np.ndarray:
    """Cluster label per answer, by Kuhn / Farquhar et al.'s greedy rule.

    Answers are visited in order; each joins the first existing cluster whose
    first member it is :func:`equivalent` to, else starts a new one. Unlike
    connected components this does not chain: a ~ b and b ~ c with a !~ c
    leaves c apart from a when a founded the cluster.
    """
    same = equivalent(similarity, threshold)
    founders: list[int] = []
    labels = np.empty(same.shape[0], dtype=int)
    for i in range(same.shape[0]):
        for label, founder in enumerate(founders):
            if same[founder, i]:
                labels[i] = label
                break
        else:
            labels[i] = len(founders)
            founders.append(i)
    return labels


def discrete_semantic_entropy(labels: np.ndarray) -> float:
    """Farquhar et al. 2024's discrete semantic entropy: ``-sum_c p_c log p_c``, ``p_c`` = share of answers in c.

    In [0, log m] nats for m answers: 0 when all agree, log m when all differ.
    """
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    if counts.size == 0:
        raise InputError("discrete_semantic_entropy: no answers")
    p = counts / counts.sum()
    return float(-np.sum(p * np.log(p)))


def max_entropy(m: int) -> float:
    """log m, the largest semantic entropy m answers can have."""
    return math.log(m)
