"""Model cards: the ``README.md`` every trained artifact carries, written from its ``certa.json``.

A card is Hugging Face-style Markdown with YAML front matter (the metadata the Hub indexes, see
the Hub's model-card docs: ``base_model``, ``library_name``, ``license``, ``tags`` and a
``model-index`` of results) followed by prose that says what the artifact is, what it was
trained on and with which settings, how it scored, and how to load it.

:func:`model_card` is pure: the same ``certa.json`` contents give the same card, so the trainer
writes it for every artifact (:func:`write_model_card`, called by ``save_artifact``) and nothing
is written by hand. Held-out metrics are not known when training ends; a study (or a user) adds
them afterwards with :func:`add_evaluation_to_card`, which rewrites the card atomically and
leaves ``certa.json`` and the weights untouched (so the artifact's id does not change).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError, UnknownNameError
from ..records import atomic_write_text
from ..textfiles import read_json_object, read_text
from .sources import ALIASES, BUILTIN_MODELS

CARD_FILE = "README.md"
ARTIFACT_FILE = "certa.json"
LIBRARY_NAME = "certa"
CI_LEVEL = 0.95

#: What each trained method is, for the card's prose (the method classes live above ``models/``).
METHODS: dict[str, tuple[str, str]] = {
    "grace": ("GrACE", "a learned confidence token `<CNF>`: the probability of emitting it right after an "
                       "answer is the answer's chance of being correct (arXiv 2509.09438)"),
    "conftuner": ("ConfTuner", "verbalized confidence trained with a tokenized Brier score: the model states "
                               "how likely its answer is correct (arXiv 2508.18847)"),
}
#: Human names of metrics certa computes (model-index ``name`` fields and the card's tables).
METRIC_NAMES = {"ece": "ECE", "ace": "adaptive ECE", "mce": "MCE", "brier": "Brier score", "nll": "NLL",
                "auroc": "AUROC", "auprc": "AUPRC", "aurc": "AURC", "accuracy": "accuracy"}
_NOT_METRICS = {"reliability", "extra", "description", "higher_is_better"}


def model_card(info: Mapping[str, Any]) -> str:
    """The ``README.md`` of an artifact whose ``certa.json`` holds ``info`` (pure: no I/O).

    ``info`` may also hold ``name`` (the artifact's name; default ``<base>-<method>``) and
    ``evaluation`` (a list of held-out results as :func:`add_evaluation_to_card` stores them).
    """
    meta = card_metadata(info)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100)
    return f"---\n{front}---\n\n{_body(info, meta)}"


def card_metadata(info: Mapping[str, Any]) -> dict[str, Any]:
    """The card's YAML front matter as a dict (plain JSON types only)."""
    method = str(info.get("method", "unknown"))
    base = str(info.get("base_model", "unknown"))
    hub_id, license_id = _base_model_facts(base)
    data = dict(info.get("data") or {})
    config = dict(info.get("train_config") or {})
    name = str(info.get("name") or f"{_short(base)}-{method}")
    meta: dict[str, Any] = {
        "model_name": name,
        "base_model": hub_id or base,
        "library_name": LIBRARY_NAME,
        "license": license_id,
        "pipeline_tag": "text-generation",
        "tags": ["certa", "confidence-estimation", "calibration", method, "peft",
                 "lora" if config.get("target_modules") else "trainable-tokens"],
        "method": method,
        "certa_version": (info.get("versions") or {}).get("certa") or "unknown",
        "training_data": {
            "datasets": list(data.get("datasets") or data.get("sources") or []),
            "answers": data.get("records"),
            "training_items": data.get("items"),
            "answer_accuracy": _round(data.get("accuracy")),
            "answers_from": list(data.get("models") or []),
            "validation_answers": (info.get("validation") or {}).get("answers"),
            "steps": info.get("steps"),
        },
        "hyperparameters": config,
        "evaluation": [_normalise(e) for e in info.get("evaluation") or []],
    }
    results = _validation_results(info) + [_model_index_result(e) for e in meta["evaluation"]]
    if results:
        meta["model-index"] = [{"name": name, "results": results}]
    return json.loads(json.dumps(meta, default=str))  # plain types only: YAML must not carry Python tags


def read_card_metadata(artifact_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse the YAML front matter of an artifact's card; ``InputError`` naming the file otherwise."""
    path = Path(artifact_dir) / CARD_FILE
    text = read_text(path, what="model card")
    if not text.startswith("---\n") or "\n---\n" not in text[3:]:
        raise InputError(f"{path}: no YAML front matter (expected the file to start with '---')")
    block = text[4:text.index("\n---\n", 3) + 1]
    try:
        meta = yaml.safe_load(block)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: malformed YAML front matter ({' '.join(str(exc).split())})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: the front matter is not a mapping")
    return meta


def write_model_card(artifact_dir: str | os.PathLike[str], info: Mapping[str, Any]) -> Path:
    """Write ``README.md`` for the artifact in ``artifact_dir`` (atomically), named after the directory."""
    out = Path(artifact_dir)
    return atomic_write_text(out / CARD_FILE, model_card({"name": out.resolve().name, **info}))


def add_evaluation_to_card(artifact_dir: str | os.PathLike[str], metrics: Mapping[str, Any], *,
                           dataset: str = "held-out", split: str = "test", n: int | None = None,
                           source: str | None = None) -> Path:
    """Add held-out metrics to an artifact's card and rewrite it atomically.

    ``metrics`` maps a metric name to a number, to ``{"value": v, "ci": [low, high]}`` (a method's
    entry in ``metrics.json``, whose other keys are ignored) or to an object with ``value``,
    ``low`` and ``high`` (an :class:`~certa.evaluation.Estimate`). A result for the same
    ``dataset`` and ``split`` replaces the earlier one; results for others are kept. The card
    is rebuilt from ``certa.json`` (unchanged, so the artifact's id stays the same).
    """
    out = Path(artifact_dir)
    info = _read_info(out)
    values = {str(k): _estimate(k, v) for k, v in metrics.items() if str(k) not in _NOT_METRICS}
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        raise InputError(f"add_evaluation_to_card: no metric values in {sorted(metrics)}")
    entry = {"dataset": dataset, "split": split, "n": n, "ci_level": CI_LEVEL, "source": source, "metrics": values}
    earlier = read_card_metadata(out) if (out / CARD_FILE).is_file() else {}
    kept = [e for e in earlier.get("evaluation") or []
            if isinstance(e, dict) and (e.get("dataset"), e.get("split")) != (dataset, split)]
    name = str(earlier.get("model_name") or out.resolve().name)
    return write_model_card(out, {**info, "name": name, "evaluation": [*kept, entry]})


# ---------------------------------------------------------------- pieces


def _base_model_facts(base: str) -> tuple[str | None, str]:
    """(Hub id, license) of a built-in base model; (None, 'other') for one certa does not ship."""
    key = ALIASES.get(base, base)
    try:
        entry = BUILTIN_MODELS.get(key)
    except UnknownNameError:
        return None, "other"
    return entry.hub_id, entry.license


def _short(base: str) -> str:
    return Path(base.rstrip("/")).name or base


def _round(x: Any, digits: int = 4) -> Any:
    return round(float(x), digits) if isinstance(x, (int, float)) and math.isfinite(float(x)) else None


def _estimate(name: Any, value: Any) -> dict[str, Any] | None:
    """``{"value": v, "ci": [low, high] | None}`` from a number, a metrics.json entry or an Estimate."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return {"value": _round(value), "ci": None}
    if isinstance(value, Mapping) and "value" in value:
        ci = value.get("ci") or [value.get("low"), value.get("high")]
        v = value["value"]
    elif hasattr(value, "value"):
        v, ci = value.value, [getattr(value, "low", None), getattr(value, "high", None)]
    else:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise InputError(f"add_evaluation_to_card: metric {name!r} has no numeric value ({v!r})")
    low, high = (list(ci) + [None, None])[:2] if isinstance(ci, (list, tuple)) else (None, None)
    bounds = [_round(low), _round(high)]
    return {"value": _round(v), "ci": bounds if None not in bounds else None}


def _normalise(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {"dataset": str(entry.get("dataset", "held-out")), "split": str(entry.get("split", "test")),
            "n": entry.get("n"), "ci_level": entry.get("ci_level", CI_LEVEL), "source": entry.get("source"),
            "metrics": {str(k): v for k, v in (entry.get("metrics") or {}).items() if isinstance(v, Mapping)}}


def _metric_entries(metrics: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    entries = []
    for key, est in metrics.items():
        if est.get("value") is None:
            continue
        label = METRIC_NAMES.get(key, key)
        ci = est.get("ci")
        name = f"{label} (95% CI {ci[0]}–{ci[1]})" if ci else label
        entries.append({"type": key, "value": est["value"], "name": name, "verified": False})
    return entries


def _model_index_result(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {"task": {"type": "text-generation", "name": "confidence estimation"},
            "dataset": {"name": entry["dataset"], "type": entry["dataset"], "split": entry["split"]},
            "metrics": _metric_entries(entry["metrics"])}


def _validation_results(info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The early-stopping split's Brier scores: the only metrics known when training ends."""
    val = info.get("validation") or {}
    if _round(val.get("brier")) is None:
        return []
    metrics = {"brier": {"value": _round(val.get("brier")), "ci": None}}
    if _round(val.get("brier_recalibrated")) is not None:
        metrics["brier_recalibrated"] = {"value": _round(val.get("brier_recalibrated")), "ci": None}
    return [{"task": {"type": "text-generation", "name": "confidence estimation"},
             "dataset": {"name": "held-out training answers (early stopping)", "type": "certa-validation",
                         "split": "validation"},
             "metrics": _metric_entries(metrics)}]


def _body(info: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    method = meta["method"]
    title, what = METHODS.get(method, (method, f"the trained confidence method {method!r}"))
    name = meta["model_name"]
    base = meta["base_model"]
    data = meta["training_data"]
    lines = [
        f"# {name}: {title} confidence for {base}",
        "",
        f"A [certa](https://pypi.org/project/certa/) artifact: a PEFT adapter for `{base}` that gives every "
        f"answer a calibrated confidence with {title} — {what}. The base model's weights are not included; "
        f"certa loads them (`{info.get('base_model')}`) and attaches this adapter.",
        "",
        "```python",
        "import certa",
        "",
        f'model = certa.load_model("{name}")   # or the path of this directory',
        "```",
        "",
        f"Command line: `certa generate -m {name} ...`, `certa score -m {name} --method {method} ...`, "
        f"`certa serve -m {name}`.",
        "",
        "## Training data",
        "",
        "| what | value |",
        "|---|---|",
    ]
    rows = {"datasets": ", ".join(data["datasets"]) or "not recorded",
            "graded answers": data["answers"], "training items": data["training_items"],
            "accuracy of those answers": data["answer_accuracy"],
            "answers written by": ", ".join(data["answers_from"]) or "not recorded",
            "held out for early stopping": data["validation_answers"], "optimiser steps": data["steps"]}
    lines += [f"| {k} | {'' if v is None else v} |" for k, v in rows.items()]
    lines += ["", "## Hyper-parameters", "", "| setting | value |", "|---|---|"]
    lines += [f"| `{k}` | {_cell(v)} |" for k, v in meta["hyperparameters"].items()]
    lines += ["", "## Evaluation", ""]
    if meta["evaluation"]:
        lines += ["Held-out results (95% bootstrap intervals in brackets):", "",
                  "| dataset | split | n | " + " | ".join(_metric_columns(meta["evaluation"])) + " |",
                  "|---|---|---|" + "---|" * len(_metric_columns(meta["evaluation"]))]
        for e in meta["evaluation"]:
            cells = [_format(e["metrics"].get(k)) for k in _metric_columns(meta["evaluation"])]
            lines.append(f"| {e['dataset']} | {e['split']} | {'' if e['n'] is None else e['n']} | {' | '.join(cells)} |")
    else:
        lines += ["No held-out evaluation recorded yet: a study adds it with "
                  "`certa.models.add_evaluation_to_card(path, metrics)`."]
    val = info.get("validation") or {}
    if val.get("brier") is not None:
        kind = (info.get("recalibration") or {}).get("kind", "identity")
        why = {"auto": " (neither Platt nor beta lowered their out-of-fold Brier score clearly)",
               "none": " (recalibrate: none)"}.get((info.get("train_config") or {}).get("recalibrate"), "")
        if kind == "identity":
            mapped = f"no recalibration map{why}"
        elif kind == "constant":
            mapped = ("the read-out did no better than a constant on them, so this artifact gives every answer the "
                      f"training accuracy, {_round((info.get('recalibration') or {}).get('params', {}).get('p'))}")
        else:
            out_of_fold = _round((val.get("recalibration_brier_out_of_fold") or {}).get(kind))
            mapped = (f"after the {kind} map fitted on them {_round(val.get('brier_recalibrated'))} (in sample"
                      + (f"; out of fold {out_of_fold})" if out_of_fold is not None else ")"))
        lines += ["", f"Early stopping kept step {val.get('best_step')}; Brier score on the held-out training "
                      f"answers {_round(val.get('brier'))}; {mapped}."]
    restarts = info.get("restarts") or {}
    if restarts.get("runs"):
        scores = ", ".join(f"seed {run['seed']} {_round(run['held_out_brier'])}"
                           + (f" (skill {_round(run['held_out_brier_skill'])})" if "held_out_brier_skill" in run else "")
                           for run in restarts["runs"])
        lines += ["", f"Trained {len(restarts['runs'])} times from different seeds; kept seed {restarts['kept_seed']}, "
                      f"the lowest Brier score on the held-out training answers ({scores}; skill: 1 − the Brier score / "
                      "that of the training accuracy as a constant)."]
    versions = info.get("versions") or {}
    lines += ["", "## Software", "", ", ".join(f"{k} {v}" for k, v in versions.items() if v) or "not recorded",
              "", "## License", "",
              f"`{meta['license']}`: the adapter is derived from `{base}` and follows its license."
              if meta["license"] != "other" else
              f"The adapter is derived from `{base}`; check that model's license before use.", ""]
    return "\n".join(lines)


def _metric_columns(evaluation: Iterable[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for e in evaluation:
        seen.update(dict.fromkeys(e["metrics"]))
    return list(seen)


def _format(est: Mapping[str, Any] | None) -> str:
    if not est or est.get("value") is None:
        return ""
    ci = est.get("ci")
    return f"{est['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _cell(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return text.replace("|", "\\|")



def _read_info(artifact_dir: Path) -> dict[str, Any]:
    file = artifact_dir / ARTIFACT_FILE
    if not file.is_file():
        raise InputError(f"{artifact_dir}: not a certa artifact (no {ARTIFACT_FILE})")
    return read_json_object(file)
