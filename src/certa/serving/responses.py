"""Response bodies and server-sent event streams in OpenAI's shapes, with certa's confidence fields.

Every choice carries ``confidence`` (as served: recalibrated when the server recalibrates),
``confidence_method`` and ``abstained``. A withheld choice's content is the refusal text (chat
messages also set OpenAI's ``refusal`` field); its answer and log-probs come back only when the
request set ``include_abstained_answer`` (as ``abstained_answer``).

Streams: a choice's content chunks are sent once its confidence is known, so a withheld answer is
never streamed; its content chunk is the refusal, and the choice's final chunk (the one with
``finish_reason``) carries ``confidence``, ``confidence_method`` and ``abstained``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse

from .engine import ChoiceResult, EngineResult


@dataclass(frozen=True)
class Decided:
    """A choice with the server's decision on it: the served confidence and whether it is withheld."""

    choice: ChoiceResult
    confidence: float
    abstained: bool
    refusal: str | None = None

    @property
    def content(self) -> str:
        return self.refusal if self.abstained and self.refusal is not None else self.choice.text


@dataclass(frozen=True)
class Reply:
    """Everything a response body needs besides the choices."""

    id: str
    created: int
    model: str
    fingerprint: str | None
    method: str
    logprobs: bool
    include_abstained: bool

    @classmethod
    def new(cls, prefix: str, model: str, fingerprint: str | None, method: str, *, logprobs: bool,
            include_abstained: bool) -> Reply:
        return cls(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model, fingerprint, method, logprobs,
                   include_abstained)

    def head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint}

    def shows_answer(self, d: Decided) -> bool:
        return not d.abstained or self.include_abstained

    def decision(self, d: Decided) -> dict[str, Any]:
        out: dict[str, Any] = {"confidence": d.confidence, "confidence_method": self.method, "abstained": d.abstained}
        if d.abstained and self.include_abstained:
            out["abstained_answer"] = d.choice.text
        return out


def usage(result: EngineResult) -> dict[str, int]:
    prompt, completion = result.prompt_tokens, result.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_logprobs(tokens: list[str], logprobs: list[float]) -> dict[str, Any]:
    # Only the chosen token's log-prob comes out of generation; alternatives are not computed.
    content = [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
               for t, lp in zip(tokens, logprobs, strict=True)]
    return {"content": content, "refusal": None}


def text_logprobs(tokens: list[str], logprobs: list[float]) -> dict[str, Any]:
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": None, "text_offset": offsets}


def chat_response(reply: Reply, decided: Sequence[Decided], result: EngineResult) -> dict[str, Any]:
    choices = []
    for i, d in enumerate(decided):
        c = d.choice
        shown = reply.shows_answer(d)
        choices.append({
            "index": i,
            "message": {"role": "assistant", "content": d.content, "refusal": d.content if d.abstained else None},
            "logprobs": chat_logprobs(c.tokens, c.token_logprobs) if reply.logprobs and shown else None,
            "finish_reason": c.finish_reason, **reply.decision(d)})
    return {**reply.head("chat.completion"), "choices": choices, "usage": usage(result)}


def completion_response(reply: Reply, decided: Sequence[Decided], result: EngineResult) -> dict[str, Any]:
    choices = []
    for i, d in enumerate(decided):
        c = d.choice
        shown = reply.shows_answer(d)
        choices.append({
            "index": i, "text": d.content,
            "logprobs": text_logprobs(c.tokens, c.token_logprobs) if reply.logprobs and shown else None,
            "finish_reason": c.finish_reason, **reply.decision(d)})
    return {**reply.head("text_completion"), "choices": choices, "usage": usage(result)}


def chat_chunks(reply: Reply, decided: Sequence[Decided], result: EngineResult,
                include_usage: bool) -> Iterator[dict[str, Any]]:
    """OpenAI chat chunks per choice: a role chunk, its content (one chunk per token, or the refusal),
    then a final chunk with ``finish_reason`` and the decision."""
    head = reply.head("chat.completion.chunk")
    for i, d in enumerate(decided):
        c = d.choice
        yield {**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None, "finish_reason": None}]}
        if d.abstained:
            yield {**head, "choices": [{"index": i, "delta": {"content": d.content, "refusal": d.content},
                                        "logprobs": None, "finish_reason": None}]}
        else:
            for token, lp in zip(c.tokens, c.token_logprobs, strict=True):
                yield {**head, "choices": [{"index": i, "delta": {"content": token},
                                            "logprobs": chat_logprobs([token], [lp]) if reply.logprobs else None,
                                            "finish_reason": None}]}
        yield {**head, "choices": [{"index": i, "delta": {}, "logprobs": None, "finish_reason": c.finish_reason,
                                    **reply.decision(d)}]}
    if include_usage:
        yield {**head, "choices": [], "usage": usage(result)}


def completion_chunks(reply: Reply, decided: Sequence[Decided], result: EngineResult,
                      include_usage: bool) -> Iterator[dict[str, Any]]:
    """Legacy completion chunks: one per token (or the refusal), then a final one with the decision; the
    usage last when asked for."""
    head = reply.head("text_completion")
    for i, d in enumerate(decided):
        c = d.choice
        if d.abstained:
            yield {**head, "choices": [{"index": i, "text": d.content, "finish_reason": None, "logprobs": None}]}
        else:
            for token, lp in zip(c.tokens, c.token_logprobs, strict=True):
                yield {**head, "choices": [{"index": i, "text": token, "finish_reason": None,
                                            "logprobs": text_logprobs([token], [lp]) if reply.logprobs else None}]}
        yield {**head, "choices": [{"index": i, "text": "", "logprobs": None, "finish_reason": c.finish_reason,
                                    **reply.decision(d)}]}
    if include_usage:
        yield {**head, "choices": [], "usage": usage(result)}


def sse(chunks: Iterator[dict[str, Any]]) -> StreamingResponse:
    # The answers are complete when streaming starts (they came out of a batch with their
    # confidences), so the events are produced eagerly; streaming keeps client code uniform.
    async def events() -> AsyncIterator[str]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
