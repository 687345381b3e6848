"""``certa serve``: the OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from ..errors import InputError, first_validation_problem
from ..serving.abstention import DEFAULT_REFUSAL
from ..serving.server import serve as run_server
from ..serving.settings import ServerSettings
from .app import app

_DEFAULTS = ServerSettings()


def _help(field: str) -> str:
    return ServerSettings.model_fields[field].description or field


@app.command()
def serve(
    model: Annotated[str | None, typer.Option("--model", "-m", help="'default', an HF id or path, a .gguf file, or a certa artifact (default: the bundled GrACE artifact when installed, else the default model)")] = None,
    method: Annotated[str | None, typer.Option(help="confidence method (default: the artifact's own, else sequence_likelihood)")] = None,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="require this bearer token", envvar="CERTA_API_KEY")] = None,
    model_name: Annotated[str | None, typer.Option(help="the model id clients send (default: --model)")] = None,
    scheduler: Annotated[str, typer.Option(help=_help("scheduler"))] = _DEFAULTS.scheduler,
    max_batch: Annotated[int, typer.Option(help=_help("max_batch"))] = _DEFAULTS.max_batch,
    batch_wait_ms: Annotated[float, typer.Option(help=_help("batch_wait_ms"))] = _DEFAULTS.batch_wait_ms,
    max_queue: Annotated[int, typer.Option(help=_help("max_queue"))] = _DEFAULTS.max_queue,
    max_prompt_tokens: Annotated[int, typer.Option(help=_help("max_prompt_tokens"))] = _DEFAULTS.max_prompt_tokens,
    max_body_bytes: Annotated[int, typer.Option(help=_help("max_body_bytes"))] = _DEFAULTS.max_body_bytes,
    abstain_target_error: Annotated[float | None, typer.Option(help="withhold answers below the threshold certified to keep the error of given answers at most this (fitted on --calibration, or the artifact's stored one)")] = None,
    calibration: Annotated[Path | None, typer.Option(help="scores JSONL (certa score) or graded records with the served method's confidences, to fit the abstention threshold")] = None,
    calibration_column: Annotated[str | None, typer.Option(help="the column of a --calibration scores file (default: the served method)")] = None,
    abstain_delta: Annotated[float, typer.Option(help="allowed probability that the certified threshold misses the target")] = 0.05,
    abstain_threshold: Annotated[float | None, typer.Option(help="withhold answers whose raw confidence is below this (no guarantee)")] = None,
    refusal: Annotated[str, typer.Option(help="the content that replaces a withheld answer")] = DEFAULT_REFUSAL,
    db: Annotated[Path | None, typer.Option(help="SQLite file recording every served answer and the labels sent to /v1/feedback")] = None,
    recalibrate: Annotated[str | None, typer.Option(help="refit a calibration map on the stored labels: every=N[,min=M][,kind=isotonic|platt|beta][,max=K] (needs --db)")] = None,
    store_text: Annotated[bool, typer.Option(help="keep question and answer text in --db (off: ids and confidences only)")] = True,
    engine: Annotated[str, typer.Option(help="hf (transformers) or vllm (needs the 'vllm' extra and a GPU)")] = "hf",
) -> None:
    """Serve an OpenAI-compatible API whose every choice carries a confidence."""
    if engine != "hf":
        _vllm_serving(engine)
    if scheduler not in ("continuous", "micro"):
        raise InputError(f"--scheduler must be 'continuous' or 'micro', got {scheduler!r}")
    try:
        settings = ServerSettings(scheduler=scheduler, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                                  max_queue=max_queue, max_prompt_tokens=max_prompt_tokens,
                                  max_body_bytes=max_body_bytes)
    except ValidationError as exc:
        field, _, message = first_validation_problem(exc)
        option = "--" + field.replace("_", "-") if field else "an option"
        raise InputError(f"{option}: {message}") from None
    run_server(model, method=method, host=host, port=port, api_key=api_key, model_name=model_name, settings=settings,
               abstain_target_error=abstain_target_error, calibration=str(calibration) if calibration else None,
               calibration_column=calibration_column, abstain_delta=abstain_delta,
               abstain_threshold=abstain_threshold, refusal=refusal, db=str(db) if db else None,
               recalibrate=recalibrate, store_text=store_text)


def _vllm_serving(engine: str) -> None:
    """``--engine vllm``: the option is accepted and checked; the server's vLLM backend is not built yet."""
    from ..errors import CertaError, InputError
    from ..vllm_engine import require_vllm

    if engine != "vllm":
        raise InputError(f"--engine must be 'hf' or 'vllm', got {engine!r}")
    require_vllm()
    raise CertaError("certa serve --engine vllm is not available yet: generate with `certa generate --engine vllm "
                     "-m OUT` on a model exported by `certa export ARTIFACT OUT --format merged`")
