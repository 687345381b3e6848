"""Whole-sequence probability: maximum sequence probability and perplexity."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...records import Record
from ..base import ConfidenceMethod, Needs, register
from .likelihood import per_token


def maximum_sequence_probability(logprobs: Sequence[float] | np.ndarray) -> float:
    """LM-Polygraph's maximum sequence probability as an uncertainty: ``-sum_t log p(y_t | y_<t, x)``.

    The unnormalised negative log-likelihood of the whole answer (≥ 0; 0 when
    every token had probability 1). Unlike perplexity it is not divided by the
    length, so longer answers are less certain.
    """
    return float(-np.sum(np.asarray(logprobs, dtype=float)))


def perplexity(logprobs: Sequence[float] | np.ndarray) -> float:
    """Perplexity ``exp(-mean_t log p(y_t | y_<t, x))`` (≥ 1; 1 when every token had probability 1).

    As a confidence, ``1 / perplexity = exp(mean log p)`` is exactly the
    ``sequence_likelihood`` method, so no separate method is registered for it.
    """
    return float(np.exp(-np.mean(np.asarray(logprobs, dtype=float))))


@register("max_sequence_probability")
class MaxSequenceProbability(ConfidenceMethod):
    """Maximum sequence probability: the answer's total probability exp(sum log p) (LM-Polygraph's MSP).

    Fomicheva et al. 2020 ("Unsupervised quality estimation for neural machine
    translation"); the strongest log-prob baseline in LM-Polygraph's benchmark
    (Fadeeva et al. 2023, Vashurin et al. 2025). The raw estimator is the
    negative log-likelihood ``u = -sum_t log p_t`` (:func:`maximum_sequence_probability`);
    the confidence is ``exp(-u)``, the probability of the whole answer, already in
    [0, 1]. Every generated token counts, the end-of-turn token included.
    Answers whose log-likelihood is below about -745 underflow to confidence 0
    (ties); a post-hoc calibrator cannot separate those.
    """

    needs = Needs.LOGPROBS
    cost = "free (reads the generation's token log-probs)"

    def score(self, records: Sequence[Record]) -> np.ndarray:
        return np.array([np.exp(-maximum_sequence_probability(per_token(r, "token_logprobs"))) for r in records])
