"""A step-wise decoder with continuous batching: finished rows leave, queued prompts take their place.

``transformers.generate`` decodes a batch until its longest row ends, so short
answers wait for long ones. :class:`Decoder` keeps one batch-major KV cache and
steps it one token at a time (Yu et al. 2022, "Orca: a distributed serving
system for transformer-based generative models", OSDI — iteration-level
scheduling): after every step the rows that ended are cut out of the cache and
up to ``max_rows`` queued requests are prefilled and joined to it. Rows of
different lengths share the cache through left padding: every row's real
tokens sit at the right end of its slots, padding is masked, and positions
count real tokens only, so a row decodes exactly as it would alone.

Per row it records what confidence methods read: each token's log-prob and
entropy from the raw logits, optionally the distribution statistics of
:func:`certa.methods.logprobs.distribution.token_distribution_stats`, the
final-layer state that predicted the last token, and, for read-out hooks, the
row's KV cache (prompt + answer minus the last token, which is never fed), so
a hook such as GrACE's reads its confidence with one step over it
(:func:`answer_cache`, :func:`run_hooks`).

Used offline by :func:`certa.generation.generate` (a list of prompts, all
queued at once) and by a server (requests queued as they arrive)::

    decoder = Decoder(lm, max_rows=16)
    decoder.add(Request(prompt_ids, max_new_tokens=32, key="q1"))
    while not decoder.idle:
        for row in decoder.step():
            ...  # row.key, row.token_ids, row.logprobs, row.finish_reason, ...
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from .errors import CertaError, InputError
from .methods.answer_cache import AnswerCache
from .methods.logprobs.distribution import token_distribution_stats
from .models import answer_stop_strings, end_token_ids
from .models.tensors import (
    cache_length,
    cache_parameter,
    crop_cache,
    head_inputs,
    left_pad,
    positions_from_mask,
)

if TYPE_CHECKING:
    from .models import LoadedModel

MIN_SHARED_PREFIX = 8
"""Shortest common prompt start that newcomers share instead of each encoding it (a system prompt)."""

KV = tuple[tuple[torch.Tensor, torch.Tensor], ...]
"""One row's KV cache: per layer ``(keys, values)``, each ``[1, heads, slots, head_dim]``, no padding."""


@dataclass
class Request:
    """One prompt to decode, with its own settings (rows of one batch may all differ).

    ``temperature == 0`` decodes greedily; otherwise tokens are sampled at
    ``temperature`` within the ``top_p`` nucleus from a generator seeded with
    ``seed`` that only this row uses, so a seeded answer is the same whatever
    else is in the batch. ``stop_token_ids`` / ``stop_strings`` of ``None`` mean
    the model's own (:func:`certa.models.end_token_ids`,
    :func:`certa.models.answer_stop_strings`); the token that ends the answer is
    kept in ``token_ids``. ``key`` is the caller's handle, returned with the row.
    """

    prompt_ids: Sequence[int]
    max_new_tokens: int = 48
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_token_ids: Sequence[int] | None = None
    stop_strings: Sequence[str] | None = None
    hidden_state: bool = False
    token_stats: bool = False
    keep_cache: bool = False
    key: Any = None


@dataclass
class FinishedRow:
    """A decoded answer with everything recorded along the way."""

    key: Any
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    """log p(token) under the raw logits (before suppression, temperature or top-p)."""
    entropies: list[float]
    """entropy of each step's raw next-token distribution, in nats."""
    finish_reason: str
    """``"stop"`` (an end token or stop string ended it) or ``"length"`` (``max_new_tokens`` reached)."""
    vocab_size: int
    hidden_state: torch.Tensor | None = None
    """``[hidden]`` final-layer (post-norm) state at the position that predicted the last token."""
    token_stats: dict[str, list[float]] | None = None
    kv: KV | None = None
    """The row's KV cache over prompt + ``token_ids[:-1]`` (``keep_cache=True``); see :func:`answer_cache`."""
    seconds: float = 0.0
    """This row's share of the decoder's compute time (each forward split evenly among its rows)."""


@dataclass
class FinishedBatch:
    """Finished rows as a read-out hook sees them: the rows and their caches, merged (:func:`answer_cache`)."""

    rows: list[FinishedRow]
    cache: AnswerCache


