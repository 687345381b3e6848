"""The answer's KV cache, encoded once, and the read-outs that extend it by a few tokens.

GrACE, ConfTuner and verbalized confidence all read a next-token distribution
*after* the answer: GrACE one step later (P(<CNF>)), the verbal read-outs after
a short follow-up turn that asks for a confidence and ends in ``Confidence:``.
Each is a suffix of prompt + answer, so the prompt and the answer are encoded
once (:func:`encode_answers`, with the base model) and a read-out costs only
its suffix tokens (:func:`extend`), with whichever adapter the method reads
with. Training runs the same two calls, with gradients through the suffix.

The cache covers prompt + answer minus the answer's last token: that token is
fed first in every suffix, exactly as after HF ``generate`` (which never feeds
its final token), so one code path serves offline scoring and the generation hook.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..models import end_token_ids
from ..models.adapters import adapter_state, unwrap
from ..models.tensors import (
    cache_length,
    cache_parameter,
    crop_cache,
    head_inputs,
    left_pad,
    output_cache,
    positions_from_mask,
)
from ..models.token_rows import forward_logits
from ..prompts import question_prompt
from ..records import Record

if TYPE_CHECKING:
    from ..models import LoadedModel


@dataclass
class AnswerCache:
    """A batch of prompt + answer[:-1], encoded: the state every suffix read-out extends."""

    past_key_values: Any        # KV cache over the encoded slots
    mask: torch.Tensor          # [B, L] 1 on real tokens of the cache, 0 on padding or slots to ignore
    last_tokens: torch.Tensor   # [B] each answer's last token, not yet fed
    last_hidden: torch.Tensor | None = None  # [B, H] final-layer state at the last encoded slot


def prompt_ids(lm: LoadedModel, record: Record) -> list[int]:
    """Token ids of the exact prompt text the answer was generated from (chat template included); for an
    answer that comes without its prompt (another model's), certa's own prompt for its question."""
    text = record.prompt or lm.chat_prompt(question_prompt(record.example()))
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def response_ids(lm: LoadedModel, record: Record) -> list[int]:
    """The answer's own token ids when generation stored them (no re-tokenisation), else its text's,
    taken as a finished turn (the end-of-turn token appended), as generation records an answer."""
    if record.token_ids:
        return list(record.token_ids)
    return lm.tokenizer(record.response, add_special_tokens=False)["input_ids"] + end_token_ids(lm)[-1:]


def answer_ids(lm: LoadedModel, record: Record) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of a record; an empty response is an error naming it."""
    response = response_ids(lm, record)
    if not response:
        raise InputError(f"record {record.id!r}: empty response, nothing to read a confidence after")
    return prompt_ids(lm, record), response


def encode_answers(model: torch.nn.Module, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, *,
                   adapter_enabled: bool = False, adapter_name: str | None = None,
                   hidden: bool = False) -> AnswerCache:
    """Encode prompt + response[:-1] of each pair once, without gradients (the base model unless told).

    The cache is a plain ``DynamicCache`` (full layers whatever the model's config), as decoding's is: the
    config-aware cache a model builds itself has sliding-window layers (Gemma-3), which cannot be cropped
    back after a read-out; the window still applies through the mask, so the values equal the generation hook's.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids, mask = left_pad([list(p) + list(r[:-1]) for p, r in pairs], pad_id, device)
    with torch.no_grad(), adapter_state(model, adapter_enabled, adapter_name), head_inputs(unwrap(model), hidden) as seen:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                    use_cache=True, logits_to_keep=1, **{cache_parameter(model): DynamicCache()})
    last = torch.tensor([r[-1] for _, r in pairs], device=device)
    return AnswerCache(output_cache(out), mask, last, seen[-1] if hidden else None)


def extend(model: torch.nn.Module, cache: AnswerCache, suffixes: Sequence[Sequence[int]] | None = None, *,
           adapter_enabled: bool = True, adapter_name: str | None = None, hidden: bool = False) -> Any:
    """Feed each row's last answer token plus its suffix after the cache; return the model output.

    ``suffixes`` may differ in length per row: they are right-padded, and
    :func:`last_positions` says where each row's read-out is. Position ids
    continue each row's count of real tokens. Gradients flow when called outside
    ``no_grad`` (training). The cache is cropped back afterwards, so several
    read-outs can extend the same cache one after another.
    """
    ids, mask, positions = _suffix_inputs(cache, suffixes)
    with _restored(cache), adapter_state(model, adapter_enabled, adapter_name):
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                     **{cache_parameter(model): cache.past_key_values}, output_hidden_states=hidden)


def step_logits(model: torch.nn.Module, cache: AnswerCache, *, adapter_name: str | None = None) -> torch.Tensor:
    """Logits ``[B, V]`` one step after the cache, each row's last answer token fed, adapter on.

    An adapter with trainable token rows (GrACE's ``<CNF>``) reads through
    :func:`certa.models.token_rows.forward_logits`: the same numbers as :func:`extend`'s,
    without PEFT's per-forward copy of the embedding matrix.
    """
    ids, mask, positions = _suffix_inputs(cache, None)
    with _restored(cache), adapter_state(model, True, adapter_name):
        logits = forward_logits(model, ids, attention_mask=mask, position_ids=positions, use_cache=True,
                                **{cache_parameter(model): cache.past_key_values})
    return logits[:, 0]


def _suffix_inputs(cache: AnswerCache, suffixes: Sequence[Sequence[int]] | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask over cache + fed slots, position ids) of each row's last answer token plus
    its right-padded suffix."""
    rows = cache.last_tokens.shape[0]
    suffixes = [list(s) for s in suffixes] if suffixes is not None else [[] for _ in range(rows)]
    width = 1 + max(len(s) for s in suffixes)
    device = cache.last_tokens.device
    ids = torch.zeros((rows, width), dtype=torch.long, device=device)
    fed = torch.zeros((rows, width), dtype=torch.long, device=device)
    for i, suffix in enumerate(suffixes):
        row = [int(cache.last_tokens[i])] + suffix
        ids[i, :len(row)] = torch.tensor(row, device=device)
        fed[i, :len(row)] = 1
    start = cache.mask.long().sum(-1, keepdim=True)
    positions = start + torch.arange(width, device=device)[None, :]
    return ids, torch.cat([cache.mask.long(), fed], dim=-1), positions


@contextlib.contextmanager
def _restored(cache: AnswerCache) -> Iterator[None]:
    """Crop the cache back to its length before the block (the block's forward appends slots to it)."""
    before = cache_length(cache.past_key_values)
    try:
        yield
    finally:
        crop_cache(cache.past_key_values, before)


def last_positions(suffixes: Sequence[Sequence[int]] | None, rows: int) -> torch.Tensor:
    """Index of each row's last fed token in :func:`extend`'s output (its read-out position)."""
    if suffixes is None:
        return torch.zeros(rows, dtype=torch.long)
    return torch.tensor([len(s) for s in suffixes], dtype=torch.long)


def read_logits(output: Any, suffixes: Sequence[Sequence[int]] | None) -> torch.Tensor:
    """Logits at each row's read-out position, ``[B, V]``, from :func:`extend`'s output."""
    logits = output.logits
    index = last_positions(suffixes, logits.shape[0]).to(logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), index]


#: False runs the LM head over every suffix position in :func:`readout_logits` (benchmarks compare the two).
HEAD_AT_READ_POSITION_ONLY = True


def readout_logits(model: torch.nn.Module, cache: AnswerCache, suffixes: Sequence[Sequence[int]], *,
                   adapter_enabled: bool = True, adapter_name: str | None = None) -> torch.Tensor:
    """Logits ``[B, V]`` at each row's read-out position after its suffix over ``cache``: ``read_logits(extend(...))``.

    Without gradients (scoring), when every suffix has the same length (one follow-up text for every row,
    the usual case), the read-out is each row's last position and the LM head runs there alone
    (``logits_to_keep=1``) instead of over every suffix token: 1.17× faster on the default model
    (V = 49,152, a 5-token cue; ``benchmarks/readout_head.py``). With gradients (training) the same cut
    measured 0.88–0.93× a step (docs/benchmarks.md), so training keeps the full head.
    """
    if (not HEAD_AT_READ_POSITION_ONLY or torch.is_grad_enabled()
            or len({len(s) for s in suffixes}) != 1):
        return read_logits(extend(model, cache, suffixes, adapter_enabled=adapter_enabled,
                                  adapter_name=adapter_name), suffixes)
    ids, mask, positions = _suffix_inputs(cache, suffixes)
    with _restored(cache), adapter_state(model, adapter_enabled, adapter_name):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                    **{cache_parameter(model): cache.past_key_values})
    return out.logits[:, -1]


