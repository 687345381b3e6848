"""GrACE's read-out: c = softmax(W·z)[<CNF>] after the answer, one function for every caller.

Training, the generation hook and offline scoring all compute the confidence
through :func:`readout_step` (one adapter-on decoding step over the answer's
KV cache: feed the last response token, which HF ``generate`` never feeds, and
read P(<CNF>) at that position) or :func:`free_readout` (the ``<CNF>`` row
alone, applied to the final-layer state generation already computed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...errors import CertaError, InputError
from ...models import end_token_ids
from ...models.adapters import adapter_state, unwrap
from ...models.tensors import cache_length, crop_cache, left_pad, positions_from_mask
from ...records import Record
from .config import Readout

if TYPE_CHECKING:
    from ...models import LoadedModel

CNF_TOKEN = "<CNF>"


def cnf_token_id(tokenizer: Any) -> int:
    """Id of ``<CNF>`` in ``tokenizer``; a clear error when the model was not trained with GrACE."""
    token_id = tokenizer.convert_tokens_to_ids(CNF_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise CertaError(f"the tokenizer has no {CNF_TOKEN} token: load a trained GrACE artifact")
    return int(token_id)


# ---------------------------------------------------------------- the read-out


@dataclass
class Prefix:
    """An encoded prompt+response[:-1] batch, ready for the read-out step."""

    past_key_values: Any        # KV cache over the prefix
    cache_mask: torch.Tensor    # [B, L] 1 on real tokens of the cache
    last_tokens: torch.Tensor   # [B] the last response token of each row (not yet fed)
    last_hidden: torch.Tensor   # [B, H] final-layer state at the last prefix position (end-predicting)


def encode_prefix(model: torch.nn.Module, prefixes: Sequence[Sequence[int]], last_tokens: Sequence[int],
                  pad_id: int, *, adapter: bool, adapter_name: str | None = None) -> Prefix:
    """Run prompt+response[:-1] once (no gradient) to get the KV cache the read-out step extends."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prefixes, pad_id, device)
    with torch.no_grad(), adapter_state(model, adapter, adapter_name):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                    use_cache=True, output_hidden_states=True, logits_to_keep=1)
    return Prefix(out.past_key_values, mask, torch.tensor(list(last_tokens), device=device),
                  out.hidden_states[-1][:, -1])


def step_forward(model: torch.nn.Module, past_key_values: Any, cache_mask: torch.Tensor,
                 last_tokens: torch.Tensor, *, adapter_name: str | None = None, hidden: bool = False,
                 adapter_enabled: bool = True) -> Any:
    """Feed each row's last token at one fresh slot after the cache (adapter on unless told otherwise);
    the cache grows by one slot."""
    position = cache_mask.long().sum(-1, keepdim=True)
    mask = torch.cat([cache_mask.long(), torch.ones_like(position)], dim=-1)
    with adapter_state(model, adapter_enabled, adapter_name):
        return model(input_ids=last_tokens.view(-1, 1), attention_mask=mask, position_ids=position,
                     past_key_values=past_key_values, use_cache=True, output_hidden_states=hidden)


def readout_step(model: torch.nn.Module, past_key_values: Any, cache_mask: torch.Tensor,
                 last_tokens: torch.Tensor, cnf_id: int, *, adapter_name: str | None = None) -> torch.Tensor:
    """GrACE's read-out: c = P(<CNF> next) after feeding each row's last response token, adapter on.

    ``past_key_values`` covers the slots of ``cache_mask`` (1 = real token, 0 =
    padding or a slot to ignore); the token is fed at one fresh slot whose
    position id is the number of real tokens before it. Gradients flow when
    called outside ``no_grad`` (training). The cache grows by one slot.
    """
    out = step_forward(model, past_key_values, cache_mask, last_tokens, adapter_name=adapter_name)
    return out.logits[:, -1].float().softmax(-1)[:, cnf_id]


def free_readout(model: torch.nn.Module, hidden: torch.Tensor, cnf_id: int, *,
                 adapter_name: str | None = None) -> torch.Tensor:
    """Zero-overhead read-out: c = softmax(W·z)[<CNF>] at the state that already predicted the end."""
    with adapter_state(model, True, adapter_name):
        head = unwrap(model).get_output_embeddings()
        logits = head(hidden.to(head.weight.dtype))
    return logits.float().softmax(-1)[..., cnf_id]


# ---------------------------------------------------------------- records → token ids


