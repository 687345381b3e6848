"""``certa serve``: load a model, wrap it in a ``ConfidenceEngine`` and run uvicorn (what the CLI calls)."""

from __future__ import annotations

import logging

from ..errors import MissingDependencyError
from ..models import load_model
from .engine import ConfidenceEngine
from .settings import ServerSettings

logger = logging.getLogger(__name__)


def default_method(lm) -> str:
    """A trained artifact serves its own method; any other model the free likelihood baseline."""
    return (lm.artifact or {}).get("method") or "sequence_likelihood"


def serve(model: str = "default", method: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, *, model_name: str | None = None, settings: ServerSettings | None = None,
          log_level: str = "info") -> None:
    """Load ``model`` and serve it until SIGINT / SIGTERM (queued requests are finished first).

    ``model_name`` is the id clients pass as ``model`` (default: the model spec).
    """
    try:
        import uvicorn

        from .app import create_app
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(f"the server needs {exc.name}: pip install 'certa[serve]'") from None
    lm = load_model(model)
    engine = ConfidenceEngine(lm, method or default_method(lm), model_name=model_name or model)
    app = create_app(engine, settings, api_key=api_key)
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s without an API key: anyone who can reach it can use the model", host)
    # uvicorn handles SIGTERM: it stops accepting, lets open requests finish, then runs the app's
    # shutdown, which drains the batch queue.
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=60)