def content_key(prompt: Sequence[int], response: Sequence[int]) -> str:
    """A key for an answer's encoding: equal token ids, equal key (so equal answers share one encoding)."""
    return hashlib.sha1(repr((list(prompt), list(response))).encode()).hexdigest()


class PrefixStore:
    """Answers' encoded prompt + answer[:-1], computed once and reused (every training epoch, every read-out).

    In suffix mode the adapter runs only after the answer, so the base model's
    encoding of a training answer never changes while training: encoding it
    again at every step would spend most of the step on work already done. The
    store keeps each answer's KV slots on the CPU and assembles a batch's cache
    by left padding. Scoring shares one store per adapter state between the
    read-outs of a scoring pass (:mod:`certa.methods.shared_encodings`), which
    encode with the adapter state given here and keep each answer's last hidden
    state too (``hidden``).

    Which answers are kept is decided by :meth:`plan` alone — the planned answers,
    in the planned order, while they fit in ``max_gb``; the others are encoded at
    each step, with their batch. Kept answers are encoded in fixed groups of
    ``group_size`` answers of similar length, also decided by the plan: the first
    time a step needs one, its whole group is encoded together. So an answer's
    slots are the same whichever step first needs it (a run resumed from a
    checkpoint computes exactly what the uninterrupted run did), and the encoding
    still runs in batches (one answer at a time was about 4x slower on a CPU).
    """

    group_size = 16

    def __init__(self, max_gb: float, *, adapter_enabled: bool = False, adapter_name: str | None = None,
                 hidden: bool = False):
        self.max_bytes = int(max_gb * 1024 ** 3)
        self.adapter_enabled = adapter_enabled
        self.adapter_name = adapter_name
        self.hidden = hidden
        self.used = 0
        #: Bytes the kept answers take once all are encoded (``used`` plus what is planned but not yet encoded).
        self.reserved = 0
        #: Answers encoded so far (kept groups and batches' others alike).
        self.encoded = 0
        self._planned: dict[str, int] = {}          # key -> encoded length, in plan order
        self._segment: dict[str, int] = {}          # key -> which plan() call declared it first
        self._plan_calls = 0
        self._kept: set[str] | None = None          # decided at the first encoding (bytes per token known)
        self._group: dict[str, list[str]] = {}      # kept key -> the kept keys encoded with it
        self._pairs: dict[str, tuple[Sequence[int], Sequence[int]]] = {}
        self._slots: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._hidden: dict[str, torch.Tensor] = {}  # key -> last hidden state [H] (``hidden`` stores only)

    def plan(self, keys: Sequence[str], pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> None:
        """Declare answers that will be read (training items first, then held-out ones).

        Each call is its own set of encoding groups: answers read at different times (the answers
        scored and the answers a method fits on) are never encoded together, so reading one set
        does not pay for the other.
        """
        segment, self._plan_calls = self._plan_calls, self._plan_calls + 1
        for key, pair in zip(keys, pairs, strict=True):
            self._planned.setdefault(key, len(pair[0]) + len(pair[1]) - 1)
            self._segment.setdefault(key, segment)
            self._pairs.setdefault(key, pair)
        self._kept = None

    def __contains__(self, key: object) -> bool:
        """Whether the answer with this key is encoded and kept."""
        return key in self._slots

    def cache(self, model: torch.nn.Module, keys: Sequence[str], pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
              pad_id: int) -> AnswerCache:
        """The batch's :class:`AnswerCache`, from stored slots where there are any (``last_hidden`` set when
        the store keeps hidden states)."""
        missing = [i for i, key in enumerate(keys) if key not in self._slots]
        kept = self._kept_keys(model, pad_id, pairs[missing[0]]) if missing else set()
        for i in missing:
            if keys[i] in kept and keys[i] not in self._slots:
                group = self._group[keys[i]]
                for key, row in zip(group, self._encode(model, [self._pairs[k] for k in group], pad_id), strict=True):
                    self._store(key, row)
        fresh = [i for i in missing if keys[i] not in self._slots]
        encoded = dict(zip(fresh, self._encode(model, [pairs[i] for i in fresh], pad_id), strict=True)) if fresh else {}
        rows = [encoded[i] if i in encoded else (self._slots[key], self._hidden.get(key))
                for i, key in enumerate(keys)]
        return _assemble([slots for slots, _ in rows], [pair[1][-1] for pair in pairs],
                         next(model.parameters()).device, [state for _, state in rows] if self.hidden else None)

    def _encode(self, model: torch.nn.Module, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int
                ) -> list[tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]]:
        """Each pair's (KV slots, last hidden state or None), encoded together in this store's adapter state."""
        cache = encode_answers(model, pairs, pad_id, adapter_enabled=self.adapter_enabled,
                               adapter_name=self.adapter_name, hidden=self.hidden)
        self.encoded += len(pairs)
        states = ([state.cpu().clone() for state in cache.last_hidden] if cache.last_hidden is not None
                  else [None] * len(pairs))
        return list(zip(_slots(cache), states, strict=True))

    def _kept_keys(self, model: torch.nn.Module, pad_id: int, probe: tuple[Sequence[int], Sequence[int]]
                   ) -> set[str]:
        """The planned answers that fit, measuring the bytes per token on one token of ``probe`` encoded alone
        (a KV slot has the same size at every position)."""
        if self._kept is None:
            self._kept = set()
            budget = self.max_bytes - self.used
            if self.max_bytes > 0 and self._planned:
                token = (list(probe[0]) + list(probe[1]))[:1]
                cache = encode_answers(model, [(token, token)], pad_id, hidden=self.hidden)
                per_token = _size(_slots(cache)[0])
                per_answer = 0 if cache.last_hidden is None else _tensor_size(cache.last_hidden[0])
                for key, length in self._planned.items():
                    if key in self._slots:
                        continue
                    if length * per_token + per_answer > budget:
                        break      # a prefix of the plan: the choice is the same in every run
                    self._kept.add(key)
                    budget -= length * per_token + per_answer
                self._group = _groups(self._kept, self._planned, self._segment, self.group_size)
            self.reserved = self.max_bytes - budget if self._kept else self.used
        return self._kept

    def _store(self, key: str, row: tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]) -> None:
        slots, state = row
        self._slots[key] = slots
        self.used += _size(slots)
        if state is not None:
            self._hidden[key] = state
            self.used += _tensor_size(state)


