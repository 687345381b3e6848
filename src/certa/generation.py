"""Generation that keeps everything confidence methods read, on the continuous-batching decoder.

Every answer is decoded by :class:`certa.decoding.Decoder`: up to
``batch_size`` questions are in flight, and when one ends the next takes its
slot, so short answers never wait for long ones. Each greedy answer comes with
its per-token log-probs and entropies (from the raw logits) and, on request,
the last-layer hidden state at the position that predicts the end of the
answer. ``samples=K`` adds K sampled rows per question, each from its own
seeded generator. ``hooks`` see finished rows with their KV cache
(:class:`certa.decoding.FinishedBatch`, in groups of up to ``batch_size``
rows) and return one confidence per row, so a method such as GrACE costs one
extra short step instead of a second pass over prompt and answer.

Questions are queued longest prompt first and returned in input order. With
``out=`` every finished example is appended to a JSONL file at once, and a
re-run skips the ids already there.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from .decoding import Decoder, FinishedBatch, FinishedRow, GenerationHook, Request, added_token_ids, run_hooks
from .errors import InputError
from .methods.base import method_class
from .models import answer_stop_strings
from .prompts import question_prompt
from .records import Example, Generation, JsonlAppender, read_jsonl

if TYPE_CHECKING:
    import os

    from .models import LoadedModel

__all__ = ["DEFAULTS", "RAW_PROMPT_KEY", "AnswerRow", "FinishedBatch", "GenerationHook", "GenerationSettings",
           "added_token_ids", "generate", "model_hooks"]


class GenerationSettings(BaseModel):
    """How answers are decoded; every default of the library, the CLI and run configs is stated here."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(48, ge=1, le=4096, description="answer length limit in tokens")
    batch_size: int = Field(16, ge=1, description="questions decoded together")
    temperature: float = Field(1.0, gt=0, description="temperature of sampled answers (the answer is greedy)")


#: The defaults, as values (the signatures below read them from here).
DEFAULTS = GenerationSettings()

RAW_PROMPT_KEY = "raw_prompt"
"""``Example.meta`` key holding a fully rendered prompt to use verbatim (the server's raw chats)."""


@dataclass
class _Settings:
    max_new_tokens: int
    samples: int
    temperature: float
    hidden_states: bool
    hooks: tuple[GenerationHook, ...]
    seed: int
    token_stats: bool = False
    top_p: float = 1.0
    sample_answer: bool = False


@dataclass
class _Item:
    example: Example
    prompt: str
    prompt_ids: list[int]


GREEDY = -1
"""The sample index of an example's greedy row (its rows are keyed ``(example index, sample index)``)."""


