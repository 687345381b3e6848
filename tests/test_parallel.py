"""Data-parallel stages: `accelerate launch --num_processes 2` (gloo on CPU) against one process, on the tiny model.

Every multi-process run here is a real launch: two Python processes joined by
torch.distributed (gloo), each loading the tiny model, answering or scoring its
share and writing its own shard; no process group is faked.

Tolerances, stated once: a process answers other questions in its batches than
one process does, so padding differs and float32 log-probs and hidden states
move by rounding only (asserted to 1e-4); greedy answers must be identical.
DDP training with 2 processes x batch 2 against 1 process x batch 4 (the same
global batch) gives the same loss curve to 1e-4 (the gradients are averaged
over processes instead of over rows; rounding differs).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from certa.parallel import Processes, read_finished, shard_dir, shard_path
from certa.records import Generation, Record, read_jsonl, write_jsonl

SRC = str(Path(__file__).resolve().parents[1] / "src")
TOL = 1e-4


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "CERTA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def certa(*args: str, processes: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the certa CLI in one process, or under `accelerate launch` with ``processes`` processes."""
    if processes == 1:
        command = [sys.executable, "-m", "certa.cli", *args]
    else:
        # On a machine without GPUs, --multi_gpu makes accelerate start the processes through torchrun,
        # and PartialState joins them with gloo (accelerate's --cpu alone starts one process, or mpirun).
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(_free_port()), "-m", "certa.cli", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("parallel") / "questions.jsonl"
    rows = [{"id": f"q{i}", "question": f"What is {i} + {i % 4}?" + " Think." * (i % 3),
             "answers": [str(i + i % 4)], "answer_type": "numeric"} for i in range(11)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _generate_args(model: Path, questions: Path, out: Path) -> list[str]:
    return ["generate", "-m", str(model), "-d", str(questions), "--split", "all", "--max-new-tokens", "5",
            "--batch-size", "3", "--samples", "2", "-o", str(out)]


GENERATION = dict(max_new_tokens=5, batch_size=3, samples=2, hidden_states=True)


@pytest.fixture(scope="module")
def one_and_two(tiny_lm, questions, tmp_path_factory) -> tuple[Path, Path]:
    """The same generation by one process (in this one, through the same code path as the CLI) and by two."""
    from certa.data import load_dataset
    from certa.parallel import generate_parallel

    root = tmp_path_factory.mktemp("gen")
    one, two = root / "one.jsonl", root / "two.jsonl"
    generate_parallel(tiny_lm, load_dataset(str(questions), split="all"), one, progress=False, **GENERATION)
    certa(*_generate_args(tiny_lm.name, questions, two), processes=2)
    return one, two


def _generate_args(model: str, questions: Path, out: Path) -> list[str]:
    return ["generate", "-m", model, "-d", str(questions), "--split", "all", "--max-new-tokens", "5",
            "--batch-size", "3", "--samples", "2", "-o", str(out)]


def assert_same_generations(a: list[Generation], b: list[Generation], same_samples: bool = True) -> None:
    """Same greedy answers; log-probs, entropies and states to TOL; the same sampled answers unless a resume
    changed which questions share a batch (samples are seeded per batch)."""
    assert [g.id for g in a] == [g.id for g in b]
    for x, y in zip(a, b, strict=True):
        assert (x.response, x.token_ids, x.finish_reason) == (y.response, y.token_ids, y.finish_reason), x.id
        assert x.samples == y.samples if same_samples else len(x.samples) == len(y.samples), x.id
        np.testing.assert_allclose(x.token_logprobs, y.token_logprobs, atol=TOL, rtol=0)
        np.testing.assert_allclose(x.token_entropies, y.token_entropies, atol=TOL, rtol=0)
        np.testing.assert_allclose(x.hidden_state, y.hidden_state, atol=TOL, rtol=0)


def test_two_processes_write_the_records_one_process_writes_in_the_datasets_order(one_and_two):
    one, two = one_and_two
    a, b = read_jsonl(one, Generation), read_jsonl(two, Generation)
    assert [g.id for g in a] == [f"q{i}" for i in range(11)]  # the dataset's order, not the batches'
    assert_same_generations(a, b)
    assert not shard_dir(two).exists() and not Path(str(two) + ".partial").exists()


def test_a_killed_parallel_run_resumes_per_shard(tiny_model_dir, questions, one_and_two, tmp_path):
    """Shards left by a killed 2-process run (one finished, one cut mid-line) are kept; only the rest is redone."""
    one, _ = one_and_two
    reference = read_jsonl(one, Generation)
    out = tmp_path / "g.jsonl"
    finished, cut = shard_path(out, 0, 2), shard_path(out, 1, 2).with_name("rank-1-of-2.jsonl.partial")
    finished.parent.mkdir(parents=True)
    marked = [Generation(**{**g.__dict__, "meta": {**g.meta, "kept": True}}) for g in reference[:3]]
    write_jsonl(finished, marked[:2])
    line = json.dumps(marked[2].__dict__)
    cut.write_text(line + "\n" + line[:40])  # a torn last line, as a kill mid-write leaves it
    certa(*_generate_args(str(tiny_model_dir), questions, out), processes=2)
    merged = read_jsonl(out, Generation)
    assert [g.meta.get("kept") for g in merged[:3]] == [True, True, True]  # resumed, not regenerated
    assert not any(g.meta.get("kept") for g in merged[3:])
    assert_same_generations(reference, merged, same_samples=False)


def test_two_processes_score_as_one_does(tiny_lm, questions, one_and_two, tmp_path):
    from certa.data import grade, load_dataset
    from certa.methods.runner import score_methods

    records = grade(read_jsonl(one_and_two[0], Generation), load_dataset(str(questions), split="all"))
    path = tmp_path / "records.jsonl"
    write_jsonl(path, records)
    methods = ["sequence_likelihood", "token_entropy", "consistency", "p_true"]
    reference = score_methods(methods, records, default_model=tiny_lm)
    out = tmp_path / "scores.jsonl"
    certa("score", "--in", str(path), "-m", tiny_lm.name, "--method", ",".join(methods), "-o", str(out),
          processes=2)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r.id for r in records]
    for i, row in enumerate(rows):
        assert set(row["scores"]) == set(methods)
        for method in methods:
            assert abs(row["scores"][method] - reference[method].scores[i]) <= TOL, (row["id"], method)
    assert not shard_dir(out).exists()


