"""The GPU paths on a real device: loading, generation, GrACE, ConfTuner and scoring, against CPU float32.

Runs on the device named by ``CERTA_TEST_DEVICE`` (``cuda``, ``cuda:1``, ``cpu``), else on ``cuda`` when
torch sees one; skipped otherwise (CI has no GPU). ``CERTA_TEST_DTYPE`` (``bfloat16``, ``float32``)
overrides the loader's default dtype, which is bfloat16 on CUDA and float32 on CPU, so the bf16 paths
can be exercised on a CPU too::

    CERTA_TEST_DEVICE=cuda pytest -q tests/test_device.py            # what benchmarks/gpu_check.sh runs
    CERTA_TEST_DEVICE=cpu CERTA_TEST_DTYPE=bfloat16 pytest -q tests/test_device.py

Every comparison is with the same model, records and artifact on the CPU at float32. bf16 on a random
tiny model can flip a near-tied greedy token, so answers are compared on their first token (which
depends on the prompt alone) and at float32 on the device; confidences get a bf16-sized tolerance.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import test_grace
import torch
from test_conftuner import config as conftuner_config
from test_conftuner import make_records as conftuner_records
from test_grace import CONFIG as GRACE_CONFIG
from test_grace import MAX_NEW, QUESTIONS

from certa.generation import generate
from certa.methods import get_method
from certa.methods.conftuner import level_probabilities, train_conftuner
from certa.methods.grace import GraceHook, offline_confidence, train_grace
from certa.methods.runner import score_methods
from certa.models import load_model
from certa.records import Example, Record
from certa.training.trainer import TRAIN_LOG

# test_grace's fixtures, shared: pytest finds a fixture under the name it has in this module.
lively_dir = test_grace.lively_dir
train_records = test_grace.train_records

DEVICE = os.environ.get("CERTA_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
DTYPE = os.environ.get("CERTA_TEST_DTYPE") or None
if DEVICE is None:
    pytest.skip("no CUDA device and CERTA_TEST_DEVICE is unset (set it to 'cpu' to run these tests here)",
                allow_module_level=True)


def _on_device(path, dtype=DTYPE):
    return load_model(str(path), device=DEVICE, dtype=dtype)


def _on_cpu(path):
    return load_model(str(path), device="cpu", dtype="float32")


def _low_precision(lm) -> bool:
    return lm.dtype != torch.float32


def _tolerance(lm) -> float:
    """How far a probability read at ``lm``'s dtype may stray from CPU float32's: bf16 keeps 8 bits."""
    return 0.03 if _low_precision(lm) else 1e-4


def _examples():
    return [Example(id=f"q{i}", question=q, answers=["x"]) for i, q in enumerate(QUESTIONS)]


def _losses(artifact_dir) -> list[float]:
    rows = [json.loads(line) for line in (artifact_dir / TRAIN_LOG).read_text().splitlines() if line.strip()]
    return [float(r["loss"]) for r in rows]


def _check_probabilities(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    assert np.isfinite(values).all(), values
    assert ((values >= 0) & (values <= 1)).all(), values
    return values


@pytest.fixture(scope="module")
def device_lm(lively_dir):
    return _on_device(lively_dir)


@pytest.fixture(scope="module")
def cpu_answers(lively_dir):
    return generate(_on_cpu(lively_dir), _examples(), max_new_tokens=MAX_NEW, progress=False)


def test_the_loader_puts_every_weight_on_the_device_at_the_default_dtype(device_lm):
    wanted = torch.device(DEVICE)
    expected = torch.bfloat16 if wanted.type == "cuda" else torch.float32
    assert device_lm.device.type == wanted.type
    assert device_lm.dtype == (getattr(torch, DTYPE) if DTYPE else expected)
    places = {(p.device.type, p.device.index or 0, p.dtype) for p in device_lm.model.parameters()}
    assert places == {(wanted.type, wanted.index or 0, device_lm.dtype)}


def test_greedy_answers_on_the_device_match_cpu_float32(device_lm, cpu_answers):
    gens = generate(device_lm, _examples(), max_new_tokens=MAX_NEW, progress=False)
    for g in gens:
        assert g.token_ids and len(g.token_logprobs) == len(g.token_ids) == len(g.token_entropies)
        assert all(math.isfinite(x) and x <= 1e-6 for x in g.token_logprobs), g.token_logprobs
        assert all(math.isfinite(x) and x >= -1e-6 for x in g.token_entropies), g.token_entropies
    # The first token depends on the prompt alone: a bf16 flip there is a near-tie, so most must agree,
    # and where they agree so must its log-prob.
    same_first = [i for i, (a, b) in enumerate(zip(gens, cpu_answers, strict=True))
                  if a.token_ids[0] == b.token_ids[0]]
    assert len(same_first) >= 0.75 * len(gens), f"{len(same_first)}/{len(gens)} first tokens agree"
    gap = max(abs(gens[i].token_logprobs[0] - cpu_answers[i].token_logprobs[0]) for i in same_first)
    assert gap <= (0.1 if _low_precision(device_lm) else 1e-3), gap


def test_greedy_answers_at_float32_on_the_device_equal_the_cpus(lively_dir, cpu_answers):
    gens = generate(_on_device(lively_dir, "float32"), _examples(), max_new_tokens=MAX_NEW, progress=False)
    same = sum(a.token_ids == b.token_ids for a, b in zip(gens, cpu_answers, strict=True))
    assert same >= len(gens) - 1, f"only {same}/{len(gens)} answers equal the CPU's"
    np.testing.assert_allclose([g.token_logprobs[0] for g in gens], [g.token_logprobs[0] for g in cpu_answers],
                               atol=1e-3)


@pytest.fixture(scope="module")
def grace_artifact(lively_dir, train_records, tmp_path_factory):
    out = train_grace(_on_device(lively_dir), train_records, GRACE_CONFIG, tmp_path_factory.mktemp("grace-device"),
                      progress=False)
    return out


def test_grace_trains_on_the_device_and_reads_what_cpu_float32_reads(grace_artifact, train_records):
    losses = _losses(grace_artifact)
    assert losses and all(math.isfinite(x) for x in losses), losses
    on_device = _on_device(grace_artifact)
    assert on_device.device.type == torch.device(DEVICE).type
    conf = _check_probabilities(offline_confidence(on_device, train_records))
    reference = _check_probabilities(offline_confidence(_on_cpu(grace_artifact), train_records))
    np.testing.assert_allclose(conf, reference, atol=_tolerance(on_device))
    assert np.ptp(reference) > 0.1  # the confidences differ by far more than the tolerance: not two constants


def test_grace_hook_on_the_device_reads_what_its_offline_readout_reads(grace_artifact):
    lm = _on_device(grace_artifact)
    gens = generate(lm, _examples(), max_new_tokens=MAX_NEW, hooks=[GraceHook()], batch_size=5, progress=False)
    hooked = _check_probabilities([g.confidence["grace"] for g in gens])
    records = [Record.from_generation(g, e, 0.0) for g, e in zip(gens, _examples(), strict=True)]
    np.testing.assert_allclose(hooked, offline_confidence(lm, records), atol=_tolerance(lm))


@pytest.fixture(scope="module")
def conftuner_artifact(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("conftuner-device")
    train_conftuner(_on_device(tiny_model_dir), conftuner_records(), conftuner_config(), out, progress=False)
    return out


def test_conftuner_trains_on_the_device_and_reads_what_cpu_float32_reads(conftuner_artifact):
    losses = _losses(conftuner_artifact)
    assert len(losses) == conftuner_config().max_steps and all(math.isfinite(x) for x in losses), losses
    records = conftuner_records()
    on_device, on_cpu = _on_device(conftuner_artifact), _on_cpu(conftuner_artifact)
    # The tiny model's expected confidences all sit near 0.5, so the level distributions are compared:
    # they are far from flat, and each must match the CPU's level by level.
    levels, _ = level_probabilities(on_device, records)
    reference, _ = level_probabilities(on_cpu, records)
    tolerance = _tolerance(on_device) / 3
    np.testing.assert_allclose(_check_probabilities(levels).sum(axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(levels, reference, atol=tolerance)
    assert np.ptp(reference, axis=1).min() > 2 * tolerance
    conf = _check_probabilities(get_method("conftuner", model=on_device)(records))
    np.testing.assert_allclose(conf, get_method("conftuner", model=on_cpu)(records), atol=tolerance)


def test_score_methods_on_the_device_gives_finite_scores_that_match_cpu_float32(device_lm, lively_dir):
    examples = _examples()
    gens = generate(device_lm, examples, max_new_tokens=MAX_NEW, hidden_states=True, progress=False)
    records = [Record.from_generation(g, e, float(i % 2)) for i, (g, e) in enumerate(zip(gens, examples, strict=True))]
    assert all(len(r.hidden_state) == device_lm.model.config.hidden_size for r in records)
    methods = ["sequence_likelihood", "token_entropy", "p_true", "verbalized", "pmi"]
    scored = score_methods(methods, records, default_model=device_lm)
    for name in methods:
        assert np.isfinite(scored[name].scores).all(), (name, scored[name].scores)
    # The read-outs that run a forward on the device, against the same records read by the CPU float32
    # model (PMI: its unconditional pass; the log-prob methods only repeat the numbers generation stored).
    read = ["p_true", "verbalized", "pmi"]
    reference = score_methods(read, records, default_model=_on_cpu(lively_dir))
    for name in read:
        _check_probabilities(scored[name].scores)
        np.testing.assert_allclose(scored[name].scores, reference[name].scores, atol=_tolerance(device_lm))
    assert max(np.ptp(reference[name].scores) for name in read) > 0.1
