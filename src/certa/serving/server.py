"""``certa serve``: choose what to serve, load it, wrap it in a ``ConfidenceEngine`` and run uvicorn.

With no options the server serves calibrated confidence: the bundled GrACE artifact for the
default model (``default-grace``) when it is installed, and otherwise the best it has — raw
sequence likelihood on the default model, said plainly at start-up, since that number is not
calibrated. :func:`choose_served` makes the choice; :func:`startup_line` is the one line that
tells the user what is served.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError, MissingDependencyError
from ..models import builtin_model_names, load_model
from .abstention import DEFAULT_REFUSAL, Abstention, calibration_data, fit_abstention, stored_abstention
from .engine import ConfidenceEngine
from .settings import ServerSettings

if TYPE_CHECKING:
    from ..models import LoadedModel
    from .loop import FeedbackLoop

logger = logging.getLogger(__name__)

#: The bundled trained artifact ``certa serve`` prefers when given no model.
DEFAULT_ARTIFACT = "default-grace"
DEFAULT_BASE = "default"
#: The free fallback: the generation's own log-probs, no extra pass (not calibrated on its own).
FALLBACK_METHOD = "sequence_likelihood"


@dataclass(frozen=True)
class ServePlan:
    """What ``certa serve`` will load (``model``) and serve (``method``; None: the artifact's own), and why."""

    model: str
    method: str | None
    note: str = ""


def bundled_available(name: str) -> bool:
    """Whether ``load_model(name)`` knows ``name`` as a built-in (a bundled artifact once packaged)."""
    return name in builtin_model_names()


def choose_served(model: str | None, method: str | None, *,
                  available: Callable[[str], bool] = bundled_available) -> ServePlan:
    """The model and method to serve for the user's ``--model`` / ``--method`` (None: not given).

    - ``--model`` given: that model, with ``--method`` or (decided after loading) the artifact's own
      method, else sequence likelihood.
    - No ``--model``, and no ``--method`` or ``--method grace``: the bundled GrACE artifact when it
      is installed; otherwise the default base model with sequence likelihood, with a note that it is
      uncalibrated.
    - No ``--model`` but another ``--method``: that method on the default base model.
    """
    if model is not None:
        return ServePlan(model, method)
    if method in (None, "grace"):
        if available(DEFAULT_ARTIFACT):
            return ServePlan(DEFAULT_ARTIFACT, None, "the bundled GrACE artifact")
        if method == "grace":
            raise InputError(f"--method grace needs a trained GrACE artifact: the bundled {DEFAULT_ARTIFACT!r} is "
                             "not installed; train one with `certa train grace` and pass --model DIR")
        return ServePlan(DEFAULT_BASE, FALLBACK_METHOD,
                            f"the bundled GrACE artifact {DEFAULT_ARTIFACT!r} is not installed, so this is raw "
                            "sequence likelihood, which is NOT calibrated (ECE about 0.44 on the default model); "
                            "use --recalibrate with --db, or --model a trained artifact")
    return ServePlan(DEFAULT_BASE, method)


def served_method(lm: LoadedModel, method: str | None) -> str:
    """``method`` when given; a trained artifact serves its own method; any other model the free baseline."""
    return method or (lm.artifact or {}).get("method") or FALLBACK_METHOD


def startup_line(engine: ConfidenceEngine, note: str = "", *, abstention: Abstention | None = None,
                 feedback: FeedbackLoop | None = None) -> str:
    """The one line ``certa serve`` prints before serving: model, method, artifact, and the policies."""
    lm = engine.lm
    source = f"artifact {lm.artifact_id[:12]} ({lm.artifact.get('method')})" if lm.artifact and lm.artifact_id \
        else "no trained artifact"
    parts = [f"certa serve: model {engine.model_name!r} ({lm.name}), confidence {engine.method_name!r}, {source}"]
    if note:
        parts.append(note)
    if abstention is not None:
        parts.append(abstention.describe())
    if feedback is not None and feedback.enabled:
        rec = feedback.recalibrator
        parts.append(f"feedback in {feedback.store.path}" if feedback.store else "feedback")
        if rec is not None:
            parts.append(f"recalibration {rec.kind} every {rec.every} labels (min {rec.min_labels})")
    return "; ".join(parts)


def build_abstention(engine: ConfidenceEngine, target_error: float | None, *, calibration: str | os.PathLike[str] | None,
                     delta: float = 0.05, threshold: float | None = None, refusal: str = DEFAULT_REFUSAL,
                     column: str | None = None) -> Abstention | None:
    """The abstention policy from the CLI's options (None: no abstention).

    ``threshold`` is a raw threshold given by hand (no guarantee); ``target_error`` with
    ``calibration`` fits a certified one on that file; ``target_error`` alone uses the one the
    served artifact stores.
    """
    if threshold is not None:
        if target_error is not None or calibration is not None:
            raise InputError("pass either --abstain-threshold or --abstain-target-error (with --calibration), not both")
        return Abstention(float(threshold), refusal, None, "--abstain-threshold")
    if target_error is None:
        if calibration is not None:
            raise InputError("--calibration is used to fit an abstention threshold: pass --abstain-target-error too")
        return None
    if calibration is None:
        return stored_abstention(engine.lm.artifact, target_error, delta, refusal=refusal,
                                 where=f"model {engine.lm.name!r}")
    conf, correct = calibration_data(calibration, engine.method_name, engine.score_records, column=column)
    return fit_abstention(conf, correct, target_error, delta, refusal=refusal, source=f"fitted on {Path(calibration).name}")


def serve(model: str | None = None, method: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, *, model_name: str | None = None, settings: ServerSettings | None = None,
          log_level: str = "info", abstain_target_error: float | None = None, calibration: str | None = None,
          abstain_delta: float = 0.05, abstain_threshold: float | None = None, refusal: str = DEFAULT_REFUSAL,
          calibration_column: str | None = None, db: str | None = None, recalibrate: str | None = None,
          store_text: bool = True) -> None:
    """Load the model and serve it until SIGINT / SIGTERM (queued requests are finished first).

    ``model=None`` serves the default (:func:`choose_served`). ``model_name`` is the id clients pass as
    ``model`` (default: the model spec). ``db`` stores every served answer and the labels clients
    send (``POST /v1/feedback``); ``recalibrate`` (``"every=N,..."``, needs ``db``) refits a
    calibration map on them. ``abstain_*`` withhold answers below a threshold.
    """
    try:
        import uvicorn

        from .app import create_app
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(f"the server needs {exc.name}: pip install 'certa[serve]'") from None
    from .feedback import FeedbackStore
    from .loop import FeedbackLoop, parse_recalibrate

    recalibrator = parse_recalibrate(recalibrate) if recalibrate else None
    if recalibrator is not None and db is None:
        raise InputError("--recalibrate learns from stored labels: pass --db FILE too")
    choice = choose_served(model, method)
    lm = load_model(choice.model)
    # With no --model, clients keep sending "default" whichever default artifact is behind it.
    name = model_name or (DEFAULT_BASE if model is None else choice.model)
    engine = ConfidenceEngine(lm, served_method(lm, choice.method), model_name=name)
    abstention = build_abstention(engine, abstain_target_error, calibration=calibration, delta=abstain_delta,
                                  threshold=abstain_threshold, refusal=refusal, column=calibration_column)
    loop = FeedbackLoop(FeedbackStore(db) if db else None, recalibrator, method=engine.method_name,
                        model=engine.model_name, store_text=store_text)
    app = create_app(engine, settings, api_key=api_key, abstention=abstention, feedback=loop)
    print(startup_line(engine, choice.note, abstention=abstention, feedback=loop), file=sys.stderr, flush=True)
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s without an API key: anyone who can reach it can use the model", host)
    # uvicorn handles SIGTERM: it stops accepting, lets open requests finish, then runs the app's
    # shutdown, which drains the batch queue.
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=60)