class GenerationHook(Protocol):
    """Reads one confidence per finished row from its KV cache (e.g. GrACE's ``<CNF>`` step).

    ``on_finished`` may extend ``batch.cache`` (:func:`certa.methods.answer_cache.extend`);
    the cache is cropped back before the next hook reads it.
    """

    name: str

    def on_finished(self, lm: LoadedModel, batch: FinishedBatch) -> list[float]: ...


@dataclass
class _Row:
    """A row in flight."""

    request: Request
    prompt_ids: list[int]
    stop_ids: frozenset[int]
    stop_strings: tuple[str, ...]
    generator: torch.Generator | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    stats: dict[str, list[float]] = field(default_factory=dict)
    hidden: torch.Tensor | None = None
    seconds: float = 0.0
    finish_reason: str | None = None


@dataclass
class _Batch:
    """Rows sharing one KV cache: ``mask[r, j]`` is 1 where slot ``j`` holds a real token of row ``r``."""

    rows: list[_Row]
    cache: Any
    mask: torch.Tensor
    next_ids: torch.Tensor  # [rows] each row's newest token, chosen but not yet fed


@dataclass
class _Prefilled:
    """A prefilled row waiting for a slot: its prompt's KV (real slots only) and its first token."""

    row: _Row
    kv: KV
    next_id: torch.Tensor


