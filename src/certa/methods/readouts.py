"""Reading a model's next-token distribution over a few chosen tokens.

Several confidence read-outs ask the same question of a language model: given
this prompt, how is the next-token probability split among a handful of
tokens? P(True) compares "A" with "B", verbalized confidence and ConfTuner
compare the confidence levels "0".."9" (or "0".."100"). This module answers it
in batches, with the left padding and position ids that batched decoding
uses, and checks that a continuation really is the single token a read-out
assumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..models.tensors import left_pad, positions_from_mask

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..models import LoadedModel

__all__ = [
    "continuation_token_ids",
    "restricted_log_softmax",
    "restricted_next_token_probs",
    "restricted_next_token_probs_from_ids",
]


def restricted_log_softmax(logits: torch.Tensor, token_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Log-softmax over ``token_ids`` only, along the last (vocabulary) axis; differentiable.

    ``logits[..., V]`` → ``[..., len(token_ids)]``, computed in float32 so that
    bf16 logits do not lose the small differences between similar levels.
    """
    index = torch.as_tensor(token_ids, dtype=torch.long, device=logits.device)
    return torch.log_softmax(logits.index_select(-1, index).float(), dim=-1)


def restricted_next_token_probs(
    lm: LoadedModel,
    texts: Sequence[str],
    token_ids: Sequence[int],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """Next-token probabilities after each text, renormalised over ``token_ids``.

    ``texts`` are complete prompt strings, chat template already applied, so
    they are tokenized without adding special tokens. Returns an array of
    shape ``[len(texts), len(token_ids)]`` whose rows sum to one.
    """
    encoded = [lm.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    return restricted_next_token_probs_from_ids(lm, encoded, token_ids, batch_size=batch_size, progress=progress)


def restricted_next_token_probs_from_ids(
    lm: LoadedModel,
    sequences: Sequence[Sequence[int]],
    token_ids: Sequence[int],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """Same as :func:`restricted_next_token_probs` for already-tokenized sequences.

    Lets a caller reuse the token ids a generation produced instead of
    re-tokenizing its text (which does not always give the same ids back).
    """
    if not token_ids:
        raise InputError("token_ids is empty: name at least one token to compare")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    for i, seq in enumerate(sequences):
        if len(seq) == 0:
            raise InputError(f"text {i} tokenizes to nothing; cannot read a next-token distribution")
    out = np.empty((len(sequences), len(token_ids)), dtype=np.float64)
    # Batches of similar length waste less compute on padding; results go back in input order.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="scoring", unit="batch", disable=not progress):
        rows = order[start:start + batch_size]
        logits = _last_logits(lm, [sequences[i] for i in rows])
        out[rows] = restricted_log_softmax(logits, token_ids).exp().cpu().numpy()
    return out


@torch.no_grad()
def _last_logits(lm: LoadedModel, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """Logits at the last real position of each sequence, from one left-padded forward."""
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    input_ids, attention_mask = left_pad(sequences, pad_id, lm.device)
    output = lm.model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions_from_mask(attention_mask),
        logits_to_keep=1,  # left padding puts every row's last token in the final column
        use_cache=False,
    )
    return output.logits[:, -1, :]


def continuation_token_ids(
    tokenizer: PreTrainedTokenizerBase, prefix: str, continuations: Sequence[str]
) -> list[int] | None:
    """The token id each continuation adds after ``prefix``, or None if any is not one clean token.

    A continuation is clean when tokenizing ``prefix + continuation`` gives the
    tokens of ``prefix`` followed by exactly one more token — so reading the
    next-token distribution after ``prefix`` really compares the continuations.
    """
    base = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    for text in continuations:
        full = tokenizer(prefix + text, add_special_tokens=False)["input_ids"]
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            return None
        ids.append(int(full[-1]))
    if len(set(ids)) != len(ids):
        return None
    return ids


