"""The FastAPI application: OpenAI-compatible endpoints with a confidence on every choice."""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import CertaError
from .batcher import MicroBatcher, QueueFullError, ShuttingDownError
from .engine import ChoiceResult, Engine, EngineRequest, EngineResult
from .schemas import ChatCompletionRequest, CompletionRequest
from .settings import ServerSettings

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error returned to the client as OpenAI's ``{"error": {...}}`` object."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def create_app(engine: Engine, settings: ServerSettings | None = None, *, api_key: str | None = None,
               **overrides: Any) -> FastAPI:
    """Build the server app around ``engine``.

    ``settings`` (or keyword ``overrides`` of its fields) bound the queue
    (beyond it: 429), shape the micro-batches and reject over-large requests
    with a 400. ``api_key`` (optional) is required as ``Authorization: Bearer
    <key>`` on every ``/v1`` endpoint.
    """
    limits = (settings or ServerSettings()).model_copy(update=overrides)
    max_queue, max_batch, batch_wait_ms = limits.max_queue, limits.max_batch, limits.batch_wait_ms

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = MicroBatcher(engine.complete, max_queue=max_queue, max_batch=max_batch,
                                         batch_wait_ms=batch_wait_ms)
        app.state.batcher.start()
        yield
        # Uvicorn has already let in-flight requests finish; drain whatever is still queued.
        await app.state.batcher.stop()

    app = FastAPI(title="certa", summary="OpenAI-compatible completions with calibrated confidence",
                  lifespan=lifespan)
    app.state.engine, app.state.limits, app.state.created = engine, limits, int(time.time())
    _install_error_handlers(app)
    auth = [Depends(_bearer_check(api_key))]

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        batcher: MicroBatcher = request.app.state.batcher
        return {"status": "ok", "model": engine.model_name, "confidence_method": engine.method_name,
                "queued": batcher.queued, "batches": batcher.stats.batches,
                "max_batch_seen": batcher.stats.max_batch_seen}

    @app.get("/v1/models", dependencies=auth)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": engine.model_name, "object": "model",
                                            "created": app.state.created, "owned_by": "certa"}]}

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        prompt = engine.render_chat([(m.role, m.text()) for m in body.messages])
        users = [m.text() for m in body.messages if m.role == "user"]
        result = await _run(request, body, prompt, body.requested_max_tokens, users[-1] if users else "")
        meta = _meta("chatcmpl", engine.model_name)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return _sse(_chat_chunks(meta, result, engine.method_name, body.logprobs, include_usage))
        return _chat_response(meta, result, engine.method_name, body.logprobs)

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionRequest, request: Request):
        if body.echo:
            raise APIError(400, "echo is not supported", param="echo", code="unsupported_parameter")
        result = await _run(request, body, body.prompt, body.requested_max_tokens, body.prompt)
        meta = _meta("cmpl", engine.model_name)
        with_logprobs = body.logprobs is not None
        if body.stream:
            return _sse(_completion_chunks(meta, result, engine.method_name, with_logprobs))
        return _completion_response(meta, result, engine.method_name, with_logprobs)

    return app


async def _run(request: Request, body: ChatCompletionRequest | CompletionRequest, prompt: str,
               max_tokens: int | None, question: str) -> EngineResult:
    """Check a request against the limits, queue it and wait for its answers."""
    engine: Engine = request.app.state.engine
    limits: ServerSettings = request.app.state.limits
    if body.model != engine.model_name:
        raise APIError(404, f"the model {body.model!r} does not exist; this server serves {engine.model_name!r}",
                       param="model", code="model_not_found")
    if body.n > limits.max_n:
        raise APIError(400, f"n is {body.n}; at most {limits.max_n} choices per request", param="n",
                       code="n_too_large")
    if max_tokens is not None and max_tokens > limits.max_new_tokens_limit:
        raise APIError(400, f"max_tokens is {max_tokens}; at most {limits.max_new_tokens_limit}",
                       param="max_tokens", code="max_tokens_too_large")
    prompt_tokens = engine.count_tokens(prompt)
    if prompt_tokens > limits.max_prompt_tokens:
        raise APIError(400, f"the prompt has {prompt_tokens} tokens; at most {limits.max_prompt_tokens}",
                       param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                       code="context_length_exceeded")
    job = EngineRequest(prompt=prompt, max_new_tokens=max_tokens or min(limits.default_max_tokens,
                                                                        limits.max_new_tokens_limit),
                        n=body.n, stop=tuple(body.stops),
                        question=question)
    try:
        return await request.app.state.batcher.submit(job)
    except QueueFullError as exc:
        raise APIError(429, f"{exc}; retry later", type="rate_limit_error", code="queue_full") from None
    except ShuttingDownError as exc:
        raise APIError(503, str(exc), type="server_error", code="shutting_down") from None
    except CertaError as exc:
        raise APIError(400, str(exc)) from None


