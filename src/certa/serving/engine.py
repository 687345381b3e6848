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
from typing import TYPE_CHECKING, Protocol

from ..errors import CertaError

if TYPE_CHECKING:
    from ..models import LoadedModel


@dataclass(frozen=True)
class EngineRequest:
    """One prompt, already rendered to the model's text format, and how to continue it."""

    prompt: str
    max_new_tokens: int
    temperature: float = 0.0
    n: int = 1
    stop: tuple[str, ...] = ()


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


class ConfidenceEngine:
    """Batched generation with a confidence per answer from one ``certa.methods`` method.

    ``method`` must be usable without fitting (a training-free baseline or a
    trained GrACE / ConfTuner artifact loaded as ``lm``).
    """

    def __init__(self, lm: LoadedModel, method: str = "sequence_likelihood", *, model_name: str | None = None,
                 seed: int = 0):
        from ..methods import Needs, get_method

        self.lm = lm
        self.model_name = model_name or lm.name
        self.method_name = method
        self.method = get_method(method, model=lm)
        if self.method.requires_fit and not self.method.fitted:
            raise CertaError(f"method {method!r} must be fitted before serving; serve a training-free "
                             "method or a trained artifact instead")
        if Needs.SAMPLES in self.method.needs:
            raise CertaError(f"method {method!r} needs sampled answers, which the server does not generate; "
                             "pick a method without Needs.SAMPLES")
        self.seed = seed
        self._hooks = tuple(getattr(self.method, "hooks", lambda: ())())
        # The event loop counts prompt tokens while the worker thread generates; a fast tokenizer
        # must not be used from two threads at once, so counting gets its own copy.
        self._counter = copy.deepcopy(lm.tokenizer)
        self._special_ids = set(lm.tokenizer.all_special_ids)

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        from ..prompts import SYSTEM_PROMPT

        chat = [{"role": "system" if role == "developer" else role, "content": text} for role, text in messages]
        if chat[0]["role"] != "system":
            # Same system prompt as every other certa stage, so confidence read-outs see familiar text
            # (and templates such as SmolLM2's do not insert their own default).
            chat.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
        return self._counter.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        return len(self._counter(text, add_special_tokens=False)["input_ids"])

    def complete(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        results: dict[int, EngineResult] = {}
        # One generate call per (length, temperature): a shared max_new_tokens would change
        # finish reasons, and greedy and sampled rows cannot share one decoding call.
        key = lambda i: (requests[i].max_new_tokens, requests[i].temperature)  # noqa: E731
        for _, group in itertools.groupby(sorted(range(len(requests)), key=key), key=key):
            indices = list(group)
            for i, result in zip(indices, self._complete_group([requests[i] for i in indices])):
                results[i] = result
        return [results[i] for i in range(len(requests))]

    def _complete_group(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        from ..generation import generate

        rows = [(r, k) for r in requests for k in range(r.n)]
        first = requests[0]
        generations = generate(
            self.lm, [self._example(r.prompt, i) for i, (r, _) in enumerate(rows)],
            max_new_tokens=first.max_new_tokens, batch_size=len(rows), temperature=first.temperature,
            hooks=self._hooks, seed=self.seed, progress=False,
        )
        for gen, (request, _) in zip(generations, rows):
            self._apply_stop(gen, request.stop)
        confidences = self._score(generations)
        choices = [self._choice(gen, conf) for gen, conf in zip(generations, confidences)]
        out, start = [], 0
        for request in requests:
            out.append(EngineResult(choices[start:start + request.n], self.count_tokens(request.prompt)))
            start += request.n
        return out

    def _example(self, prompt: str, index: int):
        from ..records import Example

        return Example(id=f"req-{index}", question=prompt, answers=[""], meta={"prompt": prompt})

    def _pieces(self, token_ids: Sequence[int]) -> list[str]:
        # Decode growing prefixes so multi-byte characters split over tokens land in one piece
        # and the pieces join exactly to the decoded answer.
        pieces, previous = [], ""
        for end in range(1, len(token_ids) + 1):
            text = self.lm.tokenizer.decode(token_ids[:end], skip_special_tokens=True)
            pieces.append(text[len(previous):] if text.startswith(previous) else text)
            previous = text
        return pieces

    def _apply_stop(self, gen, stops: Sequence[str]) -> None:
        """Cut a generation at its first stop string, keeping the per-token lists aligned."""
        keep = [i for i, t in enumerate(gen.token_ids) if t not in self._special_ids]
        pieces = self._pieces([gen.token_ids[i] for i in keep])
        kept, cut = cut_at_stop(pieces, stops)
        gen.meta["pieces"] = kept
        if not cut:
            return
        last = keep[len(kept) - 1] + 1 if kept else 0
        gen.token_ids, gen.token_logprobs = gen.token_ids[:last], gen.token_logprobs[:last]
        gen.token_entropies = gen.token_entropies[:last]
        gen.response, gen.finish_reason = "".join(kept), "stop"

    def _score(self, generations) -> list[float]:
        from ..records import Example, Record

        records = [Record.from_generation(g, Example(id=g.id, question=g.prompt, answers=[""]), correct=0.0)
                   for g in generations]
        return [float(c) for c in self.method(records)]

    def _choice(self, gen, confidence: float) -> ChoiceResult:
        pieces = gen.meta["pieces"]
        logprobs = [lp for t, lp in zip(gen.token_ids, gen.token_logprobs) if t not in self._special_ids]
        return ChoiceResult(text="".join(pieces), finish_reason=gen.finish_reason, confidence=confidence,
                            tokens=pieces, token_logprobs=logprobs[: len(pieces)])
