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
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import CertaError
from ..generation import RAW_PROMPT_KEY, generate
from ..methods.base import Needs, get_method
from ..models import end_token_ids, render_chat
from ..records import Example, Record

if TYPE_CHECKING:
    from ..models import LoadedModel
    from ..records import Generation


@dataclass(frozen=True)
class EngineRequest:
    """One prompt, already rendered to the model's text format, and how to continue it.

    Decoding is always greedy: the confidence methods are calibrated for the greedy answer.
    """

    prompt: str
    max_new_tokens: int
    n: int = 1
    stop: tuple[str, ...] = ()
    question: str = ""  # the last user message: what read-out methods (ConfTuner, P(True)) ask about


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
    """What the HTTP layer needs from a model. ``complete`` is only ever called from one thread."""

    model_name: str
    method_name: str

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """(role, text) pairs → the prompt text the model continues."""

    def count_tokens(self, text: str) -> int:
        """Prompt length in tokens (called from the event loop while a batch may be running)."""

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


class ConfidenceEngine:
    """Batched greedy generation with a confidence per answer from one ``certa.methods`` method.

    ``method`` must be usable without fitting: a training-free baseline
    (``sequence_likelihood``, ``mean_entropy``, ``p_true``…) or the method of a
    trained GrACE / ConfTuner artifact loaded as ``lm``. Not thread-safe: the
    server calls ``complete`` from one worker thread.
    """

    def __init__(self, lm: LoadedModel, method: str = "sequence_likelihood", *, model_name: str | None = None,
                 seed: int = 0):
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
        self.seed = seed
        # A method that reads its confidence while decoding (GrACE) hands generation its hooks.
        self._hooks = self.method.generation_hooks()
        # The event loop counts prompt tokens while the worker thread generates; a fast tokenizer
        # must not be used from two threads at once, so counting gets its own copy.
        self._counter = copy.deepcopy(lm.tokenizer)
        self._special_ids = set(lm.tokenizer.all_special_ids) | set(end_token_ids(lm))

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        # The renderer every certa stage uses, so a served answer and its confidence read-out see the
        # same prompt format as training did (templates or certa's few-shot layout alike).
        return render_chat(self._counter, list(messages))

    def count_tokens(self, text: str) -> int:
        return len(self._counter(text, add_special_tokens=False)["input_ids"])

    def complete(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        results: dict[int, EngineResult] = {}
        # One generate call per answer length: a shared max_new_tokens would change finish reasons.
        length = lambda i: requests[i].max_new_tokens  # noqa: E731
        for _, group in itertools.groupby(sorted(range(len(requests)), key=length), key=length):
            indices = list(group)
            answers = self._complete_group([requests[i] for i in indices])
            results.update(zip(indices, answers, strict=True))
        return [results[i] for i in range(len(requests))]

    def _complete_group(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        # Decoding is greedy, so the n choices of a request are one answer repeated: generate it once.
        examples = [Example(id=f"request-{i}", question=r.question or r.prompt, answers=[""],
                            meta={RAW_PROMPT_KEY: r.prompt}) for i, r in enumerate(requests)]
        generations = generate(self.lm, examples, max_new_tokens=requests[0].max_new_tokens,
                               batch_size=len(examples), hooks=self._hooks, seed=self.seed, progress=False)
        for gen, request in zip(generations, requests, strict=True):
            self._apply_stop(gen, request.stop)
        confidences = self._score(generations, examples)
        return [EngineResult([self._choice(gen, conf)] * request.n, self.count_tokens(request.prompt))
                for gen, conf, request in zip(generations, confidences, requests, strict=True)]

    def _apply_stop(self, gen: Generation, stops: Sequence[str]) -> None:
        """Cut a generation at its first stop string, keeping the per-token lists aligned."""
        keep = [i for i, t in enumerate(gen.token_ids) if t not in self._special_ids]
        pieces = token_pieces(self.lm.tokenizer, [gen.token_ids[i] for i in keep])
        kept, cut = cut_at_stop(pieces, stops)
        gen.meta["pieces"] = kept
        if not cut:
            return
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
