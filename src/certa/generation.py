"""Batched generation that keeps everything confidence methods read.

One decoding pass per batch yields the greedy answer together with its
per-token log-probs and entropies (from the raw logits) and, on request, the
last-layer hidden state at the position that predicts the end of the answer.
``samples=K`` adds one sampled decoding call per batch. ``hooks`` see each
call's sequences, masks, KV cache and final states (a ``DecodeState``) and
return one confidence per row, so a method such as GrACE costs one extra short
step instead of a second pass over prompt and answer.

Examples are sorted by prompt length before batching (less padding) and
returned in input order. With ``out=`` every finished batch is appended to a
JSONL file at once, and a re-run skips the ids already there.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from .errors import InputError
from .methods.base import method_class
from .methods.logprobs.distribution import token_distribution_stats
from .models import answer_stop_strings, end_token_ids
from .models.tensors import cache_length, crop_cache, left_pad
from .prompts import question_prompt
from .records import Example, Generation, JsonlAppender, read_jsonl

if TYPE_CHECKING:
    import os

    from .models import LoadedModel

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
class DecodeState:
    """What one ``model.generate`` call leaves behind, handed to every hook.

    Rows are the batch's examples, or ``samples`` consecutive rows per example
    for a sampled call. ``past_key_values`` covers every position of
    ``sequences`` except the last (``generate`` never feeds its final token);
    certa crops it back after each hook, so hooks may extend it freely.
    """

    sequences: torch.LongTensor
    prompt_length: int
    attention_mask: torch.LongTensor
    response_lengths: list[int]
    past_key_values: Any
    last_hidden: torch.Tensor


class GenerationHook(Protocol):
    """Reads one confidence per row right after decoding (e.g. GrACE's ``<CNF>`` step)."""

    name: str

    def on_batch_end(self, lm: LoadedModel, state: DecodeState) -> list[float]: ...


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
class _Decoded:
    """One generate call, reduced to per-row facts."""

    sequences: torch.Tensor
    prompt_length: int
    attention_mask: torch.Tensor
    response_lengths: list[int]
    stopped: list[bool]
    past_key_values: Any
    logits: tuple[torch.Tensor, ...] | None
    last_hidden: torch.Tensor | None

    @property
    def vocab_size(self) -> int | None:
        return int(self.logits[0].shape[-1]) if self.logits else None

    def response_ids(self, row: int) -> list[int]:
        start = self.prompt_length
        return self.sequences[row, start:start + self.response_lengths[row]].tolist()


@dataclass
class _Item:
    example: Example
    prompt: str
    prompt_ids: list[int]


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
    """Answer every example greedily, in batches, keeping token log-probs and entropies.

    Args:
        lm: a model from :func:`certa.load_model`.
        examples: the questions; ids must be unique.
        max_new_tokens: generation limit per answer (``finish_reason="length"`` when hit).
        batch_size: examples per decoding call (sampled calls hold ``batch_size * samples`` rows).
        samples: extra answers sampled at ``temperature`` per example, stored in ``Generation.samples``.
        temperature: sampling temperature of the extra answers (and of the answer with ``sample_answer``).
        top_p: nucleus-sampling mass of every sampled answer (1.0: the whole distribution).
        sample_answer: draw the answer itself by sampling at ``temperature`` / ``top_p`` instead of greedy
            decoding (the server's ``temperature > 0``); it keeps the same evidence: log-probs and
            entropies of the raw logits, hidden states, hook confidences. Seeded like the samples.
        hidden_states: store the last-layer state at the end-predicting position in ``hidden_state``.
        token_stats: store per-token statistics of the full next-token distribution (Rényi divergence and
            Fisher-Rao distance from uniform) in ``meta["token_stats"]``, for the methods that read them.
        hooks: objects with ``name`` and ``on_batch_end(lm, state) -> list[float]``; their values go to
            ``confidence[name]`` (greedy answer) and ``sample_confidence[name]`` (samples), and
            ``meta["confidence_source"][name]`` names the artifact that read them. ``None`` means the
            hooks of the model's own method (a GrACE artifact reads its confidence while decoding).
        seed: makes sampling reproducible (each batch is seeded from ``seed`` and its ids).
        out: JSONL path; finished batches are appended as they complete and ids already in the
            file are skipped (resume).
        progress: show a progress bar over examples.

    Returns:
        One ``Generation`` per example, in input order (resumed ones read back from ``out``).
    """
    examples = list(examples)
    hooks = model_hooks(lm) if hooks is None else hooks
    settings = _Settings(max_new_tokens, samples, temperature, hidden_states, tuple(hooks), seed, token_stats,
                         top_p, sample_answer)
    _check_arguments(examples, settings, batch_size)
    with contextlib.ExitStack() as stack:
        appender = stack.enter_context(JsonlAppender(out)) if out is not None else None
        done = _finished_generations(appender)
        _check_resumable(out, [done[ex.id] for ex in examples if ex.id in done], settings)
        todo = [ex for ex in examples if ex.id not in done]
        for batch in _progress(_length_sorted_batches(lm, todo, batch_size), len(examples), len(todo), progress):
            for gen in _generate_batch(lm, batch, settings):
                done[gen.id] = gen
                if appender is not None:
                    appender.append(gen)
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
        if not getattr(hook, "name", None) or not callable(getattr(hook, "on_batch_end", None)):
            raise InputError(f"hook {hook!r} needs a 'name' and an 'on_batch_end(lm, state)' method")


def _finished_generations(appender: JsonlAppender | None) -> dict[str, Generation]:
    # The appender has already copied a finished file into its .partial, so that file is the
    # complete record of earlier runs.
    if appender is None or not appender.partial.exists():
        return {}
    return {g.id: g for g in read_jsonl(appender.partial, Generation)}


def _check_resumable(out: Any, resumed: list[Generation], s: _Settings) -> None:
    """Refuse to resume from generations that lack what this call asks for (they would be returned as-is)."""
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


def _progress(batches: Iterator[list[_Item]], total: int, todo: int, enabled: bool) -> Iterator[list[_Item]]:
    from tqdm.auto import tqdm

    with tqdm(total=total, initial=total - todo, disable=not enabled, unit="ex", desc="generate") as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))


