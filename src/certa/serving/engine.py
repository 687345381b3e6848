"""The model-facing side of the server: one object that turns a batch of prompts into scored answers.

The HTTP layer only knows the small ``Engine`` protocol, so it can be tested
with a stand-in, and ``ConfidenceEngine`` is the real thing: batched
generation through ``certa.generation.generate`` and a confidence for every
answer from a registered ``certa.methods`` method (``sequence_likelihood``
reads the generation's own log-probs; GrACE reads its confidence during
generation through a decode hook; ConfTuner scores the answer afterwards).
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import CertaError
from ..generation import RAW_PROMPT_KEY, AnswerRow, generate
from ..methods.base import Needs, get_method
from ..models import answer_stop_strings, end_token_ids, render_chat
from ..records import Example, Record

if TYPE_CHECKING:
    from ..models import LoadedModel
    from ..records import Generation
    from .batcher import Scheduler
    from .settings import ServerSettings


@dataclass(frozen=True)
class EngineRequest:
    """One prompt, already rendered to the model's text format, and how to continue it.

    ``temperature`` 0 is greedy decoding (one answer, repeated for ``n`` choices); above 0 each of
    the ``n`` choices is sampled at ``temperature`` with nucleus mass ``top_p``, and ``seed`` (when
    given) makes them reproducible. The HTTP layer resolves OpenAI's fields into these
    (:func:`certa.serving.schemas.sampling_of`).
    """

    prompt: str
    max_new_tokens: int
    n: int = 1
    stop: tuple[str, ...] = ()
    question: str = ""  # the last user message: what read-out methods (ConfTuner, P(True)) ask about
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def rows(self) -> int:
        """Answers to decode: one for greedy decoding (identical choices), ``n`` when sampling."""
        return 1 if self.greedy else self.n


@dataclass
class ChoiceResult:
    """One answer: its text, why it ended, its confidence and per-token evidence.

    ``tokens`` are the decoded text pieces of the answer's tokens (they join to
    ``text``) and ``token_logprobs`` their log-probabilities, both without the
    end-of-turn token.
    """

    text: str
    finish_reason: str
    confidence: float
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)


@dataclass
class EngineResult:
    """The answers to one request, with the token counts for ``usage``."""

    choices: list[ChoiceResult]
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.choices)


class Engine(Protocol):
    """What the HTTP layer needs from a model. ``complete`` is only ever called from one thread.

    Scheduling is the server's unless the engine brings its own: an engine with a
    ``make_scheduler(settings) -> Scheduler`` method (see :mod:`certa.serving.batcher`) is driven
    through it instead of the micro-batcher (unless ``ServerSettings.scheduler`` is ``"micro"``), which is
    the seam a continuous-batching engine uses (requests join the running decode loop instead of waiting
    for a batch to drain).
    """

    model_name: str
    method_name: str

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """(role, text) pairs → the prompt text the model continues."""

    def count_tokens(self, text: str) -> int:
        """Prompt length in tokens (called from the server's prompt thread while a batch may be running)."""

    def complete(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        """Answer every request of a batch, in order."""


def cut_at_stop(tokens: Sequence[str], stops: Sequence[str]) -> tuple[list[str], bool]:
    """Cut token pieces just before the earliest stop string; returns (kept pieces, whether it cut).

    The piece a stop string starts in keeps its text up to the stop, so the
    pieces still join to the returned answer.
    """
    text = "".join(tokens)
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if not hits:
        return list(tokens), False
    end = min(hits)
    kept: list[str] = []
    offset = 0
    for piece in tokens:
        if offset >= end:
            break
        kept.append(piece[: end - offset])
        offset += len(piece)
    return kept, True


def token_pieces(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    """Each token's text, such that the pieces join to the decoded answer.

    Decoding a token alone loses leading spaces (SentencePiece) and splits
    multi-byte characters, so each piece is the difference between decoding a
    few tokens of context with and without it; a token that ends inside a
    character gets "" and the character goes to the token that completes it.
    """
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    pieces: list[str] = []
    done = 0  # tokens whose text has been emitted
    for end in range(1, len(token_ids) + 1):
        context = max(0, done - 4)
        text = decode(token_ids[context:end])
        if text.endswith("\ufffd"):
            pieces.append("")
            continue
        pieces.append(text[len(decode(token_ids[context:done])):])
        done = end
    return pieces


@dataclass(frozen=True)
class DecodeRow:
    """One answer to decode: a request's prompt with its decoding settings (a sampled request has ``n``)."""

    request: int          # index of its request in the batch
    choice: int
    prompt: str
    question: str
    max_new_tokens: int
    temperature: float    # 0: greedy
    top_p: float
    seed: int | None

    def group_key(self) -> tuple[Any, ...]:
        """Rows that one ``generate`` call can decode together (it takes one setting per call).

        A seeded request is decoded alone, so its answers do not depend on what else was in the
        batch: the same request and seed give the same answers.
        """
        alone = self.request if self.seed is not None else -1
        return (self.max_new_tokens, self.temperature, self.top_p, alone)


def decode_rows(requests: Sequence[EngineRequest]) -> list[DecodeRow]:
    """Every answer a batch of requests needs, request by request."""
    # Greedy rows ignore top-p and seed, so every greedy row of one length shares a call.
    return [DecodeRow(i, j, r.prompt, r.question or r.prompt, r.max_new_tokens, r.temperature,
                      1.0 if r.greedy else r.top_p, None if r.greedy else r.seed)
            for i, r in enumerate(requests) for j in range(r.rows)]


class ConfidenceEngine:
    """Batched generation with a confidence per answer from one ``certa.methods`` method.

    ``method`` must be usable without fitting: a training-free baseline
    (``sequence_likelihood``, ``mean_entropy``, ``p_true``…) or the method of a
    trained GrACE / ConfTuner artifact loaded as ``lm``. Not thread-safe: the
    server calls ``complete`` (or runs its decode loop) from one worker thread.

    Decoding happens in :meth:`decode` (rows in, one ``Generation`` per row out; the micro-batcher's
    path through :meth:`complete`) or in the continuous-batching loop of :meth:`make_scheduler`, which
    decodes :meth:`answer_rows` as requests arrive; both hand their generations to :meth:`results`
    (stop strings, scoring, choices), so the two paths answer alike.
    """

    def __init__(self, lm: LoadedModel, method: str = "sequence_likelihood", *, model_name: str | None = None):
        self.lm = lm
        self.model_name = model_name or lm.name
        self.method_name = method
        self.method = get_method(method, model=lm)
        if self.method.requires_fit:
            raise CertaError(f"method {method!r} must be fitted on graded records, which the server cannot do; "
                             "serve a training-free method or a trained artifact")
        if Needs.SAMPLES in self.method.needs:
            raise CertaError(f"method {method!r} needs sampled answers, which the server does not generate; "
                             "pick a method that does not need samples")
        # A method that reads its confidence while decoding (GrACE) hands generation its hooks.
        self._hooks = self.method.generation_hooks()
        # The prompt thread counts prompt tokens while the worker thread generates; a fast tokenizer
        # must not be used from two threads at once, so counting gets its own copy.
        self._counter = copy.deepcopy(lm.tokenizer)
        self._special_ids = set(lm.tokenizer.all_special_ids) | set(end_token_ids(lm))
        self._answer_stops = tuple(answer_stop_strings(lm))

    @property
    def fingerprint(self) -> str:
        """What produced the answers: the artifact's digest (or the model name) and the method."""
        source = self.lm.artifact_id[:12] if self.lm.artifact_id else self.lm.name
        return f"certa-{source}-{self.method_name}"

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        # The renderer every certa stage uses, so a served answer and its confidence read-out see the
        # same prompt format as training did (templates or certa's few-shot layout alike).
        return render_chat(self._counter, list(messages))

    def count_tokens(self, text: str) -> int:
        return len(self._counter(text, add_special_tokens=False)["input_ids"])

    def score_records(self, records: Sequence[Record]) -> list[float]:
        """The served method's confidence for graded records (an abstention calibration file)."""
        return [float(c) for c in self.method(list(records))]

    def complete(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        return self.results(requests, self.decode(decode_rows(requests)))

    def make_scheduler(self, settings: ServerSettings) -> Scheduler:
        """The continuous-batching decode loop (:class:`~certa.serving.continuous.ContinuousScheduler`):
        a request's rows join the running batch at the next decoding step."""
        from .continuous import ContinuousScheduler

        return ContinuousScheduler(self, max_rows=settings.max_batch, max_queue=settings.max_queue)

    def answer_rows(self, request: EngineRequest, key: Any) -> list[AnswerRow]:
        """The decoder rows of one request (keys ``(key, choice)``), each as :meth:`decode` would decode it:
        greedy rows unseeded, a seeded request's choices seeded as in a call of their own, the others from
        a fresh random seed."""
        seed = 0 if request.greedy else request.seed if request.seed is not None else secrets.randbits(32)
        tag = "choice" if not request.greedy and request.seed is not None else "row"
        rows = [AnswerRow(self.lm, Example(id=f"{tag}-{row.choice}", question=row.question, answers=[""],
                                           meta={RAW_PROMPT_KEY: row.prompt}),
                          key=(key, row.choice), max_new_tokens=row.max_new_tokens, temperature=row.temperature,
                          top_p=row.top_p, seed=seed, hooks=self._hooks)
                for row in decode_rows([request])]
        if request.stop:  # the row ends (and frees its slot) at the token that completes a client's stop string
            for row in rows:
                row.request.stop_strings = (*self._answer_stops, *request.stop)
        return rows

    def results(self, requests: Sequence[EngineRequest], generations: Sequence[Generation]) -> list[EngineResult]:
        """The answers to ``requests`` from their decoded rows (one generation per :func:`decode_rows` row, in
        order): stop strings applied, the method's confidence, the choices (a greedy answer repeated ``n`` times)."""
        rows = decode_rows(requests)
        for gen, row in zip(generations, rows, strict=True):
            self._apply_stop(gen, requests[row.request].stop)
        examples = [Example(id=f"row-{k}", question=row.question, answers=[""]) for k, row in enumerate(rows)]
        confidences = self._score(generations, examples)
        choices: list[list[ChoiceResult]] = [[] for _ in requests]
        for gen, conf, row in zip(generations, confidences, rows, strict=True):
            choices[row.request].append(self._choice(gen, conf))
        return [EngineResult(found * r.n if r.greedy else found, self._worker_count(r.prompt))
                for found, r in zip(choices, requests, strict=True)]

    def decode(self, rows: Sequence[DecodeRow]) -> list[Generation]:
        """One generation per row, through ``certa.generation.generate``: one call per group of rows
        sharing their settings (:meth:`DecodeRow.group_key`), each group one batch."""
        out: dict[int, Generation] = {}
        groups: dict[tuple[Any, ...], list[int]] = {}
        for k, row in enumerate(rows):
            groups.setdefault(row.group_key(), []).append(k)
        for members in groups.values():
            first = rows[members[0]]
            # Ids only need to be unique within a call; a seeded request's are its choice numbers, so
            # its sampling seed (derived from the seed and the ids) never depends on the batch.
            alone = first.seed is not None
            examples = [Example(id=f"choice-{rows[k].choice}" if alone else f"row-{k}", question=rows[k].question,
                                answers=[""], meta={RAW_PROMPT_KEY: rows[k].prompt}) for k in members]
            sampled = first.temperature > 0
            seed = first.seed if alone else secrets.randbits(32) if sampled else 0
            found = generate(self.lm, examples, max_new_tokens=first.max_new_tokens, batch_size=len(examples),
                             hooks=self._hooks, progress=False, seed=seed, sample_answer=sampled,
                             temperature=first.temperature if sampled else 1.0, top_p=first.top_p)
            out.update(zip(members, found, strict=True))
        return [out[k] for k in range(len(rows))]

    def _worker_count(self, text: str) -> int:
        # The worker thread owns lm.tokenizer; the event loop's copy must not be shared with it.
        return len(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _apply_stop(self, gen: Generation, stops: Sequence[str]) -> None:
        """Cut a generation at its first stop string, keeping the per-token lists aligned.

        The model's own stop text (a template-less model's newline) never reaches the client; a client's
        stop string that cuts the answer drops the confidences read while decoding, since they describe
        the longer text: the method reads the answer the client gets.
        """
        keep = [i for i, t in enumerate(gen.token_ids) if t not in self._special_ids]
        pieces = token_pieces(self.lm.tokenizer, [gen.token_ids[i] for i in keep])
        answer, _ = cut_at_stop(pieces, self._answer_stops)
        kept, cut = cut_at_stop(answer, stops)
        gen.meta["pieces"] = kept
        if not cut:
            return
        gen.confidence, gen.sample_confidence, gen.hidden_state = {}, {}, None
        # Keep at least the token the stop string starts in: log-prob methods need one token to score,
        # and an answer cut to nothing was still that token's choice.
        last = keep[len(kept) - 1] + 1 if kept else (keep[0] + 1 if keep else 1)
        gen.token_ids, gen.token_logprobs = gen.token_ids[:last], gen.token_logprobs[:last]
        gen.token_entropies = gen.token_entropies[:last]
        gen.response, gen.finish_reason = "".join(kept).strip(), "stop"

    def _score(self, generations: Sequence[Generation], examples: Sequence[Example]) -> list[float]:
        records = [Record.from_generation(g, ex, correct=0.0) for g, ex in zip(generations, examples, strict=True)]
        return [float(c) for c in self.method(records)]

    def _choice(self, gen: Generation, confidence: float) -> ChoiceResult:
        pieces = gen.meta["pieces"]
        logprobs = [lp for t, lp in zip(gen.token_ids, gen.token_logprobs, strict=True) if t not in self._special_ids]
        return ChoiceResult(text="".join(pieces), finish_reason=gen.finish_reason, confidence=confidence,
                            tokens=pieces, token_logprobs=logprobs[: len(pieces)])
