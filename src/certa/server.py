"""``certa serve``: an OpenAI-compatible server that returns a confidence with every answer.

``create_app(engine, ...)`` builds the FastAPI app around any ``Engine``;
``serve(model, method, ...)`` loads a model, wraps it in a
``ConfidenceEngine`` and runs uvicorn (what the CLI calls). The pieces live in
``certa.serving``: request schemas, the micro-batcher and the engine.
"""

from __future__ import annotations

import logging

from .errors import MissingDependencyError
from .serving.engine import ChoiceResult, ConfidenceEngine, Engine, EngineRequest, EngineResult

__all__ = ["ChoiceResult", "ConfidenceEngine", "Engine", "EngineRequest", "EngineResult", "create_app", "serve"]

logger = logging.getLogger(__name__)


def create_app(engine: Engine, **options):
    """Build the FastAPI app around ``engine``; see ``certa.serving.app.create_app`` for the options."""
    try:
        from .serving.app import create_app as build
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(f"the server needs {exc.name}: pip install 'certa[serve]'") from None
    return build(engine, **options)


def default_method(lm) -> str:
    """A trained artifact serves its own method; any other model the free likelihood baseline."""
    return (lm.artifact or {}).get("method") or "sequence_likelihood"


def serve(model: str = "default", method: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, *, model_name: str | None = None, max_queue: int = 256,
          max_batch: int = 16, batch_wait_ms: float = 10.0, max_prompt_tokens: int = 2048,
          max_new_tokens_limit: int = 512, default_max_tokens: int = 128, max_n: int = 8,
          log_level: str = "info") -> None:
    """Load ``model`` and serve it until SIGINT / SIGTERM (queued requests are finished first).

    ``model_name`` is the id clients pass as ``model`` (default: the model spec).
    """
    from .models import load_model

    try:
        import uvicorn
    except ModuleNotFoundError:
        raise MissingDependencyError("the server needs uvicorn: pip install 'certa[serve]'") from None
    lm = load_model(model)
    engine = ConfidenceEngine(lm, method or default_method(lm), model_name=model_name or model)
    app = create_app(engine, api_key=api_key, max_queue=max_queue, max_batch=max_batch,
                     batch_wait_ms=batch_wait_ms, max_prompt_tokens=max_prompt_tokens,
                     max_new_tokens_limit=max_new_tokens_limit, default_max_tokens=default_max_tokens,
                     max_n=max_n)
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s without an API key: anyone who can reach it can use the model", host)
    # uvicorn handles SIGTERM: it stops accepting, lets open requests finish, then runs the app's
    # shutdown, which drains the batch queue.
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=60)