def _length_sorted_batches(lm: LoadedModel, examples: list[Example], batch_size: int) -> Iterator[list[_Item]]:
    """Batches of similar prompt length, longest first (a memory error shows up at once)."""
    if not examples:
        return
    prompts = [_prompt_text(lm, ex) for ex in examples]
    # Chat templates already spell out their special tokens; adding them again would double BOS.
    ids = lm.tokenizer(prompts, add_special_tokens=False)["input_ids"]
    items = sorted((_Item(ex, p, i) for ex, p, i in zip(examples, prompts, ids, strict=True)),
                   key=lambda item: -len(item.prompt_ids))
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


def _prompt_text(lm: LoadedModel, example: Example) -> str:
    raw = example.meta.get(RAW_PROMPT_KEY) if example.meta else None
    return raw if isinstance(raw, str) else lm.chat_prompt(question_prompt(example))


def _generate_batch(lm: LoadedModel, batch: list[_Item], s: _Settings) -> list[Generation]:
    clock = _BatchClock()
    input_ids, attention_mask = left_pad([item.prompt_ids for item in batch], lm.tokenizer.pad_token_id, lm.device)
    if s.sample_answer:
        torch.manual_seed(_batch_seed(s.seed, [item.example.id for item in batch], "answer"))
    greedy = _decode(lm, input_ids, attention_mask, s.max_new_tokens,
                     capture_hidden=s.hidden_states or bool(s.hooks), keep_logits=True,
                     sample=s.sample_answer, temperature=s.temperature, top_p=s.top_p)
    gens = [_to_generation(lm, item, greedy, row, s) for row, item in enumerate(batch)]
    clock.lap("answer")
    for hook, values in _run_hooks(lm, greedy, s.hooks):
        for gen, value in zip(gens, values, strict=True):
            gen.confidence[hook.name] = value
            gen.meta.setdefault("confidence_source", {})[hook.name] = lm.artifact_id
    clock.lap("confidence")
    if s.samples:
        _add_samples(lm, gens, input_ids, attention_mask, s)
        clock.lap("samples")
    for gen in gens:
        gen.meta["seconds"] = clock.share(len(gens))
    return gens