def _groups(kept: set[str], lengths: dict[str, int], segments: dict[str, int], size: int) -> dict[str, list[str]]:
    """Each kept key's encoding group: within each plan segment, consecutive runs of ``size`` keys ordered
    by (length, key), so a group pads little and depends on the plan alone."""
    groups: list[list[str]] = []
    for segment in sorted({segments[key] for key in kept}):
        ordered = sorted((key for key in kept if segments[key] == segment), key=lambda key: (lengths[key], key))
        groups += [ordered[i:i + size] for i in range(0, len(ordered), size)]
    return {key: group for group in groups for key in group}


def _slots(cache: AnswerCache) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Each row's KV slots (its real tokens only), moved to the CPU."""
    lengths = cache.mask.long().sum(-1).tolist()
    layers = [(layer.keys, layer.values) for layer in cache.past_key_values.layers]
    return [[(k[row, :, k.shape[2] - n:].detach().cpu(), v[row, :, v.shape[2] - n:].detach().cpu())
             for k, v in layers] for row, n in enumerate(lengths)]


def _tensor_size(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _size(slots: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(_tensor_size(k) + _tensor_size(v) for k, v in slots)


def _assemble(rows: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor]]], last_tokens: Sequence[int],
              device: torch.device, hidden: Sequence[torch.Tensor | None] | None = None) -> AnswerCache:
    """Left-pad per-answer KV slots into one batch cache with its mask (and the rows' last hidden states,
    when every row has one)."""
    from transformers import DynamicCache

    lengths = [row[0][0].shape[1] for row in rows]
    width = max(lengths)
    cache = DynamicCache()
    for layer in range(len(rows[0])):
        keys, values = [], []
        for row, length in zip(rows, lengths, strict=True):
            k, v = row[layer]
            pad = (0, 0, width - length, 0)  # left padding along the slot axis
            keys.append(torch.nn.functional.pad(k, pad))
            values.append(torch.nn.functional.pad(v, pad))
        cache.update(torch.stack(keys).to(device), torch.stack(values).to(device), layer)
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], device=device)
    states = (torch.stack(list(hidden)).to(device)  # type: ignore[arg-type]
              if hidden is not None and all(state is not None for state in hidden) else None)
    return AnswerCache(cache, mask, torch.tensor(list(last_tokens), device=device), states)
