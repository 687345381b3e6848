"""One encoding of each answer per scoring pass, shared by every read-out that extends it.

GrACE's step, ConfTuner's cue and verbalized confidence's follow-up turn each
read after prompt + answer (:mod:`certa.methods.answer_cache`). Scored offline,
each used to encode prompt + answer again before its few suffix tokens, and the
encoding was most of its cost. In a study all of them run on the same records
with adapters attached to one base model, and the encoding does not depend on
which adapter the suffix runs with. So :func:`shared_answer_encodings` switches
on, for a scope, a memory-bounded store of encodings per model weights
(:class:`SharedEncodings`, one :class:`~certa.methods.answer_cache.PrefixStore`
per adapter state the encoding ran in), and the read-outs get their caches
through :func:`encode_or_reuse`, which encodes afresh outside such a scope.
:func:`certa.methods.runner.score_methods` opens one around its methods.

What the store keeps is decided by the records planned at its start, as the
training store decides it (the planned answers in order while they fit, encoded
in fixed groups of similar length), so a read-out's numbers do not depend on
which method ran first or on its batch size beyond float rounding. An encoding
made with an adapter on (a ``full``-mode artifact reads its answers with it)
is kept apart from base encodings.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..models.adapters import is_peft_model, unwrap
from ..records import Record
from .answer_cache import AnswerCache, PrefixStore, answer_ids, content_key, encode_answers

if TYPE_CHECKING:
    from ..models import LoadedModel

Pairs = Sequence[tuple[Sequence[int], Sequence[int]]]
#: (id of the weights, adapter on, adapter name): which encodings may stand in for one another.
State = tuple[int, bool, str | None]

#: The store serving each model's weights while a scope is open (views of one model share its weights).
_ACTIVE: weakref.WeakKeyDictionary[torch.nn.Module, SharedEncodings] = weakref.WeakKeyDictionary()

DEFAULT_GB = 2.0
"""Memory bound of the store :func:`certa.methods.runner.score_methods` opens: for SmolLM2-135M in float32
(45 KiB of KV per token) about 680 TriviaQA prompts + answers of ~68 tokens."""


class SharedEncodings:
    """Encodings of planned answers, kept on the CPU within ``max_gb``, shared by the read-outs of a scope.

    ``plan`` the records first (the evaluated ones, then any others a method may
    read); answers outside the plan or past the bound are encoded with their
    batch and not kept. ``encoded`` counts answers encoded, ``reused`` rows
    served from kept encodings (a group encoded for one batch also serves the
    next batches), for benchmarks and tests.
    """

    def __init__(self, max_gb: float = DEFAULT_GB, records: Iterable[Record] = ()):
        self.max_bytes = int(max_gb * 1024 ** 3)
        self.reused = 0
        self._segments: list[list[Record]] = [list(records)]
        self._plans: dict[int, tuple[Any, list[tuple[list[str], list[tuple[list[int], list[int]]]]]]] = {}
        self._stores: dict[State, PrefixStore] = {}
        self._lock = threading.Lock()

    @property
    def encoded(self) -> int:
        """Answers encoded so far, over every adapter state."""
        return sum(store.encoded for store in self._stores.values())

    @property
    def used(self) -> int:
        """Bytes held by kept encodings."""
        return sum(store.used for store in self._stores.values())

    def plan(self, records: Iterable[Record]) -> None:
        """Add records whose answers read-outs will encode (before the first read-out: later ones are not kept);
        they are encoded in groups of their own, apart from the records planned before."""
        self._segments.append(list(records))

    def cache(self, lm: LoadedModel, pairs: Pairs, *, hidden: bool = False, adapter_enabled: bool = False,
              adapter_name: str | None = None) -> AnswerCache:
        """What :func:`~certa.methods.answer_cache.encode_answers` returns for ``pairs``, reusing kept encodings."""
        state = encoding_state(lm.model, adapter_enabled, adapter_name)
        keys = [content_key(p, r) for p, r in pairs]
        with self._lock:
            store = self._store(lm, state)
            kept = sum(key in store for key in keys)
            cache = store.cache(lm.model, keys, pairs, lm.tokenizer.pad_token_id)
            self.reused += kept
        if not hidden:
            cache.last_hidden = None
        return cache

    def _store(self, lm: LoadedModel, state: State) -> PrefixStore:
        """The store for encodings in ``state``, planned on first use within what the others left of the bound."""
        store = self._stores.get(state)
        if store is None:
            left = max(0, self.max_bytes - sum(s.reserved for s in self._stores.values()))
            store = PrefixStore(left / 1024 ** 3, adapter_enabled=state[1], adapter_name=state[2], hidden=True)
            for keys, pairs in self._planned(lm):
                store.plan(keys, pairs)
            self._stores[state] = store
        return store

    def _planned(self, lm: LoadedModel) -> list[tuple[list[str], list[tuple[list[int], list[int]]]]]:
        """Each planned group of records' (keys, pairs) as ``lm``'s tokenizer writes them (once per tokenizer)."""
        plan = self._plans.get(id(lm.tokenizer))
        if plan is None:
            segments = []
            for records in self._segments:
                keys, pairs = [], []
                for record in records:
                    try:
                        pair = answer_ids(lm, record)
                    except InputError:  # an empty answer: its read-out raises the error itself
                        continue
                    keys.append(content_key(*pair))
                    pairs.append(pair)
                segments.append((keys, pairs))
            plan = self._plans[id(lm.tokenizer)] = (lm.tokenizer, segments)
        return plan[1]


def encoding_state(model: torch.nn.Module, adapter_enabled: bool, adapter_name: str | None) -> State:
    """Which weights an encoding runs through: the base ones unless an adapter is on (then which adapter)."""
    if not adapter_enabled or not is_peft_model(model):
        return id(model), False, None
    return id(model), True, adapter_name if adapter_name is not None else str(unwrap(model).active_adapter)


@contextlib.contextmanager
def shared_answer_encodings(models: LoadedModel | Iterable[LoadedModel | Any | None], records: Iterable[Record] = (),
                            *, max_gb: float = DEFAULT_GB) -> Iterator[SharedEncodings | None]:
    """Within the block, read-outs over ``models``' weights (any view of them) share one encoding per answer.

    ``records`` are the answers planned for keeping, in priority order; ``max_gb``
    bounds the kept encodings (0 turns sharing off: the block yields None).
    Models that are not local (a server) are skipped; weights that a scope
    already serves keep that scope's store.
    """
    if max_gb <= 0:
        yield None
        return
    candidates = [models] if hasattr(models, "model") else list(models)  # type: ignore[arg-type]
    weights: list[torch.nn.Module] = []
    for lm in candidates:
        module = getattr(lm, "model", None)
        if isinstance(module, torch.nn.Module) and module not in _ACTIVE and all(module is not w for w in weights):
            weights.append(module)
    shared = SharedEncodings(max_gb, records)
    for module in weights:
        _ACTIVE[module] = shared
    try:
        yield shared
    finally:
        for module in weights:
            _ACTIVE.pop(module, None)


def encode_or_reuse(lm: LoadedModel, pairs: Pairs, *, hidden: bool = False, adapter_enabled: bool = False,
                    adapter_name: str | None = None) -> AnswerCache:
    """The :class:`AnswerCache` of ``pairs``: from the store of an open :func:`shared_answer_encodings` scope
    over ``lm``'s weights, else encoded now (:func:`~certa.methods.answer_cache.encode_answers`)."""
    shared = _ACTIVE.get(lm.model)
    if shared is not None:
        return shared.cache(lm, pairs, hidden=hidden, adapter_enabled=adapter_enabled, adapter_name=adapter_name)
    return encode_answers(lm.model, pairs, lm.tokenizer.pad_token_id, adapter_enabled=adapter_enabled,
                          adapter_name=adapter_name, hidden=hidden)