@dataclass
class _Pending:
    """An example whose rows are still decoding or waiting for the hooks."""

    item: _Item
    left: int
    greedy: FinishedRow | None = None
    samples: list[str] = field(default_factory=list)
    confidence: dict[str, float] = field(default_factory=dict)
    sample_confidence: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def generate(
    lm: LoadedModel,
    examples: Iterable[Example],
    *,
    max_new_tokens: int = DEFAULTS.max_new_tokens,
    batch_size: int = DEFAULTS.batch_size,
    samples: int = 0,
    temperature: float = DEFAULTS.temperature,
    top_p: float = 1.0,
    sample_answer: bool = False,
    hidden_states: bool = False,
    token_stats: bool = False,
    hooks: Sequence[GenerationHook] | None = None,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> list[Generation]:
    """Answer every example greedily with continuous batching, keeping token log-probs and entropies.

    Args:
        lm: a model from :func:`certa.load_model`.
        examples: the questions; ids must be unique.
        max_new_tokens: generation limit per answer (``finish_reason="length"`` when hit).
        batch_size: questions decoded together; a finished answer's slot goes to the next question at
            once. With samples, ``batch_size * samples`` rows are in flight.
        samples: extra answers sampled at ``temperature`` per example, stored in ``Generation.samples``.
        temperature: sampling temperature of the extra answers (and of the answer with ``sample_answer``).
        top_p: nucleus-sampling mass of every sampled answer (1.0: the whole distribution).
        sample_answer: draw the answer itself by sampling at ``temperature`` / ``top_p`` instead of greedy
            decoding (the server's ``temperature > 0``); it keeps the same evidence: log-probs and
            entropies of the raw logits, hidden states, hook confidences. Seeded like the samples.
        hidden_states: store the last-layer state at the end-predicting position in ``hidden_state``.
        token_stats: store per-token statistics of the full next-token distribution (Rényi divergence and
            Fisher-Rao distance from uniform) in ``meta["token_stats"]``, for the methods that read them.
        hooks: objects with ``name`` and ``on_finished(lm, batch) -> list[float]``
            (:class:`certa.decoding.GenerationHook`), called on groups of up to ``batch_size`` finished
            rows with their KV cache; their values go to ``confidence[name]`` (greedy answer) and
            ``sample_confidence[name]`` (samples), and ``meta["confidence_source"][name]`` names the
            artifact that read them. ``None`` means the hooks of the model's own method (a GrACE
            artifact reads its confidence while decoding).
        seed: makes sampling reproducible: each sampled answer has its own generator, seeded from
            ``seed``, its example id and its index, whatever else is decoded beside it.
        out: JSONL path; finished examples are appended as they complete and ids already in the
            file are skipped (resume).
        progress: show a progress bar over examples.

    Returns:
        One ``Generation`` per example, in input order (resumed ones read back from ``out``);
        ``meta["seconds"]`` holds each example's share of the decoding time by phase
        (``answer``, ``confidence``, ``samples``).
    """
    examples = list(examples)
    hooks = model_hooks(lm) if hooks is None else hooks
    settings = _Settings(max_new_tokens, samples, temperature, hidden_states, tuple(hooks), seed, token_stats,
                         top_p, sample_answer)
    _check_arguments(examples, settings, batch_size)
    finished = _complete_output(Path(out), examples) if out is not None else None
    if finished is not None:
        _check_resumable(out, lm, examples, finished, settings)
        return [finished[ex.id] for ex in examples]
    with contextlib.ExitStack() as stack:
        appender = stack.enter_context(JsonlAppender(out)) if out is not None else None
        done = _finished_generations(appender)
        _check_resumable(out, lm, examples, done, settings)
        todo = [ex for ex in examples if ex.id not in done]
        bar = stack.enter_context(_progress_bar(len(examples), len(todo), progress))
        for gen in _decode_all(lm, _length_sorted(lm, todo), settings, batch_size):
            done[gen.id] = gen
            if appender is not None:
                appender.append(gen)
            bar.update(1)
    return [done[ex.id] for ex in examples]


# --- orchestration ---------------------------------------------------------------------------


def _check_arguments(examples: list[Example], s: _Settings, batch_size: int) -> None:
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if s.max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {s.max_new_tokens}")
    if s.samples < 0:
        raise InputError(f"samples must be 0 or more, got {s.samples}")
    if (s.samples or s.sample_answer) and not s.temperature > 0:
        raise InputError(f"temperature must be positive to sample, got {s.temperature}")
    if not 0.0 < s.top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {s.top_p}")
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise InputError(f"example id {ex.id!r} appears more than once; ids must be unique")
        seen.add(ex.id)
    for hook in s.hooks:
        if not getattr(hook, "name", None) or not callable(getattr(hook, "on_finished", None)):
            raise InputError(f"hook {hook!r} needs a 'name' and an 'on_finished(lm, batch)' method")


def _complete_output(out: Path, examples: list[Example]) -> dict[str, Generation] | None:
    """The finished file's generations of ``examples`` when it answers every one; else None.

    Read without opening an appender: a finished file is only ever replaced whole
    (renamed into place), so reading it needs no lock, and two runs that share a
    cache of finished answers can start together instead of one refusing.
    """
    if not out.exists() or out.with_name(out.name + ".partial").exists():
        return None
    wanted = {ex.id for ex in examples}
    done = {g.id: g for g in read_jsonl(out, Generation) if g.id in wanted}
    return done if len(done) == len(wanted) else None


def _finished_generations(appender: JsonlAppender | None) -> dict[str, Generation]:
    # The appender has already copied a finished file into its .partial, so that file is the
    # complete record of earlier runs.
    if appender is None or not appender.partial.exists():
        return {}
    return {g.id: g for g in read_jsonl(appender.partial, Generation)}


def _check_resumable(out: Any, lm: LoadedModel, examples: list[Example], done: dict[str, Generation],
                     s: _Settings) -> None:
    """Refuse to resume from generations that answer another prompt or lack what this call asks for
    (they would be returned as-is)."""
    resumed = [done[ex.id] for ex in examples if ex.id in done]
    changed = next((ex for ex in examples if ex.id in done and done[ex.id].prompt != _prompt_text(lm, ex)), None)
    if changed is not None:
        raise InputError(f"{out}: the stored answer to {changed.id!r} was generated for another prompt (its question "
                         "or the chat template changed); delete the file (and its .partial) or write to a new path")
    missing = []
    if s.hidden_states and any(g.hidden_state is None for g in resumed):
        missing.append("hidden states")
    if s.token_stats and any("token_stats" not in g.meta for g in resumed):
        missing.append("token statistics")
    if any(len(g.samples) < s.samples for g in resumed):
        missing.append(f"{s.samples} samples")
    missing += [f"hook {h.name!r}" for h in s.hooks if any(h.name not in g.confidence for g in resumed)]
    if missing:
        raise InputError(f"{out}: earlier generations lack {', '.join(missing)}; "
                         "delete the file (and its .partial) or write to a new path")


def _progress_bar(total: int, todo: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=total - todo, disable=not enabled, unit="ex", desc="generate")


def _length_sorted(lm: LoadedModel, examples: list[Example]) -> list[_Item]:
    """The examples with their prompts, longest prompt first (a memory error shows up at once)."""
    if not examples:
        return []
    prompts = [_prompt_text(lm, ex) for ex in examples]
    # Chat templates already spell out their special tokens; adding them again would double BOS.
    ids = lm.tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return sorted((_Item(ex, p, i) for ex, p, i in zip(examples, prompts, ids, strict=True)),
                  key=lambda item: -len(item.prompt_ids))


def _prompt_text(lm: LoadedModel, example: Example) -> str:
    raw = example.meta.get(RAW_PROMPT_KEY) if example.meta else None
    return raw if isinstance(raw, str) else lm.chat_prompt(question_prompt(example))


def _requests(index: int, item: _Item, s: _Settings) -> list[Request]:
    """The greedy row of an example, then its sampled rows, each sample with its own seeded generator."""
    keep = bool(s.hooks)
    answer_temperature = s.temperature if s.sample_answer else 0.0
    rows = [Request(item.prompt_ids, max_new_tokens=s.max_new_tokens, temperature=answer_temperature,
                    top_p=s.top_p, seed=_sample_seed(s.seed, item.example.id, "answer"),
                    hidden_state=s.hidden_states, token_stats=s.token_stats, keep_cache=keep, key=(index, GREEDY))]
    rows += [Request(item.prompt_ids, max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                     seed=_sample_seed(s.seed, item.example.id, k), keep_cache=keep, key=(index, k))
             for k in range(s.samples)]
    return rows


def _sample_seed(seed: int, example_id: str, k: int | str) -> int:
    # Seeded by content, not by position in the run, so a resumed run samples the same answers.
    return zlib.crc32(f"{seed}\x00{example_id}\x00{k}".encode())


def _decode_all(lm: LoadedModel, items: list[_Item], s: _Settings, batch_size: int) -> Iterable[Generation]:
    """Decode every item's rows on one continuous batch; yield each example once all its rows are read."""
    if not items:
        return
    decoder = Decoder(lm, max_rows=batch_size * max(1, s.samples))
    phases = ["answer", "confidence"] + (["samples"] if s.samples else [])
    pending = {i: _Pending(item, left=1 + s.samples, samples=[""] * s.samples, seconds=dict.fromkeys(phases, 0.0))
               for i, item in enumerate(items)}
    for i, item in enumerate(items):
        decoder.extend(_requests(i, item, s))
    waiting: list[FinishedRow] = []  # finished rows the hooks have not read yet
    while not decoder.idle:
        for row in decoder.step():
            if s.hooks:
                waiting.append(row)
            else:
                yield from _complete(lm, pending, row, {}, 0.0, s)
        while len(waiting) >= batch_size or (waiting and decoder.idle):
            group, waiting = waiting[:batch_size], waiting[batch_size:]
            start = time.perf_counter()
            values = run_hooks(lm, s.hooks, group)
            share = (time.perf_counter() - start) / len(group)
            for j, row in enumerate(group):
                yield from _complete(lm, pending, row, {name: v[j] for name, v in values.items()}, share, s)


def _complete(lm: LoadedModel, pending: dict[int, _Pending], row: FinishedRow, confidence: dict[str, float],
              hook_seconds: float, s: _Settings) -> list[Generation]:
    """File a finished, read row under its example; the example's Generation once it is whole."""
    index, k = row.key
    p = pending[index]
    if k == GREEDY:
        p.greedy = row
        p.confidence.update(confidence)
        p.seconds["answer"] += row.seconds
        p.seconds["confidence"] += hook_seconds
    else:
        p.samples[k] = _decode_text(lm, row.token_ids)
        for name, value in confidence.items():
            p.sample_confidence.setdefault(name, [float("nan")] * s.samples)[k] = value
        p.seconds["samples"] += row.seconds + hook_seconds
    p.left -= 1
    if p.left:
        return []
    del pending[index]
    return [_to_generation(lm, p, s)]


# --- one answer at a time (a server's requests, each queued on its own) ------------------------


class AnswerRow:
    """One example's answer as a single decoder row, built and read back exactly as :func:`generate` does.

    For a caller that runs its own :class:`certa.decoding.Decoder` (a server adding requests as they
    arrive): :attr:`request` is the row ``generate(lm, [example], ...)`` would queue for the answer
    (same prompt, same seed derivation, ``keep_cache`` when there are hooks), and :meth:`generation`
    turns the finished row and its hooks' values (:func:`certa.decoding.run_hooks`) into the same
    ``Generation``. ``temperature == 0`` decodes greedily; above 0 the answer is sampled
    (``generate``'s ``sample_answer=True``), seeded from ``seed`` and the example's id.
    """

    def __init__(self, lm: LoadedModel, example: Example, *, key: Any, max_new_tokens: int = DEFAULTS.max_new_tokens,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 hooks: Sequence[GenerationHook] = (), hidden_states: bool = False, token_stats: bool = False):
        sampled = temperature > 0
        self._settings = _Settings(max_new_tokens, 0, temperature if sampled else DEFAULTS.temperature, hidden_states,
                                   tuple(hooks), seed, token_stats, top_p, sampled)
        _check_arguments([example], self._settings, 1)
        self.example = example
        prompt = _prompt_text(lm, example)
        self._item = _Item(example, prompt, lm.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        self.request = _requests(0, self._item, self._settings)[0]
        self.request.key = key

    @property
    def hooks(self) -> tuple[GenerationHook, ...]:
        return self._settings.hooks

    def generation(self, lm: LoadedModel, row: FinishedRow, confidence: dict[str, float] | None = None,
                   hook_seconds: float = 0.0) -> Generation:
        """The ``Generation`` of the finished row (``confidence``: the hooks' value for it, by hook name)."""
        pending = _Pending(self._item, left=0, greedy=row, confidence=dict(confidence or {}),
                           seconds={"answer": row.seconds, "confidence": hook_seconds})
        return _to_generation(lm, pending, self._settings)


# --- turning decoded rows into records ------------------------------------------------------


def _to_generation(lm: LoadedModel, p: _Pending, s: _Settings) -> Generation:
    row = p.greedy
    assert row is not None
    # token_entropy normalises by log V; keeping V here lets it score the file without the model.
    meta: dict[str, Any] = {"vocab_size": row.vocab_size}
    if s.token_stats and row.token_stats is not None:
        meta["token_stats"] = row.token_stats
    if s.hooks:
        meta["confidence_source"] = {hook.name: lm.artifact_id for hook in s.hooks}
    meta["seconds"] = p.seconds
    hidden = row.hidden_state.float().cpu().tolist() if s.hidden_states and row.hidden_state is not None else None
    return Generation(
        id=p.item.example.id,
        prompt=p.item.prompt,
        response=_decode_text(lm, row.token_ids),
        model=lm.name,
        token_ids=row.token_ids,
        token_logprobs=row.logprobs,
        token_entropies=row.entropies,
        finish_reason=row.finish_reason,
        hidden_state=hidden,
        confidence=p.confidence,
        samples=p.samples,
        sample_confidence=p.sample_confidence,
        meta=meta,
    )


def _decode_text(lm: LoadedModel, ids: list[int]) -> str:
    """The answer text: the tokens decoded, cut where a stop string starts (the token completing
    it stays in ``token_ids``, like an end-of-turn token, and may carry the answer's last characters)."""
    text = lm.tokenizer.decode(ids, skip_special_tokens=True)
    for stop in answer_stop_strings(lm):
        text = text.split(stop, 1)[0]
    return text.strip()


def model_hooks(lm: LoadedModel) -> list[GenerationHook]:
    """The hooks that read the model's own confidence while decoding (a GrACE artifact's), else none."""
    if lm.method is None:
        return []
    return method_class(lm.method)(model=lm).generation_hooks()