class _BatchClock:
    """Wall time of a batch's phases, so costs can be reported per example (``meta["seconds"]``)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self._last
        self._last = now

    def share(self, n: int) -> dict[str, float]:
        return {phase: seconds / n for phase, seconds in self.phases.items()}


def _add_samples(lm: LoadedModel, gens: list[Generation], input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, s: _Settings) -> None:
    k = s.samples
    torch.manual_seed(_batch_seed(s.seed, [g.id for g in gens]))
    sampled = _decode(lm, input_ids, attention_mask, s.max_new_tokens, capture_hidden=bool(s.hooks),
                      keep_logits=False, samples=k, temperature=s.temperature, top_p=s.top_p)
    texts = [_decode_text(lm, sampled.response_ids(row)) for row in range(len(gens) * k)]
    for i, gen in enumerate(gens):
        gen.samples = texts[i * k:(i + 1) * k]
    for hook, values in _run_hooks(lm, sampled, s.hooks):
        for i, gen in enumerate(gens):
            gen.sample_confidence[hook.name] = values[i * k:(i + 1) * k]


def _batch_seed(seed: int, ids: list[str], stream: str = "") -> int:
    # Seeded by content, not batch position, so a resumed run samples the same answers for a batch.
    return zlib.crc32(f"{seed}\x00{'|'.join(ids)}{stream}".encode())


# --- one decoding call -----------------------------------------------------------------------


@torch.no_grad()
def _decode(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
            *, capture_hidden: bool, keep_logits: bool, samples: int = 0, temperature: float = 1.0,
            top_p: float = 1.0, sample: bool = False) -> _Decoded:
    """One ``model.generate`` call: greedy, one sampled row per prompt (``sample``), or ``samples`` per prompt."""
    from transformers import GenerationConfig

    stop_ids, stop_strings = end_token_ids(lm), answer_stop_strings(lm)
    # A fresh config, not the model's: its defaults (repetition penalty, top-p, ...) would make the
    # "greedy" answer and its log-probs depend on whoever packaged the model.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=lm.tokenizer.pad_token_id,
        do_sample=samples > 0 or sample, num_return_sequences=max(samples, 1), return_dict_in_generate=True,
        output_logits=keep_logits, use_cache=True, stop_strings=stop_strings or None,
        # Tokens a certa artifact added (GrACE's <CNF>) are read-outs, never part of an answer.
        suppress_tokens=added_token_ids(lm) or None,
    )
    if samples or sample:
        config.temperature, config.top_k, config.top_p = temperature, 0, top_p
    with _final_states(lm.model, capture_hidden) as steps, lm.answering():
        # generate needs the tokenizer to match stop strings against token text.
        output = lm.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                                   **({"tokenizer": lm.tokenizer} if stop_strings else {}))
    prompt_length = input_ids.shape[1]
    prompt_mask = attention_mask.repeat_interleave(max(samples, 1), dim=0)
    lengths, stopped = _response_lengths(output.sequences[:, prompt_length:], stop_ids)
    if stop_strings:
        lengths, stopped = _stop_string_lengths(lm, output.sequences[:, prompt_length:], lengths, stopped,
                                                stop_strings)
    return _Decoded(
        sequences=output.sequences,
        prompt_length=prompt_length,
        attention_mask=_full_mask(prompt_mask, lengths, output.sequences.shape[1] - prompt_length),
        response_lengths=lengths,
        stopped=stopped,
        past_key_values=output.past_key_values,
        logits=output.logits if keep_logits else None,
        last_hidden=_end_states(steps, lengths) if capture_hidden else None,
    )


@contextlib.contextmanager
def _final_states(model: torch.nn.Module, enabled: bool) -> Iterator[list[torch.Tensor]]:
    """Collect, per decoding step, the LM head's input at the newest position.

    The LM head's input *is* the last-layer, post-norm hidden state, whatever the
    architecture; ``generate`` only sends it the last position, so this costs a
    [rows, hidden] copy per step and no extra forward.
    """
    steps: list[torch.Tensor] = []
    if not enabled:
        yield steps
        return

    def grab(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        steps.append(args[0][:, -1, :].detach())

    handle = model.get_output_embeddings().register_forward_pre_hook(grab)
    try:
        yield steps
    finally:
        handle.remove()


def _response_lengths(generated: torch.Tensor, stop_ids: list[int]) -> tuple[list[int], list[bool]]:
    """Tokens per row up to and including the first end-of-turn token, and whether it came."""
    is_stop = torch.isin(generated, torch.tensor(stop_ids, device=generated.device))
    stopped = is_stop.any(dim=1)
    first = is_stop.int().argmax(dim=1)
    lengths = torch.where(stopped, first + 1, torch.full_like(first, generated.shape[1]))
    return lengths.tolist(), stopped.tolist()


def _stop_string_lengths(lm: LoadedModel, generated: torch.Tensor, lengths: list[int], stopped: list[bool],
                         stop_strings: list[str]) -> tuple[list[int], list[bool]]:
    """Cut each row after the token that completes a stop string, as generate's stop-string check did.

    generate stops such a row but reports nothing per row (it pads the rest), so the stop is found
    again here: the first token whose text, with the tokens before it, contains a stop string.
    """
    lengths, stopped = list(lengths), list(stopped)
    for row, ids in enumerate(generated.tolist()):
        for end in range(1, lengths[row] + 1):
            text = lm.tokenizer.decode(ids[:end])
            if any(stop in text for stop in stop_strings):
                lengths[row], stopped[row] = end, True
                break
    return lengths, stopped


def _full_mask(prompt_mask: torch.Tensor, lengths: list[int], width: int) -> torch.Tensor:
    """1 on real prompt and real response tokens; 0 on left pads and on pads after a row ended."""
    positions = torch.arange(width, device=prompt_mask.device)
    response = positions[None, :] < torch.tensor(lengths, device=prompt_mask.device)[:, None]
    return torch.cat([prompt_mask, response.to(prompt_mask.dtype)], dim=1)


def _end_states(steps: list[torch.Tensor], lengths: list[int]) -> torch.Tensor:
    """Each row's state at step ``length - 1``: the position whose output is its last token."""
    if len(steps) < max(lengths):
        raise RuntimeError("hidden states were not captured at every decoding step (unexpected LM head)")
    stacked = torch.stack(steps)  # [steps, rows, hidden]
    rows = torch.arange(stacked.shape[1], device=stacked.device)
    index = torch.tensor(lengths, device=stacked.device) - 1
    return stacked[index, rows]


