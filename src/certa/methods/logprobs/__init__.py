"""Estimators that read the answer's own token probabilities (LM-Polygraph's white-box log-prob family).

Each estimator is a pure NumPy function (``maximum_sequence_probability``,
``pointwise_mutual_information``, ``renyi_divergence_from_uniform``, ...) plus a
thin registered method class that reads the per-token numbers a generation
stored and maps the estimator's raw value to a confidence in [0, 1].
"""

from .distribution import (
    TOKEN_STAT_NAMES,
    fisher_rao_from_uniform,
    renyi_divergence_from_uniform,
    token_distribution_stats,
)
from .pmi import pointwise_mutual_information, unconditional_logprobs
from .sequence import maximum_sequence_probability, perplexity
from .token_sar import token_relevance, token_sar, token_similarities

__all__ = [
    "TOKEN_STAT_NAMES",
    "fisher_rao_from_uniform",
    "maximum_sequence_probability",
    "perplexity",
    "pointwise_mutual_information",
    "renyi_divergence_from_uniform",
    "token_distribution_stats",
    "token_relevance",
    "token_sar",
    "token_similarities",
    "unconditional_logprobs",
]
