"""The study ``certa run`` and ``certa demo`` carry out, stage by stage, every stage cached.

1. **Answers** — each dataset's train and test questions answered and graded,
   with exactly the evidence the chosen methods read (:mod:`.stages`).
2. **Training** — each trained method on the pooled train answers, and (for
   the cross-domain stage) on each listed dataset alone (:mod:`.training`).
3. **One base model** — loaded once, every artifact attached to it as a named
   adapter; each method gets the view it reads with.
4. **Scoring and evaluation** — every method on every test set; metrics per
   dataset and pooled (:mod:`.cache`, :mod:`.evaluate`).
5. **Cross-domain** (optional, :mod:`.cross_domain`) and **test-time scaling**
   (optional, :mod:`.scaling`).
6. **Costs** (:mod:`.costs`) and the optional Markdown write-up (:mod:`.publish`).

Layout of ``out/``::

    config.json                          the validated RunConfig that made the run
    <dataset>/...                        answers (see stages), scores.jsonl (+ .meta.json)
    artifacts/<method>                   trained artifacts (certa.load_model-able)
    cross_domain/trained-on-<A>/<method> artifacts trained on A alone
    cross_domain/<A>-to-<B>.scores.jsonl their scores on B's test answers; cross_domain.json
    scaling/...                          sampled answers with confidences; scaling.json, scaling.png
    metrics.json, report.html            evaluation of every method, pooled
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..evaluation import evaluate
from ..models import LoadedModel, attach_artifacts, load_base_model
from ..records import atomic_write_text
from .cache import cached_scores
from .config import RunConfig
from .costs import compute_seconds, generation_seconds, method_costs
from .cross_domain import cross_domain_sources, run_cross_domain
from .curve import score_learning_curve, train_learning_curve
from .evaluate import evaluate_scored, provenance
from .publish import write_results
from .result import StudyResult
from .scaling import run_scaling
from .seeds import run_seed_replicates
from .stages import check_methods, evidence_for, prepare_dataset
from .training import train_methods
from .tune import run_tuning

log = logging.getLogger(__name__)


def run_study(config: RunConfig) -> StudyResult:
    """Run every stage ``config`` asks for; finished stages are reused from ``config.out``."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", config.model_dump_json(indent=2))
    check_methods(config.methods)
    started = time.perf_counter()

    evidence = evidence_for(config.methods, config.generation.samples)
    splits = ("train", "test", "calibration") if config.tuning else ("train", "test")
    base = load_base_model(config.model)
    data = {ds.key: prepare_dataset(config, base, ds, evidence, splits) for ds in config.datasets}
    del base  # training loads its own copy; freeing this one keeps one base model in memory at a time
    gc.collect()
    pooled_train = [r for d in data.values() for r in d.train]
    tuning = (run_tuning(config, pooled_train, {name: d.calibration for name, d in data.items()}, out / "tuning")
              if config.tuning else {})
    tuned = {m: t["chosen"] for m, t in tuning.items()}
    artifacts = train_methods(config, pooled_train, out / "artifacts", tuned,
                              ready={m: Path(t["artifact"]) for m, t in tuning.items()})
    seed_artifacts = {seed: train_methods(config.model_copy(update={"seed": seed}), pooled_train,
                                          out / "artifacts" / f"seed-{seed}", tuned) for seed in config.seeds}
    cross_artifacts = {source: train_methods(config, data[source].train, out / "cross_domain" / f"trained-on-{source}",
                                             tuned)
                       for source in cross_domain_sources(config)}
    curve_artifacts = (train_learning_curve(config, pooled_train, tuned, out, artifacts)
                       if config.learning_curve else {})

    base = load_base_model(config.model)
    attached = attach_artifacts(base, {
        **artifacts,
        **{f"{m}@{source}": path for source, paths in cross_artifacts.items() for m, path in paths.items()},
        **{f"{m}#seed{seed}": path for seed, paths in seed_artifacts.items() for m, path in paths.items()},
        **curve_artifacts,
    })
    views = {m: attached[m] for m in artifacts}
    cross_views = {source: {m: attached[f"{m}@{source}"] for m in paths} for source, paths in cross_artifacts.items()}
    seed_views = {seed: {m: attached[f"{m}#seed{seed}"] for m in paths} for seed, paths in seed_artifacts.items()}

    scored = {}
    per_dataset = {}
    for name, d in data.items():
        scored[name] = cached_scores(config.methods, d.test, out / name / "scores.jsonl", fit_records=pooled_train,
                                     models=views, default_model=base, provenance=provenance(config, views))
        per_dataset[name] = evaluate_scored(config, d.test, scored[name])
    seeds = run_seed_replicates(config, data, scored, seed_views, base, out, seed_artifacts) if config.seeds else {}

    cross = run_cross_domain(config, base, data, cross_views, cross_artifacts, out) if config.cross_domain else {}
    scaling = (run_scaling(config, config.dataset(config.scaling.dataset).key, views[config.scaling.confidence], out)
               if config.scaling else {})
    curve = (score_learning_curve(config, pooled_train, [r for d in data.values() for r in d.test],
                                  {name: attached[name] for name in curve_artifacts}, base, out, curve_artifacts,
                                  artifacts)
             if config.learning_curve else {})
    costs = method_costs(config.methods, data, scored, artifacts, scaling)

    extra = {
        "config": json.loads(config.model_dump_json()),
        "datasets": {name: {"train": len(d.train), "test": len(d.test)} for name, d in data.items()},
        "costs": costs,
        "generation_seconds": generation_seconds(data),
        "compute_seconds": compute_seconds(data, scored, artifacts, cross, scaling, seeds, curve, tuning),
        "diagnostics": {m: {name: scored[name][m].diagnostics for name in data} for m in config.methods},
        "tuning": {m: {k: v for k, v in t.items() if k != "rows"} for m, t in tuning.items()},
        "by_dataset": {name: res.to_dict() for name, res in per_dataset.items()},
        "run_seconds": time.perf_counter() - started,
        "peak_memory_gb": peak_memory_gb(),
        "hardware": hardware(base),
    }
    pooled_records = [r for d in data.values() for r in d.test]
    evaluation = evaluate(
        pooled_records, {m: np.concatenate([scored[name][m].scores for name in data]) for m in config.methods},
        n_bins=config.evaluation.n_bins, n_bootstrap=config.evaluation.n_bootstrap, seed=config.seed, extra=extra,
    )
    evaluation.save(out, report_title=f"certa — {config.model} on {', '.join(per_dataset)}")
    result = StudyResult(out, evaluation, per_dataset, costs, artifacts, cross, scaling, tuning, seeds, curve)
    if config.publish:
        result.markdown = write_results(config, result)
    return result


def tune_study(config: RunConfig) -> dict[str, Any]:
    """Only the tuning stage of ``config`` (``certa tune``): train and calibration answers, then the grids."""
    if config.tuning is None:
        raise InputError("the config has no 'tuning' section: nothing to tune")
    out = Path(config.out)
    check_methods(config.methods)
    evidence = evidence_for(config.methods, config.generation.samples)
    base = load_base_model(config.model)
    data = {ds.key: prepare_dataset(config, base, ds, evidence, ("train", "calibration")) for ds in config.datasets}
    del base
    gc.collect()
    return run_tuning(config, [r for d in data.values() for r in d.train],
                      {name: d.calibration for name, d in data.items()}, out / "tuning")


def peak_memory_gb() -> float:
    """The process's peak resident memory so far, in GB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 ** 3 if sys.platform == "darwin" else 1024 ** 2)


def hardware(lm: LoadedModel) -> dict[str, Any]:
    """The device the study ran on, the CPU cores and torch's thread count."""
    name = torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else "CPU"
    return {"device": name, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
