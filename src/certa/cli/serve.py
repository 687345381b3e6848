"""``certa serve``: the OpenAI-compatible server."""

from __future__ import annotations

from typing import Annotated

import typer

from ..serving.server import serve as run_server
from ..serving.settings import ServerSettings
from .app import ModelOpt, app

_DEFAULTS = ServerSettings()


def _help(field: str) -> str:
    return ServerSettings.model_fields[field].description or field


@app.command()
def serve(
    model: ModelOpt = "default",
    method: Annotated[str | None, typer.Option(help="confidence method (default: the artifact's own, else sequence_likelihood)")] = None,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="require this bearer token", envvar="CERTA_API_KEY")] = None,
    model_name: Annotated[str | None, typer.Option(help="the model id clients send (default: --model)")] = None,
    max_batch: Annotated[int, typer.Option(help=_help("max_batch"))] = _DEFAULTS.max_batch,
    batch_wait_ms: Annotated[float, typer.Option(help=_help("batch_wait_ms"))] = _DEFAULTS.batch_wait_ms,
    max_queue: Annotated[int, typer.Option(help=_help("max_queue"))] = _DEFAULTS.max_queue,
    engine: Annotated[str, typer.Option(help="hf (transformers) or vllm (needs the 'vllm' extra and a GPU)")] = "hf",
) -> None:
    """Serve an OpenAI-compatible API whose every choice carries a confidence."""
    if engine != "hf":
        _vllm_serving(engine)
    settings = ServerSettings(max_batch=max_batch, batch_wait_ms=batch_wait_ms, max_queue=max_queue)
    run_server(model, method=method, host=host, port=port, api_key=api_key, model_name=model_name, settings=settings)


def _vllm_serving(engine: str) -> None:
    """``--engine vllm``: the option is accepted and checked; the server's vLLM backend is not built yet."""
    from ..errors import CertaError, InputError
    from ..vllm_engine import require_vllm

    if engine != "vllm":
        raise InputError(f"--engine must be 'hf' or 'vllm', got {engine!r}")
    require_vllm()
    raise CertaError("certa serve --engine vllm is not available yet: generate with `certa generate --engine vllm "
                     "-m OUT` on a model exported by `certa export ARTIFACT OUT --format merged`")
