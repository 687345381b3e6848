"""Two processes given the same output: the second refuses (advisory lock on the .partial file).

Real processes, started with subprocess; the holder is killed with SIGKILL to show the lock
goes with the process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from certa.errors import InputError
from certa.records import Generation, JsonlAppender, read_jsonl

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Opens the appender, writes one record, says so and waits (holding the lock) until killed or told to finish.
HOLDER = """
import sys
from certa.records import JsonlAppender
app = JsonlAppender(sys.argv[1])
app.append({"id": "held", "prompt": "p", "response": "r"})
print("holding", flush=True)
if sys.stdin.readline().strip() == "finish":
    app.close()
    print("closed", flush=True)
"""

# Tries to open the appender: prints "opened" or the one-line InputError.
CONTENDER = """
import sys
from certa.errors import InputError
from certa.records import JsonlAppender
try:
    app = JsonlAppender(sys.argv[1])
except InputError as exc:
    print("refused:", exc)
    sys.exit(2)
app.append({"id": "second", "prompt": "p", "response": "r"})
app.close()
print("opened")
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _start_holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "holding"
    return proc


def _contend(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CONTENDER, str(out)], capture_output=True, text=True,
                          env=_env(), timeout=120)


def test_second_process_refuses_and_the_lock_dies_with_a_killed_holder(tmp_path):
    out = tmp_path / "g.jsonl"
    holder = _start_holder(out)
    try:
        second = _contend(out)
        assert second.returncode == 2, second.stderr
        assert second.stdout.strip() == (f"refused: {out}: another certa process is writing this file "
                                         "(its g.jsonl.partial is locked); wait for it or choose another output")
        assert second.stderr == ""
        # the holder's work is untouched: one record, no duplicate, no line from the contender
        assert (tmp_path / "g.jsonl.partial").read_text().splitlines() == [
            json.dumps({"id": "held", "prompt": "p", "response": "r"})]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    # SIGKILL released the lock: the next writer resumes from the killed one's .partial
    third = _contend(out)
    assert third.returncode == 0 and third.stdout.strip() == "opened", third.stdout + third.stderr
    assert [g.id for g in read_jsonl(out, Generation)] == ["held", "second"]
    assert not (tmp_path / "g.jsonl.partial").exists()


def test_after_the_holder_closes_a_second_writer_resumes_from_the_finished_file(tmp_path):
    out = tmp_path / "g.jsonl"
    holder = _start_holder(out)
    holder.stdin.write("finish\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "closed"
    holder.wait(timeout=60)
    second = _contend(out)
    assert second.returncode == 0, second.stdout + second.stderr
    assert [g.id for g in read_jsonl(out, Generation)] == ["held", "second"]


def test_of_several_processes_started_together_exactly_one_writes(tmp_path):
    out = tmp_path / "g.jsonl"
    go = tmp_path / "go"
    script = (
        "import os, sys, time\n"
        "from certa.errors import InputError\n"
        "from certa.records import JsonlAppender\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.001)\n"
        "try:\n"
        "    app = JsonlAppender(sys.argv[1])\n"
        "except InputError:\n"
        "    print('refused', flush=True); sys.exit(2)\n"
        "print('won', flush=True)\n"
        "sys.stdin.readline()\n"
        "app.append({'id': str(os.getpid()), 'prompt': 'p', 'response': 'r'})\n"
        "app.close()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(out), str(go)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=_env()) for _ in range(4)]
    go.touch()
    answers = [p.stdout.readline().strip() for p in procs]   # the winner holds the lock while we read
    for p in procs:
        p.stdin.close()
        p.wait(timeout=60)
    assert sorted(answers) == ["refused", "refused", "refused", "won"]
    assert len(read_jsonl(out, Generation)) == 1


def test_lock_is_released_on_exception_and_close_in_one_process(tmp_path):
    out = tmp_path / "g.jsonl"
    first = JsonlAppender(out)
    with pytest.raises(InputError, match="another certa process is writing"):
        JsonlAppender(out)
    first.close()
    with pytest.raises(RuntimeError), JsonlAppender(out) as app:
        app.append(Generation(id="a", prompt="p", response="r"))
        raise RuntimeError("boom")
    with JsonlAppender(out) as app:       # not locked any more; resumes
        assert app.done_ids == {"a"}


def test_a_failed_start_leaves_no_empty_partial_behind(tmp_path):
    out = tmp_path / "g.jsonl"
    with pytest.raises(RuntimeError), JsonlAppender(out):
        raise RuntimeError("bad input found before any record")
    assert list(tmp_path.iterdir()) == []


def test_certa_generate_refuses_an_output_another_process_is_writing(tmp_path, tiny_model_dir):
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + 1?", "answers": [str(i + 1)],
                                             "answer_type": "numeric"}) + "\n" for i in range(3)))
    out = tmp_path / "g.jsonl"
    holder = _start_holder(out)
    command = [sys.executable, "-m", "certa.cli", "generate", "-m", str(tiny_model_dir), "-d", str(questions),
               "--split", "all", "--max-new-tokens", "2", "--no-hidden-states", "-o", str(out)]
    env = {**_env(), "CERTA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    try:
        second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert second.returncode == 2, second.stderr
    assert "another certa process is writing" in second.stderr and "Traceback" not in second.stderr
    last = second.stderr.strip().splitlines()[-1]      # earlier lines: transformers' weight-loading bar
    assert last == (f"error: {out}: another certa process is writing this file (its g.jsonl.partial is locked); "
                    "wait for it or choose another output")
    assert not out.exists()