def prompt_ids(lm: LoadedModel, record: Record) -> list[int]:
    """Token ids of the exact prompt text the answer was generated from (chat template included)."""
    return lm.tokenizer(record.prompt, add_special_tokens=False)["input_ids"]


def response_ids(lm: LoadedModel, record: Record) -> list[int]:
    """The answer's own token ids when generation stored them (no re-tokenisation), else its text's."""
    if record.token_ids:
        return list(record.token_ids)
    # A bare answer text (e.g. from another model) is taken as a finished turn, as generation records it.
    ids = lm.tokenizer(record.response, add_special_tokens=False)["input_ids"]
    return ids + end_token_ids(lm)[-1:]


def split_record(lm: LoadedModel, record: Record) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of a record; an empty response is an error naming it."""
    response = response_ids(lm, record)
    if not response:
        raise InputError(f"record {record.id!r}: empty response, nothing to read a confidence after")
    return prompt_ids(lm, record), response


def offline_confidence(lm: LoadedModel, records: Sequence[Record], *, readout: Readout = "step",
                       adapter_for_answer: bool = False, batch_size: int = 16) -> np.ndarray:
    """GrACE confidence of existing answers (ours or another model's), batched."""
    cnf_id = cnf_token_id(lm.tokenizer)
    pad_id = lm.tokenizer.pad_token_id
    out: list[np.ndarray] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        if readout == "free" and all(r.hidden_state for r in chunk):
            hidden = torch.tensor([r.hidden_state for r in chunk], device=lm.device)
            with torch.no_grad():
                out.append(free_readout(lm.model, hidden, cnf_id, adapter_name=lm.adapter).cpu().numpy())
            continue
        pairs = [split_record(lm, r) for r in chunk]
        prefix = encode_prefix(lm.model, [p + r[:-1] for p, r in pairs], [r[-1] for _, r in pairs], pad_id,
                               adapter=adapter_for_answer, adapter_name=lm.adapter)
        with torch.no_grad():
            if readout == "free":
                conf = free_readout(lm.model, prefix.last_hidden, cnf_id, adapter_name=lm.adapter)
            else:
                conf = readout_step(lm.model, prefix.past_key_values, prefix.cache_mask, prefix.last_tokens,
                                    cnf_id, adapter_name=lm.adapter)
        out.append(conf.cpu().numpy())
    return np.concatenate(out).astype(float)


# ---------------------------------------------------------------- generation hook


def decode_state_inputs(state: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(cache mask, last tokens) for the read-out step from a generation's ``DecodeState``.

    The cache covers every column but the last. A row that used all T steps
    has its last token in that final, unfed column. A row that finished early
    has its last token inside the cache, computed without the adapter: mask
    that slot and re-feed the token at the fresh slot (its position id is
    still the count of real tokens before it).
    """
    sequences, mask = state.sequences, state.attention_mask
    cache_len = sequences.shape[1] - 1
    cache_mask = mask[:, :cache_len].clone()
    lengths = torch.tensor(state.response_lengths, device=sequences.device)
    last_col = state.prompt_length + lengths - 1
    rows = torch.arange(sequences.shape[0], device=sequences.device)
    inside = last_col < cache_len
    cache_mask[rows[inside], last_col[inside]] = 0
    return cache_mask, sequences[rows, last_col]


class GraceHook:
    """Generation hook: reads GrACE's confidence from the decoding state, with no re-encoding.

    Generation calls it after each batch (``certa.generate`` does so on its own
    for a GrACE artifact); the confidences land in ``Generation.confidence["grace"]``
    (and ``sample_confidence["grace"]`` for samples), tagged with the artifact that read them.
    """

    name = "grace"

    def __init__(self, readout: Readout | None = None):
        self.readout = readout

    def on_batch_end(self, lm: LoadedModel, state: Any) -> list[float]:
        cnf_id = cnf_token_id(lm.tokenizer)
        readout = self.readout or (lm.artifact or {}).get("method_info", {}).get("readout", "step")
        with torch.no_grad():
            if readout == "free":
                conf = free_readout(lm.model, state.last_hidden, cnf_id, adapter_name=lm.adapter)
            else:
                cache = state.past_key_values
                before = cache_length(cache)
                cache_mask, last = decode_state_inputs(state)
                conf = readout_step(lm.model, cache, cache_mask, last, cnf_id, adapter_name=lm.adapter)
                crop_cache(cache, before)  # leave generate's cache as we found it
        return conf.float().cpu().tolist()
