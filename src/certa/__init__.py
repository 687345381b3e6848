"""certa: calibrated confidence for every answer a language model gives.

The public API is imported lazily so that ``import certa`` (and the CLI's
``--help``) stays fast; the first use of a name loads its module::

    import certa
    lm = certa.load_model("default")
    data = certa.load_dataset("arithmetic", split="test", limit=100)
    records = certa.grade(certa.generate(lm, data, hidden_states=True), data)
    scores = {m: certa.get_method(m, model=lm)(records) for m in ["sequence_likelihood", "p_true"]}
    certa.evaluate(records, scores).to_html("report.html")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "certa.models",
    "LoadedModel": "certa.models",
    "load_dataset": "certa.data",
    "dataset_names": "certa.data",
    "grade": "certa.data",
    "generate": "certa.generation",
    "get_method": "certa.methods",
    "method_names": "certa.methods",
    "register": "certa.methods",
    "ConfidenceMethod": "certa.methods",
    "evaluate": "certa.evaluation",
    "EvaluationResult": "certa.evaluation",
    "train_grace": "certa.methods.grace",
    "train_conftuner": "certa.methods.conftuner",
    "GraceConfig": "certa.methods.grace",
    "ConfTunerConfig": "certa.methods.conftuner",
    "TrainConfig": "certa.training",
    "RunConfig": "certa.study",
    "run_study": "certa.study",
    "Example": "certa.records",
    "Generation": "certa.records",
    "Record": "certa.records",
    "read_jsonl": "certa.records",
    "write_jsonl": "certa.records",
    "CertaError": "certa.errors",
}

# Modules reachable as attributes, e.g. ``certa.selective.select_threshold(conf, correct, 0.1)``.
_MODULES = {"selective": "certa.uses.selective"}

__all__ = ["__version__", "load", *_EXPORTS, *_MODULES]


def __getattr__(name: str) -> Any:
    if name == "load":  # ``certa.load("runs/grace")`` reads like loading any trained artifact
        return importlib.import_module("certa.models").load_model
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'certa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
