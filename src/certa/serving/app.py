"""The FastAPI application: OpenAI-compatible endpoints with a confidence on every choice.

Routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models`` (OpenAI's), and certa's
``/v1/feedback`` (label a served answer), ``/v1/calibration`` (the recalibration map and the
abstention threshold in use) and ``/health``. The request → answer path: validate and bound the
request, queue it on the scheduler (micro-batches, or the engine's own), map each raw confidence to
the served one (:class:`~certa.serving.loop.FeedbackLoop`), apply the abstention threshold to the
raw confidence (:class:`~certa.serving.abstention.Abstention`), record the choices, respond.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import CertaError, InputError
from .abstention import Abstention
from .batcher import MicroBatcher, QueueFullError, Scheduler, ShuttingDownError
from .body_limit import BodySizeLimit
from .engine import Engine, EngineRequest, EngineResult
from .feedback import DuplicateLabelError, FeedbackError, InvalidLabelError, UnknownAnswerError
from .loop import FeedbackLoop, ServedChoice
from .responses import (
    Decided,
    Reply,
    chat_chunks,
    chat_response,
    completion_chunks,
    completion_response,
    sse,
)
from .schemas import (
    CalibrationReportOut,
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    FeedbackAck,
    FeedbackRequest,
    ModelList,
    TextCompletion,
)
from .settings import ServerSettings

logger = logging.getLogger(__name__)
T = TypeVar("T")


class APIError(Exception):
    """An error returned to the client as OpenAI's ``{"error": {...}}`` object."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


def _streamed(model: type) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model, "description": "the completion; with stream=true, server-sent events "
                  "(data: <chunk JSON> lines, ending with data: [DONE])",
                  "content": {"text/event-stream": {"schema": _SSE_EVENT}}}}


# One server-sent event as OpenAPI describes event streams: ``data`` is a chunk's JSON, or ``[DONE]``.
_SSE_EVENT = {"type": "object", "required": ["data"],
              "properties": {"data": {"type": "string", "description": "a chunk as JSON, or [DONE] at the end"},
                             "event": {"type": "string"}, "id": {"type": "string"}}}


_COMPLETION_ERRORS = _errors(400, 401, 404, 429, 500, 503)