@pytest.fixture(scope="module")
def train_records(one_and_two, tmp_path_factory) -> Path:
    """Graded records with hidden states, enough for GrACE's soft targets (folds need both classes)."""
    gens = read_jsonl(one_and_two[0], Generation)
    records = [Record.from_generation(Generation(**{**g.__dict__, "id": f"{g.id}-{k}"}),
                                      _example(g.id), correct=float((i + k) % 3 == 0))
               for k in range(3) for i, g in enumerate(gens)]
    path = tmp_path_factory.mktemp("train") / "records.jsonl"
    write_jsonl(path, records)
    return path


def _example(example_id: str):
    from certa.records import Example

    return Example(id=example_id, question=f"question {example_id}", answers=["0"], answer_type="numeric")


#: 33 records; 0.4 epochs of batches of 4 is 4 optimiser steps, for one process and for two with batches of 2.
TRAINING = dict(epochs=0.4, save_every=2, validation_fraction=0.0, folds=2, lora_dropout=0.0)


def _train_args(model: Path, records: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "grace", "-m", str(model), "--records", str(records), "-o", str(out), "--batch-size", "2",
            "--epochs", "0.4", "--save-every", "2", "--validation-fraction", "0", "--folds", "2",
            "--lora-dropout", "0", *extra]


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single_and_ddp(tiny_model_dir, train_records, tmp_path_factory) -> tuple[Path, Path]:
    """GrACE trained by one process with batches of 4 and by two DDP processes with batches of 2 each."""
    from certa.methods.grace import Grace
    from certa.models import load_model
    from certa.records import read_jsonl as read

    root = tmp_path_factory.mktemp("ddp")
    single, ddp = root / "single", root / "ddp"
    Grace.train(load_model(str(tiny_model_dir), device="cpu"), read(train_records, Record),
                {**TRAINING, "batch_size": 4}, single, in_place=True, progress=False)
    certa(*_train_args(tiny_model_dir, train_records, ddp), processes=2)
    return single, ddp


def test_ddp_training_follows_the_single_process_loss_curve(single_and_ddp):
    single, ddp = single_and_ddp
    curve = _losses(single)
    # Steps are counted on each process's share of the batches: the same 4, not N times more.
    assert len(curve) == 4 and len(_losses(ddp)) == 4
    np.testing.assert_allclose(_losses(ddp), curve, atol=TOL, rtol=0)
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["step-2", "step-4"]


def test_a_ddp_run_killed_after_a_checkpoint_resumes_under_ddp(single_and_ddp, tiny_model_dir, train_records,
                                                                 tmp_path):
    single, finished = single_and_ddp
    ddp = tmp_path / "ddp"
    shutil.copytree(finished, ddp)
    shutil.rmtree(ddp / "checkpoints" / "step-4")  # killed between the step-2 and step-4 checkpoints
    for name in ("certa.json", "adapter_model.safetensors"):
        (ddp / name).unlink()
    certa(*_train_args(tiny_model_dir, train_records, ddp, "--resume"), processes=2)
    np.testing.assert_allclose(_losses(ddp), _losses(single), atol=TOL, rtol=0)
    from safetensors.torch import load_file

    a, b = load_file(str(single / "adapter_model.safetensors")), load_file(str(ddp / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=TOL, rtol=0)


# ---------------------------------------------------------------- in-process units


def test_shards_take_every_nth_item():
    items = list(range(7))
    assert [Processes(i, 3).shard(items) for i in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert Processes().shard(items) == items and Processes().is_main and not Processes().distributed


def test_read_finished_drops_only_a_torn_last_line(tmp_path):
    path = tmp_path / "g.jsonl"
    rows = [Generation(id=str(i), prompt="p", response="r").__dict__ for i in range(2)]
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1])[:10])
    assert [g.id for g in read_finished(path)] == ["0"]
    path.write_text("{broken\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(Exception, match=r"g.jsonl:1"):
        read_finished(path)
