"""The CLI under random flag combinations (hypothesis): exit code 0 or 2, never a traceback.

Valid, invalid and missing values for each flag of ``generate``, ``grade``, ``score``,
``evaluate``, ``report``, ``methods`` and ``datasets``, in random order, sometimes with an
unknown flag or a stray argument, on the tiny model (answers of at most 3 tokens).
``certa.cli.main`` runs in this process, so an unexpected exception fails the test with its
traceback. Case counts: ``--hypothesis-show-statistics``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from certa import cli
from certa.records import Generation, Record, write_jsonl

#: Examples per test; CERTA_FUZZ_EXAMPLES=300 for a longer campaign (the default keeps the file near a minute).
CLI = settings(max_examples=int(os.environ.get("CERTA_FUZZ_EXAMPLES", 30)), deadline=None,
               suppress_health_check=[HealthCheck.too_slow])
_counter = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def _in_a_scratch_directory(tmp_path_factory):
    """Commands given no --out write to the working directory (scores.jsonl, eval/, report.html)."""
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dir) -> dict[str, str]:
    """Inputs of every kind the commands read, good and bad."""
    root = tmp_path_factory.mktemp("cli-fuzz")
    rng = np.random.default_rng(0)
    questions = root / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + {i}?", "answers": [str(2 * i)],
                                             "answer_type": "numeric"}) + "\n" for i in range(4)))
    gens, records = [], []
    for i in range(4):
        n = 3
        gen = Generation(id=f"q{i}", prompt="p", response=str(i), token_ids=[5] * n,
                         token_logprobs=list(rng.uniform(-2, 0, n)), token_entropies=list(rng.uniform(0, 2, n)),
                         hidden_state=list(rng.normal(size=8)), samples=[str(i), "7"], meta={"vocab_size": 100})
        gens.append(gen)
        records.append(Record.from_generation(gen, _example(i), correct=float(i % 2), sample_correct=[1.0, 0.0]))
    write_jsonl(root / "gens.jsonl", gens)
    write_jsonl(root / "records.jsonl", records)
    write_jsonl(root / "scores.jsonl", [{"id": f"q{i}", "correct": float(i % 2), "scores": {"m": i / 8, "n": 0.5}}
                                        for i in range(8)])
    (root / "latin1.jsonl").write_bytes('{"id": "q", "question": "caf\u00e9"}\n'.encode("latin-1"))
    (root / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + questions.read_bytes())
    (root / "garbage.jsonl").write_bytes(b"\x00\x01{not json\n[1, 2]\n")
    (root / "empty.jsonl").write_bytes(b"")
    (root / "a_directory").mkdir()
    return {"root": str(root), "model": str(tiny_model_dir), "questions": str(questions),
            "gens": str(root / "gens.jsonl"), "records": str(root / "records.jsonl"),
            "scores": str(root / "scores.jsonl"), "latin1": str(root / "latin1.jsonl"),
            "bom": str(root / "bom.jsonl"), "garbage": str(root / "garbage.jsonl"),
            "empty": str(root / "empty.jsonl"), "dir": str(root / "a_directory"),
            "missing": str(root / "missing.jsonl")}


def _example(i: int):
    from certa.records import Example

    return Example(id=f"q{i}", question=f"What is {i} + {i}?", answers=[str(2 * i)], answer_type="numeric")


def run(argv: list[str]) -> tuple[int, str]:
    """``certa ARGV`` in this process; (exit code, stdout + stderr). Other exceptions propagate."""
    old = sys.argv
    sys.argv = ["certa", *argv]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    return code, out.getvalue() + err.getvalue()


def check(argv: list[str]) -> None:
    code, output = run(argv)
    assert code in (0, 2), f"exit {code} for certa {' '.join(argv)}\n{output[-2000:]}"
    assert "Traceback" not in output, f"certa {' '.join(argv)}\n{output[-2000:]}"
    kind = ("help" if "--help" in argv or "-h" in argv else "ran" if code == 0
            else "usage error" if "Usage:" in output else "certa error")
    event(f"{argv[0] if argv else '(none)'}: {kind}")


# ── argv strategies ──────────────────────────────────────────────────────────────────────────

def pick(good: list[str], bad: list[str] = (), junk: list[str] = ("x",)) -> st.SearchStrategy[str]:
    """Mostly good values, some a user could plausibly get wrong (certa's error), a few unparsable (click's)."""
    return st.sampled_from(list(good) * 12 + list(bad) * 2 + list(junk))


def _files(f: dict[str, str], good: tuple[str, ...], bad: tuple[str, ...], names: tuple[str, ...] = ()):
    return pick([f[k] for k in good], [f[k] for k in bad] + list(names), junk=[])


def _out(f: dict[str, str], suffix: str) -> st.SearchStrategy[str]:
    fresh = st.builds(lambda: str(Path(f["root"]) / f"out{next(_counter)}{suffix}"))
    reused = st.sampled_from([f["dir"], "/proc/certa-cannot-write/x" + suffix, f["root"] + "/shared" + suffix])
    return st.one_of(fresh, fresh, fresh, reused)


@st.composite
def argv_for(draw, command: str, options: dict[str, st.SearchStrategy[str] | None], required: tuple[str, ...]):
    """``[command, *flags]``: each option present or not (required ones usually), values drawn, order shuffled."""
    parts: list[list[str]] = []
    for flag, values in options.items():
        if draw(st.integers(0, 9)) < (9 if flag in required else 5):
            parts.append([flag] if values is None else [flag, draw(values)])
    parts = draw(st.permutations(parts)) if parts else parts
    argv = [command, *(token for part in parts for token in part)]
    extra = draw(st.sampled_from([None] * 12 + ["--bogus", "stray", "--help", "-o"]))
    if extra is not None:
        argv.insert(draw(st.integers(1, len(argv))), extra)
    return argv


GOOD_JSONL = ("questions", "bom")
BAD_JSONL = ("latin1", "garbage", "empty", "missing", "dir")


def generate_options(f):
    return {
        "-o": _out(f, ".jsonl"),
        "-m": _files(f, ("model",), ("missing", "dir", "garbage")),
        "-d": _files(f, GOOD_JSONL, BAD_JSONL, names=("no_such_dataset",)),
        "--split": pick(["all"], ["test", "train", "calibration", "bogus"], junk=[]),
        "--limit": pick(["1", "2", "3"], ["0", "-1"]),
        "--samples": pick(["0", "1", "2"], ["-1"]),
        "--temperature": pick(["1.0", "0.7"], ["0", "-1", "nan", "inf"]),
        "--max-new-tokens": pick(["1", "3"], ["0", "-5"]),
        "--batch-size": pick(["1", "4"], ["0", "-1"]),
        "--hidden-states": None, "--no-hidden-states": None,
        "--seed": pick(["0", "7"], ["-3"]),
    }


def grade_options(f):
    return {"-i": _files(f, ("gens", "records"), BAD_JSONL + ("questions", "scores")),
            "-o": _out(f, ".jsonl"),
            "-d": _files(f, GOOD_JSONL, BAD_JSONL, names=("no_such_dataset",))}


METHODS = ["sequence_likelihood", "token_entropy", "verbalized", "p_true", "consistency", "linear_probe",
           "apricot", "sequence_likelihood+platt", "grace", "no_such_method", "", ",", "token_entropy,token_entropy"]


def score_options(f):
    return {"-i": _files(f, ("records", "gens"), BAD_JSONL + ("scores",)),
            "-o": _out(f, ".jsonl"),
            "--method": st.lists(st.sampled_from(METHODS), min_size=1, max_size=3).map(",".join),
            "-m": _files(f, ("model",), ("missing",)),
            "--fit": _files(f, ("records",), ("gens", "garbage", "missing")),
            "--dataset": _files(f, ("questions",), ("missing",))}


def evaluate_options(f):
    return {"-i": _files(f, ("scores",), BAD_JSONL + ("records",)),
            "-o": _out(f, ""),
            "--n-bins": pick(["2", "10"], ["1", "0", "-1"]),
            "--n-bootstrap": pick(["0", "20"], ["-1"])}


def report_options(f):
    return {"-i": _files(f, ("scores",), BAD_JSONL + ("records",)),
            "-o": _out(f, ".html"),
            "--n-bins": pick(["2", "10"], ["1", "0", "-1"])}


# Commands that run a model must always name the tiny one (or a bad path): 'default' would load SmolLM2.
MODEL_FLAG = {"generate": "-m", "score": "-m"}


@pytest.mark.parametrize("command, options, required", [
    ("generate", generate_options, ("-o", "-m", "-d")),
    ("grade", grade_options, ("-i", "-o", "-d")),
    ("score", score_options, ("-i", "-m")),
    ("evaluate", evaluate_options, ("-i",)),
    ("report", report_options, ("-i",)),
])
@CLI
@given(data=st.data())
def test_random_flag_combinations(files, command, options, required, data):
    argv = data.draw(argv_for(command, options(files), required), label="argv")
    flag = MODEL_FLAG.get(command)
    if flag and flag not in argv:
        argv = [*argv, flag, files["model"]]
    if command == "generate" and "--limit" not in argv:
        argv = [*argv, "--limit", "3"]
    if command == "evaluate" and "--n-bootstrap" not in argv:
        argv = [*argv, "--n-bootstrap", "10"]       # the default 1000 resamples would dominate the run time
    check(argv)


@CLI
@given(command=st.sampled_from(["methods", "datasets"]),
       extra=st.lists(st.sampled_from(["--help", "--bogus", "x", "-v", "--debug"]), max_size=2))
def test_listing_commands(command, extra):
    check([command, *extra])


@CLI
@given(argv=st.lists(st.sampled_from(["--verbose", "-v", "--bogus", "generate", "nonsense", "--help", "-h", ""]),
                     max_size=3))
def test_top_level(argv):
    check(argv)