def create_app(engine: Engine, settings: ServerSettings | None = None, *, api_key: str | None = None,
               abstention: Abstention | None = None, feedback: FeedbackLoop | None = None,
               **overrides: Any) -> FastAPI:
    """Build the server app around ``engine``.

    ``settings`` (or keyword ``overrides`` of its fields) bound the queue
    (beyond it: 429), shape the micro-batches and reject over-large requests
    with a 400. ``api_key`` (optional) is required as ``Authorization: Bearer
    <key>`` on every ``/v1`` endpoint. ``abstention`` withholds answers below its
    threshold; ``feedback`` records answers and labels and recalibrates
    (default: neither).
    """
    limits = (settings or ServerSettings()).model_copy(update=overrides)
    loop = feedback or FeedbackLoop(method=engine.method_name, model=engine.model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.scheduler = _scheduler(engine, limits)
        app.state.scheduler.start()
        # One thread renders and counts prompts: a long one must not stall the event loop, and the
        # engine's counting tokenizer must not be used from two threads at once.
        app.state.prompt_thread = ThreadPoolExecutor(1, thread_name_prefix="certa-prompt")
        await loop.run(loop.start)
        yield
        # Uvicorn has already let in-flight requests finish; drain whatever is still queued.
        await app.state.scheduler.stop()
        app.state.prompt_thread.shutdown(wait=False, cancel_futures=True)
        loop.close()

    app = FastAPI(title="certa", summary="OpenAI-compatible completions with calibrated confidence",
                  lifespan=lifespan)
    app.state.engine, app.state.limits, app.state.created = engine, limits, int(time.time())
    app.state.abstention, app.state.feedback = abstention, loop
    fingerprint = getattr(engine, "fingerprint", None)
    _install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes, refusal=lambda: APIError(
        413, f"the request body is larger than {limits.max_body_bytes} bytes", code="request_too_large").response())
    auth = [Depends(_bearer_check(api_key))]

    @app.get("/health", response_model=None)
    async def health(request: Request) -> JSONResponse:
        """``status`` ok (200), or unavailable (503) while shutting down or after the decode loop died."""
        scheduler: Scheduler = request.app.state.scheduler
        up = scheduler.accepting
        body = {"status": "ok" if up else "unavailable", "model": engine.model_name,
                "confidence_method": engine.method_name, "queued": scheduler.queued,
                "batches": scheduler.stats.batches, "max_batch_seen": scheduler.stats.max_batch_seen,
                "abstention_threshold": abstention.threshold if abstention else None,
                "feedback": loop.enabled, "recalibration": loop.recalibrator is not None,
                "record_failures": loop.record_failures}
        return JSONResponse(body, status_code=200 if up else 503)

    @app.get("/v1/models", dependencies=auth, response_model=None, responses={200: {"model": ModelList},
                                                                              **_errors(401)})
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": engine.model_name, "object": "model",
                                            "created": app.state.created, "owned_by": "certa"}]}

    @app.post("/v1/chat/completions", dependencies=auth, response_model=None,
              responses={**_streamed(ChatCompletion), **_COMPLETION_ERRORS})
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        prompt = await _in_prompt_thread(request, engine.render_chat, [(m.role, m.text()) for m in body.messages])
        users = [m.text() for m in body.messages if m.role == "user"]
        question = users[-1] if users else ""
        result = await _run(request, body, prompt, body.requested_max_tokens, question)
        reply = Reply.new("chatcmpl", engine.model_name, fingerprint, engine.method_name, logprobs=body.logprobs,
                          include_abstained=body.include_abstained_answer)
        decided = await _decide_and_record(request, reply, result, question)
        if body.stream:
            return sse(chat_chunks(reply, decided, result, body.include_usage))
        return chat_response(reply, decided, result)

    @app.post("/v1/completions", dependencies=auth, response_model=None,
              responses={**_streamed(TextCompletion), **_COMPLETION_ERRORS})
    async def completions(body: CompletionRequest, request: Request):
        if body.echo:
            raise APIError(400, "echo is not supported", param="echo", code="unsupported_parameter")
        result = await _run(request, body, body.prompt, body.requested_max_tokens, body.prompt)
        reply = Reply.new("cmpl", engine.model_name, fingerprint, engine.method_name,
                          logprobs=body.logprobs is not None, include_abstained=body.include_abstained_answer)
        decided = await _decide_and_record(request, reply, result, body.prompt)
        if body.stream:
            return sse(completion_chunks(reply, decided, result, body.include_usage))
        return completion_response(reply, decided, result)

    @app.post("/v1/feedback", dependencies=auth, response_model=None,
              responses={200: {"model": FeedbackAck}, **_errors(400, 401, 404, 409, 500)})
    async def feedback_route(body: FeedbackRequest) -> dict[str, Any]:
        """Label a served answer: ``correct`` true/false or partial credit in [0, 1]; write-once.

        The label is on disk when the response arrives. Unknown ids are a 404, a second label for
        the same choice a 409, a malformed one a 400; none of them changes anything.
        """
        if not loop.enabled:
            raise APIError(404, "feedback is not enabled on this server; start it with --db FILE",
                           code="feedback_disabled")
        try:
            label = await loop.run(loop.label, body.id, body.choice, body.correct)
        except FeedbackError as exc:
            raise APIError(exc.http_status, str(exc), param=_feedback_param(exc), code=_feedback_code(exc),
                           type="invalid_request_error" if exc.http_status < 500 else "server_error") from None
        return {"object": "feedback", "id": label.completion_id, "choice": label.choice, "correct": label.correct,
                "labelled_at": label.labelled_at}

    @app.get("/v1/calibration", dependencies=auth, response_model=None,
             responses={200: {"model": CalibrationReportOut}, **_errors(401)})
    async def calibration() -> dict[str, Any]:
        """The confidence pipeline in use: stored labels, ECE before/after, the map, the abstention threshold."""
        report = await loop.run(loop.report)
        return {"object": "calibration", "model": engine.model_name, "confidence_method": engine.method_name,
                **report, "abstention": abstention.to_dict() if abstention else None}

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _scheduler(engine: Engine, limits: ServerSettings) -> Scheduler:
    """The engine's own scheduler (continuous batching) when it has one and the settings ask for it
    (the default), else micro-batches."""
    make = getattr(engine, "make_scheduler", None)
    if callable(make) and limits.scheduler == "continuous":
        return make(limits)
    return MicroBatcher(engine.complete, max_queue=limits.max_queue, max_batch=limits.max_batch,
                        batch_wait_ms=limits.batch_wait_ms)


