"""Distance of each next-token distribution from the uniform one: Rényi divergence and Fisher–Rao distance.

Both come from RAINPROOF (Darrin et al. 2023, "Rainproof: an umbrella to
shield text generators from out-of-distribution data", arXiv:2212.09171) and
are LM-Polygraph's ``RenyiNeg`` and ``FisherRao``. They need the full
next-token distribution at every step, which a record does not keep; so
generation calls :func:`token_distribution_stats` once per decoding step and
stores the per-token numbers in ``record.meta["token_stats"]``, and the methods
here only average them.

A distribution far from uniform is a peaked, confident one: both numbers grow
with confidence. certa computes the divergence itself,
``D_alpha(p || u) = 1/(alpha-1) log sum_i p_i^alpha + log V`` (``log V`` added,
so that ``D = log V - H_alpha(p)`` lies in [0, log V]), and reports it with
that sign. LM-Polygraph's versions have differed from this in sign and in how
``log V`` enters, which shifts every score by a constant and does not change
rankings (raised upstream in IINemo/lm-polygraph PRs #459 and #465).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.special import log_softmax, logsumexp

from ...errors import CertaError, InputError
from ...records import Record
from ..base import ConfidenceMethod, Needs, register
from .likelihood import VocabularyNormalised

if TYPE_CHECKING:
    from ...models import LoadedModel

RENYI_ALPHA = 0.5
"""Default Rényi order (LM-Polygraph's and RAINPROOF's)."""
DISTRIBUTION_TEMPERATURE = 2.0
"""Default temperature the logits are divided by before the distance is taken (LM-Polygraph's)."""
TOKEN_STAT_NAMES = ("renyi_divergence", "fisher_rao")
"""The keys :func:`token_distribution_stats` returns and the methods read from ``meta["token_stats"]``."""
TOKEN_STATS_OPTION = "token_stats=True (`certa generate --token-stats`)"
"""The generation option that stores ``meta["token_stats"]``, named in the error when it is missing."""


def _log_probs(logits: Any, temperature: float) -> np.ndarray:
    if temperature <= 0:
        raise InputError(f"temperature must be positive, got {temperature}")
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 0 or logits.shape[-1] < 2:
        raise InputError("logits need a vocabulary axis (the last) of at least 2 entries")
    return log_softmax(logits / temperature, axis=-1)


def renyi_divergence_from_uniform(logits: Any, *, alpha: float = RENYI_ALPHA,
                                  temperature: float = DISTRIBUTION_TEMPERATURE) -> np.ndarray:
    """Rényi divergence of order ``alpha`` of ``p = softmax(logits / temperature)`` from uniform, in nats.

    ``D_alpha(p || u) = 1/(alpha-1) log sum_i p_i^alpha u_i^(1-alpha) = log V - H_alpha(p)``,
    with ``H_alpha`` the Rényi entropy and ``V`` the vocabulary size; alpha = 1
    is the KL divergence ``log V - H(p)``. Reduces the last axis: ``[..., V] -> [...]``;
    each value lies in [0, log V] (0 for the uniform distribution, log V for a one-hot one).
    """
    if alpha <= 0:
        raise InputError(f"alpha must be positive, got {alpha}")
    logp = _log_probs(logits, temperature)
    log_v = math.log(logp.shape[-1])
    if alpha == 1:
        # p log p is 0 where p underflows to 0 (logp = -inf); mask before multiplying to avoid 0 * -inf.
        return log_v + np.sum(np.exp(logp) * np.where(np.isfinite(logp), logp, 0.0), axis=-1)
    return logsumexp(alpha * logp, axis=-1) / (alpha - 1) + log_v


def fisher_rao_from_uniform(logits: Any, *, temperature: float = DISTRIBUTION_TEMPERATURE) -> np.ndarray:
    """Fisher–Rao distance of ``p = softmax(logits / temperature)`` from uniform, divided by pi to lie in [0, 1).

    ``FR(p, u) = (2 / pi) arccos(sum_i sqrt(p_i u_i))``: the geodesic distance
    on the probability simplex under the Fisher information metric
    (``2 arccos`` of the Bhattacharyya coefficient) over its bound pi. 0 for
    the uniform distribution; a one-hot one gives ``(2 / pi) arccos(1 / sqrt(V))``,
    close to 1 for a large vocabulary. Reduces the last axis: ``[..., V] -> [...]``.
    """
    logp = _log_probs(logits, temperature)
    coefficient = np.exp(logsumexp(0.5 * logp, axis=-1) - 0.5 * math.log(logp.shape[-1]))
    return 2.0 / math.pi * np.arccos(np.clip(coefficient, 0.0, 1.0))


def token_distribution_stats(logits: torch.Tensor | np.ndarray, *, alpha: float = RENYI_ALPHA,
                             temperature: float = DISTRIBUTION_TEMPERATURE) -> dict[str, np.ndarray]:
    """The per-token statistics of the full next-token distribution that the methods here read.

    Call it once per decoding step (``logits[batch, V]``) or once per answer
    (``logits[tokens, V]``); any leading shape works and the vocabulary axis is
    reduced. Returns ``{"renyi_divergence": ..., "fisher_rao": ...}`` (see
    :data:`TOKEN_STAT_NAMES`), NumPy float arrays of the leading shape. A torch
    tensor is reduced on its own device in float32 and only the small result
    is copied back; NumPy input is computed by the float64 reference
    functions above.
    """
    if not isinstance(logits, torch.Tensor):
        return {"renyi_divergence": renyi_divergence_from_uniform(logits, alpha=alpha, temperature=temperature),
                "fisher_rao": fisher_rao_from_uniform(logits, temperature=temperature)}
    if alpha <= 0:
        raise InputError(f"alpha must be positive, got {alpha}")
    if temperature <= 0:
        raise InputError(f"temperature must be positive, got {temperature}")
    with torch.no_grad():
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        log_v = math.log(logp.shape[-1])
        if alpha == 1:
            renyi = log_v + (logp.exp() * torch.where(torch.isfinite(logp), logp, 0.0)).sum(dim=-1)
        else:
            renyi = torch.logsumexp(alpha * logp, dim=-1) / (alpha - 1) + log_v
        coefficient = torch.exp(torch.logsumexp(0.5 * logp, dim=-1) - 0.5 * log_v)
        fisher_rao = 2.0 / math.pi * torch.arccos(coefficient.clamp(0.0, 1.0))
    return {"renyi_divergence": renyi.cpu().double().numpy(), "fisher_rao": fisher_rao.cpu().double().numpy()}


def stored_token_stat(record: Record, name: str) -> np.ndarray:
    """The per-token statistic ``name`` the generation stored in ``record.meta["token_stats"]``."""
    values = ((record.meta or {}).get("token_stats") or {}).get(name)
    if not values:
        raise CertaError(
            f"record {record.id!r} has no meta['token_stats'][{name!r}]; it is computed from the full "
            f"next-token distribution during generation: generate with {TOKEN_STATS_OPTION}"
        )
    return np.asarray(values, dtype=float)


@register("renyi_divergence")
class RenyiDivergence(VocabularyNormalised, ConfidenceMethod):
    """Mean Rényi divergence (alpha 0.5, temperature 2) of the token distributions from uniform, / log V.

    RAINPROOF (Darrin et al. 2023, arXiv:2212.09171); LM-Polygraph's ``RenyiNeg``.
    Per token ``D = log V - H_0.5(softmax(z / 2))`` in [0, log V]
    (:func:`renyi_divergence_from_uniform`); the confidence is the mean over the
    answer tokens divided by log V, in [0, 1] (1 = every step one-hot). Reads
    ``meta["token_stats"]["renyi_divergence"]``, which generation stores when
    asked; V comes from ``vocab_size=``, the model (``model=``) or ``meta["vocab_size"]``.
    """

    needs = Needs.LOGPROBS | Needs.TOKEN_STATS
    cost = "free (reads a per-token statistic stored during generation; one reduction over V per step)"

    def __init__(self, model: LoadedModel | None = None, *, vocab_size: int | None = None):
        super().__init__(model, vocab_size=vocab_size)
        self._init_vocab(model, vocab_size)

    def score(self, records: Sequence[Record]) -> np.ndarray:
        return np.array([np.mean(stored_token_stat(r, "renyi_divergence")) / self.log_vocab(r) for r in records])


@register("fisher_rao")
class FisherRao(ConfidenceMethod):
    """Mean Fisher–Rao distance (temperature 2) of the token distributions from uniform, scaled to [0, 1].

    RAINPROOF (Darrin et al. 2023, arXiv:2212.09171); LM-Polygraph's ``FisherRao``.
    Per token ``(2/pi) arccos(sum_i sqrt(p_i / V))`` with ``p = softmax(z / 2)``
    (:func:`fisher_rao_from_uniform`), already in [0, 1]; the confidence is its
    mean over the answer tokens (identity map). Reads
    ``meta["token_stats"]["fisher_rao"]``, which generation stores when asked.
    """

    needs = Needs.LOGPROBS | Needs.TOKEN_STATS
    cost = "free (reads a per-token statistic stored during generation; one reduction over V per step)"

    def score(self, records: Sequence[Record]) -> np.ndarray:
        return np.array([np.mean(stored_token_stat(r, "fisher_rao")) for r in records])
