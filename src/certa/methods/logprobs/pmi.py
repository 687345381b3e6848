"""Pointwise mutual information between the question and the answer, token by token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.special import expit
from tqdm.auto import tqdm

from ...errors import CertaError, InputError
from ...records import Record
from ..base import ModelReadoutMethod, Needs, register
from .likelihood import per_token

if TYPE_CHECKING:
    from ...models import LoadedModel

PREFIXES = ("none", "chat")


def pointwise_mutual_information(conditional: Sequence[float] | np.ndarray,
                                 unconditional: Sequence[float] | np.ndarray) -> float:
    """Mean token PMI ``mean_t [log p(y_t | y_<t, x) - log p(y_t | y_<t)]`` (LM-Polygraph's ``MeanPointwiseMutualInformation``).

    ``conditional`` holds the answer's n token log-probs given the question
    (what generation recorded); ``unconditional`` the same tokens' log-probs
    from a pass over the answer alone (:func:`unconditional_logprobs`). With n
    values the terms pair up one to one; with n - 1 values the first token had
    no context to be scored in, its unconditional probability counts as 1
    (log 1 = 0, LM-Polygraph's convention) and the rest pair up with tokens 1..n-1.
    Positive when the question made the answer more probable.
    """
    cond = np.asarray(conditional, dtype=float)
    uncond = np.asarray(unconditional, dtype=float)
    if cond.size == 0:
        raise InputError("pointwise_mutual_information: the answer has no tokens")
    if uncond.shape == (cond.size - 1,):
        uncond = np.r_[0.0, uncond]
    if uncond.shape != cond.shape:
        raise InputError(f"pointwise_mutual_information: {cond.size} conditional log-probs but {uncond.size} "
                         "unconditional ones; expected the same number or one fewer")
    return float(np.mean(cond - uncond))


@torch.no_grad()
def unconditional_logprobs(lm: LoadedModel, sequences: Sequence[Sequence[int]], *,
                           prefix_ids: Sequence[int] = (), batch_size: int = 16,
                           progress: bool = False) -> list[np.ndarray]:
    """Each sequence's token log-probs read without the question: ``log p(y_t | prefix, y_<t)``.

    One forward pass per batch of left-padded ``prefix + sequence`` rows, with
    position ids counted over real tokens only, so each row sees what it would
    see alone. With an empty prefix the first token has no context and is not
    scored: a sequence of n tokens gives n - 1 values (for tokens 1..n-1); with
    a prefix (a BOS token, an empty chat turn) it gives n values.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    prefix = [int(t) for t in prefix_ids]
    rows = [prefix + [int(t) for t in seq] for seq in sequences]
    first = max(1, len(prefix))  # index (within a row) of the first token that gets scored
    out: list[np.ndarray] = [np.empty(0) for _ in rows]
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    order = [i for i in sorted(range(len(rows)), key=lambda i: len(rows[i])) if len(rows[i]) > first]
    for start in tqdm(range(0, len(order), batch_size), desc="unconditional pass", unit="batch",
                      disable=not progress):
        batch = order[start:start + batch_size]
        width = max(len(rows[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            input_ids[r, width - len(rows[i]):] = torch.tensor(rows[i])
            mask[r, width - len(rows[i]):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with lm.answering():
            logits = lm.model(input_ids=input_ids.to(lm.device), attention_mask=mask.to(lm.device),
                              position_ids=positions.to(lm.device), use_cache=False).logits
        for r, i in enumerate(batch):
            offset = width - len(rows[i])
            # logits at padded position k predict the token at k + 1.
            step = logits[r, offset + first - 1: width - 1].float().log_softmax(-1)
            targets = input_ids[r, offset + first:].to(step.device)
            out[i] = step.gather(1, targets[:, None]).squeeze(1).double().cpu().numpy()
    return out


@register("pmi")
class PointwiseMutualInformation(ModelReadoutMethod):
    """Mean pointwise mutual information between question and answer tokens, through a logistic map.

    Takanobu et al. 2018; van der Poel et al. 2022 ("Mutual information
    alleviates hallucinations in abstractive summarization"); LM-Polygraph's
    ``MeanPointwiseMutualInformation``. ``PMI = mean_t [log p(y_t|y_<t,x) -
    log p(y_t|y_<t)]`` (:func:`pointwise_mutual_information`); the confidence is
    ``1 / (1 + exp(-PMI))``, 0.5 when the question does not change the
    answer's probability. The unconditional log-probs come from one extra
    forward pass over each answer's tokens alone (``prefix="none"``, the first
    token unscored, as LM-Polygraph) or after an empty chat turn
    (``prefix="chat"``, every token scored).
    """

    needs = Needs.LOGPROBS | Needs.MODEL
    cost = "one extra forward pass over the answer tokens (without the question) per answer"

    def __init__(self, model: LoadedModel | None = None, *, prefix: str = "none", batch_size: int = 16,
                 progress: bool = False):
        super().__init__(model, batch_size=batch_size, progress=progress, prefix=prefix)
        if prefix not in PREFIXES:
            raise InputError(f"prefix must be one of {PREFIXES}, got {prefix!r}")
        self.prefix = prefix

    def score(self, records: Sequence[Record]) -> np.ndarray:
        assert self.model is not None
        conditional = [per_token(r, "token_logprobs") for r in records]
        for record, logprobs in zip(records, conditional, strict=True):
            if len(record.token_ids) != len(logprobs):
                raise CertaError(f"record {record.id!r} has {len(record.token_ids)} token_ids but "
                                 f"{len(logprobs)} token_logprobs; PMI needs both from the same generation")
        prefix_ids: list[int] = []
        if self.prefix == "chat":
            prefix_ids = self.model.tokenizer(self.model.chat_prompt(""), add_special_tokens=False)["input_ids"]
        unconditional = unconditional_logprobs(self.model, [r.token_ids for r in records], prefix_ids=prefix_ids,
                                               batch_size=self.batch_size, progress=self.progress)
        return expit(np.array([pointwise_mutual_information(c, u) for c, u in zip(conditional, unconditional,
                                                                                   strict=True)]))