# --- turning a decoded row into records ------------------------------------------------------


def added_token_ids(lm: LoadedModel) -> list[int]:
    """Ids of the tokens that trained artifacts added to the vocabulary (never decoded into answers)."""
    tokens = {(info.get("method_info") or {}).get("token") for info in lm.adapters.values()}
    return sorted(int(lm.tokenizer.convert_tokens_to_ids(t)) for t in tokens if t)


def _to_generation(lm: LoadedModel, item: _Item, decoded: _Decoded, row: int, s: _Settings) -> Generation:
    ids = decoded.response_ids(row)
    step_logits = _step_logits(decoded.logits, ids, row)
    logprobs, entropies = _logprobs_and_entropies(step_logits, ids)
    hidden = (decoded.last_hidden[row].float().cpu().tolist()
              if s.hidden_states and decoded.last_hidden is not None else None)
    # token_entropy normalises by log V; keeping V here lets it score the file without the model.
    meta: dict[str, Any] = {"vocab_size": int(decoded.vocab_size)} if decoded.vocab_size else {}
    if s.token_stats and step_logits is not None:
        meta["token_stats"] = {name: values.tolist() for name, values in token_distribution_stats(step_logits).items()}
    return Generation(
        id=item.example.id,
        prompt=item.prompt,
        response=_decode_text(lm, ids),
        model=lm.name,
        token_ids=ids,
        token_logprobs=logprobs,
        token_entropies=entropies,
        finish_reason="stop" if decoded.stopped[row] else "length",
        hidden_state=hidden,
        meta=meta,
    )


def _step_logits(logits: tuple[torch.Tensor, ...] | None, ids: list[int], row: int) -> torch.Tensor | None:
    """One row's raw logits at each of its answer tokens, ``[tokens, vocab]``."""
    if logits is None or not ids:
        return None
    return torch.stack([logits[t][row] for t in range(len(ids))]).float()


def _logprobs_and_entropies(step_logits: torch.Tensor | None, ids: list[int]) -> tuple[list[float], list[float]]:
    """Log-prob of each chosen token and the entropy of its distribution, from raw logits."""
    if step_logits is None:
        return [], []
    logp = torch.log_softmax(step_logits, dim=-1)
    chosen = logp.gather(1, torch.tensor(ids, device=logp.device)[:, None]).squeeze(1)
    probs = logp.exp()
    # p·log p is 0 where p underflows to 0; without the where, 0 · -inf would give NaN.
    entropy = -torch.where(probs > 0, probs * logp, torch.zeros_like(logp)).sum(dim=-1)
    return chosen.cpu().tolist(), entropy.cpu().tolist()


def _decode_text(lm: LoadedModel, ids: list[int]) -> str:
    """The answer text: the tokens decoded, cut where a stop string starts (the token completing
    it stays in ``token_ids``, like an end-of-turn token, and may carry the answer's last characters)."""
    text = lm.tokenizer.decode(ids, skip_special_tokens=True)
    for stop in answer_stop_strings(lm):
        text = text.split(stop, 1)[0]
    return text.strip()


def _run_hooks(lm: LoadedModel, decoded: _Decoded,
               hooks: tuple[GenerationHook, ...]) -> Iterator[tuple[GenerationHook, list[float]]]:
    if not hooks:
        return
    cache = decoded.past_key_values
    cached = cache_length(cache)
    state = DecodeState(
        sequences=decoded.sequences, prompt_length=decoded.prompt_length,
        attention_mask=decoded.attention_mask, response_lengths=decoded.response_lengths,
        past_key_values=cache, last_hidden=decoded.last_hidden,
    )
    rows = decoded.sequences.shape[0]
    for hook in hooks:
        values = [float(v) for v in hook.on_batch_end(lm, state)]
        if len(values) != rows:
            raise RuntimeError(f"hook {hook.name!r} returned {len(values)} values for {rows} rows")
        crop_cache(cache, cached)  # the next hook sees the cache generate left
        yield hook, values


def model_hooks(lm: LoadedModel) -> list[GenerationHook]:
    """The hooks that read the model's own confidence while decoding (a GrACE artifact's), else none."""
    if lm.method is None:
        return []
    return method_class(lm.method)(model=lm).generation_hooks()