class Decoder:
    """Continuous-batching greedy/sampling decoder over an HF causal LM with a KV cache.

    ``add`` queues requests (safe from another thread, as is ``cancel``);
    ``step`` — from one thread only — admits queued requests into free slots
    (up to ``max_rows`` in flight), advances every row by one token and returns
    the rows that finished. ``suppress_token_ids`` are never generated (default:
    tokens certa artifacts added, e.g. GrACE's ``<CNF>``). Decoding runs in
    :meth:`LoadedModel.answering` (the base model for a certa artifact).

    ``share_prefix``: a prompt start that newcomers share with each other or with
    the previous prefill (a system prompt), at least :data:`MIN_SHARED_PREFIX`
    tokens, is encoded once and its KV copied (off for sliding-window models).
    ``prefill_rows``: when the prefilled rows cannot fill the free slots, up to
    that many queued prompts (default ``max_rows``) are prefilled together — one
    forward, cheaper per prompt than a few at a time — and wait, prefilled, for
    slots, so a finished row's slot is taken at the very next step.
    If ``step`` raises (out of memory, interrupted), the rows in flight are
    dropped, their keys listed in ``lost_keys``, and the decoder stays usable.
    """

    def __init__(self, lm: LoadedModel, *, max_rows: int = 16, suppress_token_ids: Sequence[int] | None = None,
                 share_prefix: bool = True, prefill_rows: int | None = None):
        if max_rows < 1:
            raise InputError(f"max_rows must be at least 1, got {max_rows}")
        self.lm = lm
        self.max_rows = max_rows
        self.prefill_rows = max(1, prefill_rows or max_rows)
        self.suppress_token_ids = sorted(added_token_ids(lm) if suppress_token_ids is None else suppress_token_ids)
        self._default_stops = tuple(end_token_ids(lm))
        self._default_stop_strings = tuple(answer_stop_strings(lm))
        self._pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        self._queue: deque[Request] = deque()
        self._cancelled: set[Any] = set()
        self._lock = threading.Lock()
        self._batch: _Batch | None = None
        self._pool: deque[_Prefilled] = deque()  # prefilled rows waiting for a slot
        self._suppress: torch.Tensor | None = None
        self.vocab_size = 0
        self._cache_name: str | None = None
        self.share_prefix = share_prefix and not _sliding_window(lm.model)
        self._prefix: tuple[tuple[int, ...], KV] | None = None
        self.lost_keys: list[Any] = []

    # --- the API ------------------------------------------------------------------------------

    def add(self, request: Request) -> None:
        """Queue a request; it joins the batch at the next step with a free slot."""
        _check_request(request)
        with self._lock:
            self._queue.append(request)

    def extend(self, requests: Iterable[Request]) -> None:
        """Queue several requests, in order."""
        for request in requests:
            self.add(request)

    def cancel(self, key: Any) -> None:
        """Drop the queued or running requests with ``key`` at the next step (they return no row)."""
        with self._lock:
            self._cancelled.add(key)

    @property
    def queued(self) -> int:
        """Requests waiting for a slot (prefilled or not)."""
        return len(self._queue) + len(self._pool)

    @property
    def running(self) -> int:
        """Rows in flight."""
        return len(self._batch.rows) if self._batch else 0

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing running."""
        return not self._queue and not self._pool and not self.running

    def run(self, requests: Iterable[Request] = ()) -> Iterator[FinishedRow]:
        """Queue ``requests`` and step until idle, yielding rows as they finish."""
        self.extend(requests)
        while not self.idle:
            yield from self.step()

    @torch.no_grad()
    def step(self) -> list[FinishedRow]:
        """Fill the free slots (prefilling queued prompts when needed), then advance every row one token."""
        self._drop_cancelled()
        finished: list[FinishedRow] = []
        newcomers: list[_Row] = []
        joining: list[_Prefilled] = []
        try:
            with self.lm.answering():
                free = self.max_rows - self.running
                if free > len(self._pool) and self._queue:
                    newcomers = self._take(max(self.prefill_rows, free - len(self._pool)))
                    finished += self._prefill_into_pool(newcomers)
                    newcomers = []
                if free and self._pool:
                    joining = [self._pool.popleft() for _ in range(min(free, len(self._pool)))]
                    self._batch = _merge(self._batch, _batch_of(joining))
                    joining = []
                if self._batch is not None:
                    running = self._decode_running()
                    finished += [self._finish(running, i) for i, row in enumerate(running.rows)
                                 if row.finish_reason is not None]
                    self._batch = _keep_unfinished(running)
        except BaseException:
            # A forward that failed part-way (out of memory, interrupted) leaves the cache half-extended:
            # drop every row in flight, say which, and stay usable for what is queued. Rows that ended at
            # their first token or were leaving the pool are in flight too: nobody else will report them.
            in_flight = (self._batch.rows if self._batch else []) + newcomers + [p.row for p in joining]
            self.lost_keys = [r.request.key for r in in_flight] + [f.key for f in finished]
            self._batch = None
            raise
        return finished

    # --- admission ----------------------------------------------------------------------------

    def _take(self, count: int) -> list[_Row]:
        with self._lock:
            taken = [self._queue.popleft() for _ in range(min(count, len(self._queue)))]
        return [self._new_row(r) for r in taken]

    def _prefill_into_pool(self, rows: list[_Row]) -> list[FinishedRow]:
        """Prefill ``rows``; those that end at their first token are returned, the rest wait in the pool."""
        batch = self._prefill(rows)
        finished = []
        for i, row in enumerate(batch.rows):
            if row.finish_reason is not None:
                finished.append(self._finish(batch, i))
            else:
                self._pool.append(_Prefilled(row, _row_kv(batch.cache, batch.mask[i].bool(), i), batch.next_ids[i]))
        return finished

    def _new_row(self, request: Request) -> _Row:
        generator = None
        if request.temperature > 0:
            generator = torch.Generator(device=self.lm.device).manual_seed(int(request.seed))
        stops = self._default_stops if request.stop_token_ids is None else tuple(request.stop_token_ids)
        strings = self._default_stop_strings if request.stop_strings is None else tuple(request.stop_strings)
        return _Row(request, [int(t) for t in request.prompt_ids], frozenset(int(t) for t in stops),
                    tuple(s for s in strings if s), generator)

    def _drop_cancelled(self) -> None:
        with self._lock:
            if not self._cancelled:
                return
            cancelled, self._cancelled = self._cancelled, set()
            self._queue = deque(r for r in self._queue if r.key not in cancelled)
        self._pool = deque(p for p in self._pool if p.row.request.key not in cancelled)
        if self._batch is not None:
            self._batch = _select(self._batch, [i for i, r in enumerate(self._batch.rows)
                                                if r.request.key not in cancelled])

    # --- forwards -----------------------------------------------------------------------------

    def _decode_running(self) -> _Batch:
        """Feed each running row its newest token (one slot more in the cache) and choose the next."""
        batch = self._batch
        assert batch is not None
        start = time.perf_counter()
        hidden_wanted = any(r.request.hidden_state or r.request.keep_cache for r in batch.rows)
        positions = batch.mask.sum(-1, keepdim=True)  # real tokens before the fed one
        mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
        with head_inputs(self.lm.model, hidden_wanted) as seen:
            out = self.lm.model(input_ids=batch.next_ids[:, None], attention_mask=mask, position_ids=positions,
                                use_cache=True, **self._cache_arg(batch.cache))
        advanced = _Batch(batch.rows, batch.cache, mask, batch.next_ids)  # the forward appended to the cache
        self._choose(advanced, out.logits[:, -1], seen[-1] if seen else None, start)
        return advanced

    def _prefill(self, rows: list[_Row]) -> _Batch:
        """Encode the newcomers' prompts (each distinct prompt once) and choose their first tokens.

        A prefix the prompts share with each other or with an earlier prefill (a
        system prompt) is encoded once and its KV copied into every row; only the
        rest of each prompt is fed, after it.
        """
        start = time.perf_counter()
        hidden_wanted = any(r.request.hidden_state or r.request.keep_cache for r in rows)
        distinct: dict[tuple[int, ...], int] = {}
        which = [distinct.setdefault(tuple(r.prompt_ids), len(distinct)) for r in rows]
        prompts = [list(p) for p in distinct]
        shared, kv = self._shared_prefix(prompts)
        ids, suffix_mask = left_pad([p[shared:] for p in prompts], self._pad_id, self.lm.device)
        cache = _cache_from(tuple((k.expand(len(prompts), -1, -1, -1), v.expand(len(prompts), -1, -1, -1))
                                  for k, v in kv)) if shared else _cache_from(())
        mask = torch.cat([torch.ones_like(suffix_mask[:, :1]).expand(-1, shared), suffix_mask], dim=1)
        with head_inputs(self.lm.model, hidden_wanted) as seen:
            out = self.lm.model(input_ids=ids, attention_mask=mask, position_ids=shared + positions_from_mask(suffix_mask),
                                use_cache=True, logits_to_keep=1, **self._cache_arg(cache))
        logits, hidden = out.logits[:, -1], (seen[-1] if seen else None)
        if not shared and self.share_prefix:  # a candidate for the next newcomers to share
            self._prefix = (tuple(prompts[0]), _row_kv(cache, mask[0].bool(), 0))
        batch = _Batch(rows, cache, mask, ids[:, -1])
        if len(distinct) < len(rows):
            index = torch.tensor(which, device=mask.device)
            batch = _Batch(rows, batch.cache, mask[index], batch.next_ids[index])
            _select_cache(batch.cache, index, 0)
            logits, hidden = logits[index], (hidden[index] if hidden is not None else None)
        self._choose(batch, logits, hidden, start)
        return batch

    def _shared_prefix(self, prompts: list[list[int]]) -> tuple[int, KV]:
        """Tokens every prompt starts with, and their KV (one row), when worth sharing; else ``(0, ())``.

        Each prompt keeps at least its last token to feed (its logits choose the
        first answer token). The prefix comes from the last stored one (an
        earlier prefill's) or, failing that, is encoded now from the prompts' own
        common start.
        """
        if not self.share_prefix:
            return 0, ()
        room = min(len(p) for p in prompts) - 1
        if self._prefix is not None:
            ids, kv = self._prefix
            length = min(_common_length([list(ids), *prompts]), room)
            if length >= MIN_SHARED_PREFIX:
                return length, tuple((k[:, :, :length], v[:, :, :length]) for k, v in kv)
        length = min(_common_length(prompts), room) if len(prompts) > 1 else 0
        if length < MIN_SHARED_PREFIX:
            return 0, ()
        cache = _cache_from(())
        ids = torch.tensor([prompts[0][:length]], device=self.lm.device)
        self.lm.model(input_ids=ids, position_ids=torch.arange(length, device=ids.device)[None], use_cache=True,
                      logits_to_keep=1, **self._cache_arg(cache))
        kv = _row_kv(cache, torch.ones(length, dtype=torch.bool, device=ids.device), 0)
        self._prefix = (tuple(prompts[0][:length]), kv)
        return length, kv

    def _cache_arg(self, cache: Any) -> dict[str, Any]:
        if self._cache_name is None:
            self._cache_name = cache_parameter(self.lm.model)
        return {self._cache_name: cache}

    def _choose(self, batch: _Batch, logits: torch.Tensor, hidden: torch.Tensor | None, start: float) -> None:
        """Pick each row's next token and record its log-prob, entropy and statistics (raw logits)."""
        raw = logits.float()
        logp = torch.log_softmax(raw, dim=-1)
        probs = logp.exp()
        # p·log p is 0 where p underflows to 0; without the where, 0 · -inf would give NaN.
        entropy = -torch.where(probs > 0, probs * logp, torch.zeros_like(logp)).sum(dim=-1)
        scores = raw
        if self.suppress_token_ids:
            scores = raw.clone()
            scores[:, self._suppressed(raw.shape[-1], raw.device)] = -float("inf")
        tokens = scores.argmax(dim=-1)
        for i, row in enumerate(batch.rows):
            if row.generator is not None:
                tokens[i] = _sample(scores[i], row.request.temperature, row.request.top_p, row.generator)
        chosen = logp.gather(1, tokens[:, None]).squeeze(1)
        stats_rows = [i for i, row in enumerate(batch.rows) if row.request.token_stats]
        stats = token_distribution_stats(raw[stats_rows]) if stats_rows else {}
        batch.next_ids = tokens
        for i, (row, token, lp, ent) in enumerate(zip(batch.rows, tokens.tolist(), chosen.tolist(),
                                                      entropy.tolist(), strict=True)):
            row.token_ids.append(token)
            row.logprobs.append(lp)
            row.entropies.append(ent)
            if hidden is not None and (row.request.hidden_state or row.request.keep_cache):
                row.hidden = hidden[i]
            row.finish_reason = self._finish_reason(row)
        for j, i in enumerate(stats_rows):
            for name, values in stats.items():
                batch.rows[i].stats.setdefault(name, []).append(float(values[j]))
        self.vocab_size = int(raw.shape[-1])
        share = (time.perf_counter() - start) / len(batch.rows)
        for row in batch.rows:
            row.seconds += share

    def _suppressed(self, vocab: int, device: torch.device) -> torch.Tensor:
        if self._suppress is None or self._suppress.device != device:
            ids = [t for t in self.suppress_token_ids if t < vocab]
            self._suppress = torch.tensor(ids, dtype=torch.long, device=device)
        return self._suppress

    def _finish_reason(self, row: _Row) -> str | None:
        if row.token_ids[-1] in row.stop_ids:
            return "stop"
        if row.stop_strings:
            text = self.lm.tokenizer.decode(row.token_ids)
            if any(stop in text for stop in row.stop_strings):
                return "stop"
        if len(row.token_ids) >= row.request.max_new_tokens:
            return "length"
        return None

    def _finish(self, batch: _Batch, i: int) -> FinishedRow:
        row = batch.rows[i]
        kv = None
        if row.request.keep_cache:
            kv = _row_kv(batch.cache, batch.mask[i].bool(), i)
        return FinishedRow(
            key=row.request.key, prompt_ids=row.prompt_ids, token_ids=row.token_ids, logprobs=row.logprobs,
            entropies=row.entropies, finish_reason=str(row.finish_reason), vocab_size=self.vocab_size,
            hidden_state=row.hidden.clone() if row.hidden is not None else None,
            token_stats=dict(row.stats) if row.request.token_stats else None, kv=kv, seconds=row.seconds,
        )


# --- sampling ---------------------------------------------------------------------------------


GREEDY_BELOW = 1e-6
"""Temperatures below this sample the most likely token: float32 scores divided by less lose all but it."""


def _sample(scores: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token from softmax(scores / temperature), restricted to the smallest set of mass >= top_p.

    Shifted by the maximum first, so a tiny temperature cannot overflow the float32 scores into NaN (one
    such request would fail every row decoding beside it); below :data:`GREEDY_BELOW` it is the argmax.
    """
    if temperature < GREEDY_BELOW:
        return scores.argmax()
    scores = (scores - scores.max()) / temperature
    if top_p < 1.0:
        # As transformers' TopPLogitsWarper: drop the low tail whose cumulative mass is <= 1 - top_p.
        ordered, order = torch.sort(scores)
        tail = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
        tail[-1] = False
        scores = scores.clone()
        scores[order[tail]] = -float("inf")
    return torch.multinomial(scores.softmax(-1), 1, generator=generator)[0]


# --- the shared cache: selecting, padding, merging rows ---------------------------------------------


def _layers(cache: Any) -> list[Any]:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise CertaError("this transformers version's KV cache has no per-layer tensors; "
                         "continuous batching needs transformers >= 4.56")
    return [layer for layer in layers if getattr(layer, "keys", None) is not None]


def _cache_from(kv: KV) -> Any:
    """A plain DynamicCache (full layers, whatever the model's config) holding ``kv``.

    Rows are cut out and padded slot by slot, which per-layer sliding-window
    caches would not allow; sliding-window attention still applies through the mask.
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (keys, values) in enumerate(kv):
        cache.update(keys.contiguous(), values.contiguous(), layer)
    return cache


def _row_kv(cache: Any, real: torch.Tensor, row: int) -> KV:
    """Row ``row``'s real slots (``real`` marks them), copied out of a batch cache."""
    return tuple((layer.keys[row:row + 1, :, real].clone(), layer.values[row:row + 1, :, real].clone())
                 for layer in _layers(cache))


def _common_length(rows: list[list[int]]) -> int:
    """Length of the prefix every row starts with."""
    shortest = min(len(r) for r in rows)
    for j in range(shortest):
        token = rows[0][j]
        if any(r[j] != token for r in rows):
            return j
    return shortest


def _select_cache(cache: Any, index: torch.Tensor, first: int) -> None:
    for layer in _layers(cache):
        layer.keys = layer.keys.index_select(0, index)[:, :, first:]
        layer.values = layer.values.index_select(0, index)[:, :, first:]


def _pad_left(states: torch.Tensor, slots: int) -> torch.Tensor:
    """``[rows, heads, slots, dim]`` with ``slots`` zero slots prepended (masked wherever they are used)."""
    return torch.nn.functional.pad(states, (0, 0, slots, 0)) if slots else states


def _pad_cache(cache: Any, slots: int) -> None:
    if slots:
        for layer in _layers(cache):
            layer.keys, layer.values = _pad_left(layer.keys, slots), _pad_left(layer.values, slots)


def _batch_of(rows: Sequence[_Prefilled]) -> _Batch:
    """Prefilled rows as one batch."""
    cache, mask = _stack([r.kv for r in rows])
    return _Batch([r.row for r in rows], cache, mask, torch.stack([r.next_id for r in rows]))


def _stack(kvs: Sequence[KV]) -> tuple[Any, torch.Tensor]:
    """Rows' own caches as one cache, each row's slots left-padded to the longest, and its mask."""
    lengths = [kv[0][0].shape[-2] for kv in kvs]
    width = max(lengths)
    cache = _cache_from(tuple(
        (torch.cat([_pad_left(kv[layer][0], width - n) for kv, n in zip(kvs, lengths, strict=True)]),
         torch.cat([_pad_left(kv[layer][1], width - n) for kv, n in zip(kvs, lengths, strict=True)]))
        for layer in range(len(kvs[0]))))
    device = kvs[0][0][0].device
    mask = (torch.arange(width, device=device)[None, :]
            >= width - torch.tensor(lengths, device=device)[:, None]).long()
    return cache, mask


def _select(batch: _Batch, keep: list[int]) -> _Batch | None:
    """The batch with only rows ``keep``; slots no remaining row uses are cut from the left."""
    if not keep:
        return None
    if len(keep) == len(batch.rows):
        return batch
    index = torch.tensor(keep, device=batch.mask.device)
    mask = batch.mask.index_select(0, index)
    first = int(mask.any(0).int().argmax())
    _select_cache(batch.cache, index, first)
    return _Batch([batch.rows[i] for i in keep], batch.cache, mask[:, first:], batch.next_ids.index_select(0, index))


def _keep_unfinished(batch: _Batch | None) -> _Batch | None:
    if batch is None:
        return None
    return _select(batch, [i for i, row in enumerate(batch.rows) if row.finish_reason is None])


def _merge(a: _Batch | None, b: _Batch | None) -> _Batch | None:
    """One batch of ``a``'s rows then ``b``'s, the shorter cache left-padded with masked slots."""
    if a is None or b is None:
        return a or b
    width = max(a.mask.shape[1], b.mask.shape[1])
    for batch in (a, b):
        _pad_cache(batch.cache, width - batch.mask.shape[1])
    for la, lb in zip(_layers(a.cache), _layers(b.cache), strict=True):
        la.keys = torch.cat([la.keys, lb.keys], dim=0)
        la.values = torch.cat([la.values, lb.values], dim=0)
    mask = torch.cat([torch.nn.functional.pad(m, (width - m.shape[1], 0)) for m in (a.mask, b.mask)], dim=0)
    return _Batch(a.rows + b.rows, a.cache, mask, torch.cat([a.next_ids, b.next_ids]))


def _sliding_window(model: torch.nn.Module) -> bool:
    """Whether some attention layer sees a sliding window: its window counts cache slots, so a shared
    prefix (which leaves padding between prefix and suffix) could move a token out of it."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    return bool(getattr(text, "sliding_window", None))


# --- read-out hooks over finished rows ----------------------------------------------------------


def answer_cache(rows: Sequence[FinishedRow]) -> AnswerCache:
    """The finished rows' KV caches as one left-padded :class:`AnswerCache` (rows kept with ``keep_cache``).

    Each row's last token is left unfed, as :func:`certa.methods.answer_cache.encode_answers`
    leaves it, so :func:`certa.methods.answer_cache.extend` reads after the answer.
    """
    if not rows or any(r.kv is None for r in rows):
        raise CertaError("answer_cache needs rows decoded with keep_cache=True")
    cache, mask = _stack([r.kv for r in rows if r.kv is not None])
    device = mask.device
    last = torch.tensor([r.token_ids[-1] for r in rows], device=device)
    states = [r.hidden_state for r in rows if r.hidden_state is not None]
    hidden = torch.stack(states) if len(states) == len(rows) else None
    return AnswerCache(cache, mask, last, hidden)


def run_hooks(lm: LoadedModel, hooks: Sequence[GenerationHook], rows: Sequence[FinishedRow]
              ) -> dict[str, list[float]]:
    """Each hook's values for ``rows`` (one per row), all reading the same merged cache."""
    if not hooks or not rows:
        return {}
    batch = FinishedBatch(list(rows), answer_cache(rows))
    cached = cache_length(batch.cache.past_key_values)
    values: dict[str, list[float]] = {}
    for hook in hooks:
        got = [float(v) for v in hook.on_finished(lm, batch)]
        if len(got) != len(rows):
            raise RuntimeError(f"hook {hook.name!r} returned {len(got)} values for {len(rows)} rows")
        crop_cache(batch.cache.past_key_values, cached)  # the next hook sees the cache as decoding left it
        values[hook.name] = got
    return values


def added_token_ids(lm: LoadedModel) -> list[int]:
    """Ids of the tokens that trained artifacts added to the vocabulary (never decoded into answers): those of
    every attached adapter's artifact and of the view's own, and the ``suppress_token_ids`` an exported
    model's ``certa.json`` lists (``certa export``: ``<CNF>`` is in its plain weights, with no adapter)."""
    infos = [*lm.adapters.values(), *([lm.artifact] if lm.artifact else [])]
    tokens = {(info.get("method_info") or {}).get("token") for info in infos}
    ids = {int(lm.tokenizer.convert_tokens_to_ids(t)) for t in tokens if t}
    ids |= {int(t) for info in infos for t in info.get("suppress_token_ids") or []}
    return sorted(ids)


def _check_request(r: Request) -> None:
    if not len(r.prompt_ids):
        raise InputError(f"request {r.key!r}: empty prompt")
    if r.max_new_tokens < 1:
        raise InputError(f"request {r.key!r}: max_new_tokens must be at least 1, got {r.max_new_tokens}")
    if r.temperature < 0:
        raise InputError(f"request {r.key!r}: temperature must be 0 (greedy) or positive, got {r.temperature}")
    if not 0 < r.top_p <= 1:
        raise InputError(f"request {r.key!r}: top_p must be in (0, 1], got {r.top_p}")