async def _run(request: Request, body: ChatCompletionRequest | CompletionRequest, prompt: str,
               max_tokens: int | None, question: str) -> EngineResult:
    """Check a request against the limits, queue it and wait for its answers."""
    engine: Engine = request.app.state.engine
    limits: ServerSettings = request.app.state.limits
    if body.model != engine.model_name:
        # OpenAI's answer for an unknown model: 404, code model_not_found, param null.
        raise APIError(404, f"The model `{body.model}` does not exist or you do not have access to it "
                            f"(this server serves `{engine.model_name}`).", code="model_not_found")
    if body.n > limits.max_n:
        raise APIError(400, f"n is {body.n}; at most {limits.max_n} choices per request", param="n",
                       code="n_too_large")
    if max_tokens is not None and max_tokens > limits.max_new_tokens_limit:
        raise APIError(400, f"max_tokens is {max_tokens}; at most {limits.max_new_tokens_limit}",
                       param="max_tokens", code="max_tokens_too_large")
    prompt_tokens = await _in_prompt_thread(request, engine.count_tokens, prompt)
    if prompt_tokens > limits.max_prompt_tokens:
        raise APIError(400, f"the prompt has {prompt_tokens} tokens; at most {limits.max_prompt_tokens}",
                       param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                       code="context_length_exceeded")
    sampling = body.sampling
    job = EngineRequest(prompt=prompt, max_new_tokens=max_tokens or min(limits.default_max_tokens,
                                                                        limits.max_new_tokens_limit),
                        n=body.n, stop=tuple(body.stops), question=question,
                        temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed)
    try:
        return await _unless_disconnected(request, request.app.state.scheduler.submit(job))
    except QueueFullError as exc:
        raise APIError(429, f"{exc}; retry later", type="rate_limit_error", code="queue_full") from None
    except ShuttingDownError as exc:
        raise APIError(503, str(exc), type="server_error", code="shutting_down") from None
    except InputError as exc:
        raise APIError(400, str(exc)) from None
    except CertaError as exc:  # the server's own failure (a method's NaN, a missing package), not the request's
        raise APIError(500, str(exc), type="server_error") from None


async def _in_prompt_thread(request: Request, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` on the server's prompt thread (rendering and counting a prompt)."""
    return await asyncio.get_running_loop().run_in_executor(request.app.state.prompt_thread, work, *args)


DISCONNECT_POLL_S = 0.25
"""How often a waiting request checks that its client is still connected."""


async def _unless_disconnected(request: Request, waiting: Any) -> EngineResult:
    """Await ``waiting``; if the client hangs up first, cancel it (the scheduler drops the request's rows)."""
    task = asyncio.ensure_future(waiting)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise APIError(499, "the client closed the request", code="client_closed_request")
    finally:
        task.cancel()  # a no-op once it is done; otherwise (this handler cancelled) the request goes too


async def _decide_and_record(request: Request, reply: Reply, result: EngineResult, question: str) -> list[Decided]:
    """Served confidence and abstention for every choice, then the choices stored (before responding,
    so the id the client receives can be labelled at once)."""
    loop: FeedbackLoop = request.app.state.feedback
    abstention: Abstention | None = request.app.state.abstention
    decided = []
    for choice in result.choices:
        withheld = abstention is not None and abstention.withholds(choice.confidence)
        decided.append(Decided(choice, loop.served(choice.confidence), withheld,
                               abstention.refusal if abstention is not None else None))
    if loop.enabled:
        served = [ServedChoice(choice.confidence, d.confidence, d.abstained, choice.text)
                  for choice, d in zip(result.choices, decided, strict=True)]
        try:
            await loop.run(loop.record, reply.id, question, served, float(reply.created))
        except Exception:  # the answer is still served; the client just cannot label it
            loop.record_failures += 1
            logger.exception("could not record completion %s in the feedback store", reply.id)
    return decided


def _feedback_code(exc: FeedbackError) -> str:
    if isinstance(exc, UnknownAnswerError):
        return "answer_not_found"
    if isinstance(exc, DuplicateLabelError):
        return "already_labelled"
    if isinstance(exc, InvalidLabelError):
        return "invalid_label"
    return "feedback_store_error"


def _feedback_param(exc: FeedbackError) -> str | None:
    return "correct" if isinstance(exc, InvalidLabelError) and "correct" in str(exc) else None


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


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, less its 422 responses: validation errors are OpenAI-style 400s here."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


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
