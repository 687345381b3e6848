"""Crash safety tested by killing: ``generate``, ``score`` and ``train`` run as real processes, are
SIGKILLed at random points, and the rerun ends exactly where an uninterrupted run ends.

Each stage is killed at several points drawn from a seeded generator (a record count for
``generate``, a checkpoint for ``train``, a delay for ``score``); the figures of the last run are in
docs/robustness.md.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file

from certa.records import Generation, read_jsonl

KILLS = 2
QUESTIONS = 12
DEADLINE_S = 240


def certa(*args: str) -> list[str]:
    return [sys.executable, "-m", "certa", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "CERTA_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_to_end(cmd: list[str]) -> None:
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr[-2000:]


def kill_when(cmd: list[str], ready: Callable[[], bool]) -> bool:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds; False when it finished first."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start = time.monotonic()
    try:
        while proc.poll() is None:
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            assert time.monotonic() - start < DEADLINE_S, "the run neither finished nor reached the kill point"
            time.sleep(0.01)
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


def lines_in(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kill") / "questions.jsonl"
    rows = [{"id": f"q{i}", "question": f"What is {i} + {2 * i}?", "answers": [str(3 * i)],
             "answer_type": "numeric"} for i in range(QUESTIONS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def generate_cmd(model: Path, questions: Path, out: Path) -> list[str]:
    return certa("generate", "-m", str(model), "-d", str(questions), "--split", "all", "--max-new-tokens", "12",
                 "--batch-size", "2", "--samples", "2", "--temperature", "1.0", "-o", str(out))


def without_timings(path: Path) -> list[dict]:
    """The file's records, each with its wall-clock fields (``meta.seconds``) taken out and nothing else changed."""
    rows = []
    for line in path.read_bytes().decode("utf-8").splitlines():
        row = json.loads(line)       # a torn line fails here
        row.get("meta", {}).pop("seconds", None)
        rows.append(row)
    return rows


def floats_to(tolerance: float, obj: object) -> object:
    """``obj`` with every float wrapped to compare equal within ``tolerance`` (everything else exactly)."""
    if isinstance(obj, float):
        return pytest.approx(obj, abs=tolerance, rel=0)
    if isinstance(obj, dict):
        return {k: floats_to(tolerance, v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [floats_to(tolerance, v) for v in obj]
    return obj


def test_generate_killed_anywhere_resumes_to_the_uninterrupted_records(tmp_path, tiny_model_dir, questions):
    reference = tmp_path / "reference.jsonl"
    run_to_end(generate_cmd(tiny_model_dir, questions, reference))
    rng = random.Random(13)
    out = tmp_path / "killed.jsonl"
    partial = out.with_name(out.name + ".partial")
    killed_at = []
    for _ in range(KILLS + 1):     # killed repeatedly, each time a random number of records further on
        target = lines_in(partial) + rng.randint(1, 4)
        if kill_when(generate_cmd(tiny_model_dir, questions, out), lambda target=target: lines_in(partial) >= target):
            killed_at.append(lines_in(partial))
    if not out.exists():
        run_to_end(generate_cmd(tiny_model_dir, questions, out))
    # Greedy answers and per-question seeded samples: the same tokens and texts in the same order. A resumed
    # run batches different questions together, and padding moves log-probs by float rounding (~1e-6).
    assert without_timings(out) == floats_to(1e-4, without_timings(reference)), f"killed after {killed_at} records"
    assert not partial.exists()
    assert len(killed_at) >= 2 and all(0 < k < QUESTIONS for k in killed_at)
    ids = [g.id for g in read_jsonl(reference, Generation)]
    assert len(ids) == len(set(ids)) == QUESTIONS


def test_score_killed_anywhere_leaves_no_output_or_the_complete_one(tmp_path, tiny_model_dir, questions):
    gens, records = tmp_path / "g.jsonl", tmp_path / "r.jsonl"
    run_to_end(generate_cmd(tiny_model_dir, questions, gens))
    run_to_end(certa("grade", "--in", str(gens), "-d", str(questions), "-o", str(records)))

    def score_cmd(out: Path) -> list[str]:
        return certa("score", "--in", str(records), "-m", str(tiny_model_dir), "-o", str(out),
                     "--method", "sequence_likelihood,p_true,verbalized")

    reference = tmp_path / "reference.jsonl"
    started = time.monotonic()
    run_to_end(score_cmd(reference))
    duration = time.monotonic() - started
    rng = random.Random(7)
    for run in range(KILLS):
        out = tmp_path / f"scores{run}.jsonl"
        delay = rng.uniform(0.3, 0.95) * duration
        began = time.monotonic()
        kill_when(score_cmd(out), lambda began=began, delay=delay: time.monotonic() - began >= delay)
        assert not out.exists() or out.read_bytes() == reference.read_bytes()   # never a torn file
        run_to_end(score_cmd(out))
        assert out.read_bytes() == reference.read_bytes()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert all(name.endswith(".tmp") for name in leftovers)   # only a killed writer's temp files, never renamed


def train_cmd(model: Path, records: Path, out: Path) -> list[str]:
    return certa("train", "grace", "-m", str(model), "--records", str(records), "-o", str(out), "--resume",
                 "--max-steps", "8", "--save-every", "2", "--batch-size", "4", "--validation-fraction", "0",
                 "--recalibrate", "none")


def _artifact(path: Path) -> dict[str, object]:
    """Every tensor and every JSON setting of an artifact (the training log's wall times excluded)."""
    found: dict[str, object] = {}
    for file in sorted(path.rglob("*")):
        rel = file.relative_to(path).as_posix()
        if rel.startswith("checkpoints") or not file.is_file() or rel == "train_log.jsonl":
            continue
        if file.suffix == ".safetensors":
            found.update({f"{rel}:{k}": v for k, v in load_file(file).items()})
        elif file.suffix == ".json":
            found[rel] = _without_times(json.loads(file.read_text()))
        else:  # the model card names the artifact's directory
            found[rel] = file.read_bytes().replace(path.name.encode(), b"ARTIFACT")
    return found


def _without_times(obj: object) -> object:
    if isinstance(obj, dict):      # PEFT writes target_modules from a set: its order is the hash seed's
        return {k: sorted(v) if k == "target_modules" else _without_times(v) for k, v in obj.items()
                if not any(w in k for w in ("time", "seconds", "created"))}
    if isinstance(obj, list):
        return [_without_times(v) for v in obj]
    return obj


def test_train_killed_at_a_checkpoint_resumes_to_the_same_artifact(tmp_path, tiny_model_dir, questions):
    import torch

    gens, records = tmp_path / "g.jsonl", tmp_path / "r.jsonl"
    run_to_end(generate_cmd(tiny_model_dir, questions, gens))
    run_to_end(certa("grade", "--in", str(gens), "-d", str(questions), "-o", str(records)))
    reference = tmp_path / "reference"
    run_to_end(train_cmd(tiny_model_dir, records, reference))
    expected = _artifact(reference)
    rng = random.Random(3)
    for run in range(KILLS):
        out = tmp_path / f"run{run}"
        step = rng.choice([2, 4, 6])
        ckpt = out / "checkpoints" / f"step-{step}"
        assert kill_when(train_cmd(tiny_model_dir, records, out), ckpt.exists), "finished before the kill point"
        run_to_end(train_cmd(tiny_model_dir, records, out))
        got = _artifact(out)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, got[key]), key
            else:
                assert got[key] == value, key
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        steps = [row["step"] for row in log if "step" in row]
        assert steps == sorted(set(steps)) and steps[-1] == 8   # no torn or repeated log line
