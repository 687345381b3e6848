"""The ``<CNF>`` token: adding it to the vocabulary and placing its row so training can start.

From a fresh mean row, softmax(W·z)[<CNF>] is ~1e-8 and the MSE gradient
vanishes (measured with a first prototype). The row is therefore moved along the mean read-out state
until the average confidence on a sample of training answers equals their mean
target; the sample is drawn at random across *all* training answers, so a
pooled study's datasets all have their say in the starting level.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...models.adapters import unwrap
from ...models.vocab import add_special_token, embedding_matrices
from ..answer_cache import PrefixStore, encode_answers, extend
from .readout import CNF_TOKEN

if TYPE_CHECKING:
    from ...models import LoadedModel


def add_cnf_token(lm: LoadedModel) -> int:
    """Add ``<CNF>`` as a special token and grow the embeddings (new row = mean row); return its id."""
    return add_special_token(lm.model, lm.tokenizer, CNF_TOKEN)


def init_sample(items: Sequence[dict[str, Any]], size: int, seed: int) -> list[dict[str, Any]]:
    """``size`` items drawn at random (seeded) from all of ``items``, not the first ones in order."""
    if len(items) <= size:
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), size))]


def place_cnf_row(lm: LoadedModel, cnf_id: int, states: torch.Tensor, rate: float) -> None:
    """Set the ``<CNF>`` row to mean + α·u (u: the unit mean of ``states``) so the mean c equals ``rate``."""
    z = states.float()
    head = unwrap(lm.model).get_output_embeddings()
    with torch.no_grad():
        logits = z @ head.weight.float().T
        others = torch.cat([logits[:, :cnf_id], logits[:, cnf_id + 1:]], dim=-1).logsumexp(-1)
        base_row = head.weight[cnf_id].float()
        u = z.mean(0) / z.mean(0).norm().clamp(min=1e-8)
        alpha = solve_offset(z @ base_row - others, z @ u, rate)
        row = base_row + alpha * u
        for matrix in embedding_matrices(unwrap(lm.model)):
            matrix[cnf_id] = row.to(matrix.dtype)


def readout_states(lm: LoadedModel, items: Sequence[dict[str, Any]], readout: str, batch_size: int = 16,
                   prefixes: PrefixStore | None = None) -> torch.Tensor:
    """Final-layer states at the read-out position, before training (adapter off), in batches.

    With ``prefixes`` (the training store, which has the items planned) the answers' encodings are
    taken from it and stay there for the first epoch, instead of being computed twice.
    """
    if readout == "free":
        return torch.tensor([it["hidden"] for it in items], device=lm.device)
    chunks = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        pairs = [(it["prompt"], it["response"]) for it in batch]
        with torch.no_grad():
            cache = (prefixes.cache(lm.model, [it["id"] for it in batch], pairs, lm.tokenizer.pad_token_id)
                     if prefixes is not None else encode_answers(lm.model, pairs, lm.tokenizer.pad_token_id))
            out = extend(lm.model, cache, adapter_enabled=False, hidden=True)
        chunks.append(out.hidden_states[-1][:, 0])
    return torch.cat(chunks)


def mean_target(items: Sequence[dict[str, Any]]) -> float:
    """The level c should start at: the mean training target, kept away from 0 and 1."""
    return float(np.clip(np.mean([it["target"] for it in items]), 1e-3, 1 - 1e-3))


def solve_offset(a: torch.Tensor, b: torch.Tensor, rate: float, iters: int = 50) -> float:
    """α with mean(sigmoid(a + α·b)) = rate, by bisection (monotone in α when b > 0 on average)."""
    def mean_conf(alpha: float) -> float:
        return float(torch.sigmoid(a + alpha * b).mean())

    lo, hi = -1.0, 1.0
    while mean_conf(hi) < rate and hi < 1e6:
        hi *= 2
    while mean_conf(lo) > rate and lo > -1e6:
        lo *= 2
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_conf(mid) < rate else (lo, mid)
    return (lo + hi) / 2