def _bearer_check(api_key: str | None):
    async def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # Constant-time comparison: response timing must not reveal how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or incorrect API key; send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    return check


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return APIError(400, f"malformed JSON body: {first.get('msg')}", code="invalid_json").response()
        param = ".".join(loc) or None
        where = f"{param}: " if param else ""
        return APIError(400, f"{where}{first.get('msg')}", param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return APIError(exc.status_code, str(exc.detail), code=code).response()

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("request failed")
        return APIError(500, f"internal error: {type(exc).__name__}", type="server_error").response()


# ---- response bodies -------------------------------------------------------------------------------


def _meta(prefix: str, model: str) -> dict[str, Any]:
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}


def _usage(result: EngineResult) -> dict[str, int]:
    prompt, completion = result.prompt_tokens, result.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _confidence(choice: ChoiceResult, method: str) -> dict[str, Any]:
    return {"confidence": choice.confidence, "confidence_method": method}


def _chat_logprobs(tokens: list[str], logprobs: list[float]) -> dict[str, Any]:
    # Only the chosen token's log-prob comes out of generation; alternatives are not computed.
    content = [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
               for t, lp in zip(tokens, logprobs, strict=True)]
    return {"content": content, "refusal": None}


def _text_logprobs(tokens: list[str], logprobs: list[float]) -> dict[str, Any]:
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": None, "text_offset": offsets}


def _chat_response(meta: dict, result: EngineResult, method: str, logprobs: bool) -> dict[str, Any]:
    choices = [{"index": i, "message": {"role": "assistant", "content": c.text},
                "logprobs": _chat_logprobs(c.tokens, c.token_logprobs) if logprobs else None,
                "finish_reason": c.finish_reason, **_confidence(c, method)}
               for i, c in enumerate(result.choices)]
    return {**meta, "object": "chat.completion", "choices": choices, "usage": _usage(result)}


def _completion_response(meta: dict, result: EngineResult, method: str, logprobs: bool) -> dict[str, Any]:
    choices = [{"index": i, "text": c.text,
                "logprobs": _text_logprobs(c.tokens, c.token_logprobs) if logprobs else None,
                "finish_reason": c.finish_reason, **_confidence(c, method)}
               for i, c in enumerate(result.choices)]
    return {**meta, "object": "text_completion", "choices": choices, "usage": _usage(result)}


def _chat_chunks(meta: dict, result: EngineResult, method: str, logprobs: bool,
                 include_usage: bool) -> Iterator[dict[str, Any]]:
    """OpenAI chat chunks: a role chunk, one chunk per token, then a final chunk with the confidence."""
    head = {**meta, "object": "chat.completion.chunk"}
    for i, choice in enumerate(result.choices):
        yield {**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None, "finish_reason": None}]}
        for token, lp in zip(choice.tokens, choice.token_logprobs, strict=True):
            yield {**head, "choices": [{"index": i, "delta": {"content": token},
                                        "logprobs": _chat_logprobs([token], [lp]) if logprobs else None,
                                        "finish_reason": None}]}
        yield {**head, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                    "finish_reason": choice.finish_reason, **_confidence(choice, method)}]}
    if include_usage:
        yield {**head, "choices": [], "usage": _usage(result)}


def _completion_chunks(meta: dict, result: EngineResult, method: str, logprobs: bool) -> Iterator[dict[str, Any]]:
    """Legacy completion chunks: one per token, then a final one with the confidence."""
    head = {**meta, "object": "text_completion"}
    for i, choice in enumerate(result.choices):
        for token, lp in zip(choice.tokens, choice.token_logprobs, strict=True):
            yield {**head, "choices": [{"index": i, "text": token, "finish_reason": None,
                                        "logprobs": _text_logprobs([token], [lp]) if logprobs else None}]}
        yield {**head, "choices": [{"index": i, "text": "", "logprobs": None,
                                    "finish_reason": choice.finish_reason, **_confidence(choice, method)}]}


def _sse(chunks: Iterator[dict[str, Any]]) -> StreamingResponse:
    # The answer is already complete when streaming starts (it came out of a batch), so the
    # events are produced eagerly; streaming still lets clients use their ordinary code path.
    async def events() -> AsyncIterator[str]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
