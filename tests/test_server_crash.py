"""A real ``certa serve`` process, killed with SIGKILL while labels arrive, loses no acknowledged label.

(One server start per run: a cold interpreter importing torch takes most of this test's time.)

The server runs the tiny model in its own interpreter (``python -m certa.cli serve --db FILE``);
four client threads label its answers through ``POST /v1/feedback`` and note every 200; the
process is killed mid-stream and the database, reopened, must hold every acknowledged label with
its value (an acknowledgement means committed and fsynced).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from certa.serving.feedback import FeedbackStore

STARTUP = 120.0  # s: a cold interpreter importing torch on a busy machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tiny_model_dir, tmp_path):
    port, db, log = _free_port(), tmp_path / "feedback.db", (tmp_path / "stderr.log").open("w+")
    env = {**os.environ, "CERTA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "certa.cli", "serve", "--model", str(tiny_model_dir), "--model-name", "tiny",
         "--port", str(port), "--db", str(db)],
        env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP
    try:
        while True:
            assert process.poll() is None, f"certa serve exited: {log.seek(0) or log.read()}"
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "certa serve did not start"
            time.sleep(0.2)
        yield process, url, db, log
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        log.close()


def test_kill_9_while_feedback_arrives_loses_no_acknowledged_label(server):
    process, url, db, log = server
    keys = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(6):
            reply = http.post("/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": f"Count to {i}"}], "max_tokens": 2,
                "n": 8, "temperature": 0})
            assert reply.status_code == 200
            keys += [(reply.json()["id"], choice) for choice in range(8)]
    acked: list[tuple[str, int, float]] = []
    stop = threading.Event()

    def labeller(mine):
        with httpx.Client(base_url=url, timeout=10) as http:
            for cid, choice in mine:
                if stop.is_set():
                    return
                correct = (choice % 3) / 2   # 0, 0.5, 1: partial credit survives too
                try:
                    answer = http.post("/v1/feedback", json={"id": cid, "choice": choice, "correct": correct})
                except httpx.HTTPError:
                    return                  # the server is gone
                if answer.status_code == 200:
                    acked.append((cid, choice, correct))

    threads = [threading.Thread(target=labeller, args=(keys[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 16:
        assert time.monotonic() < deadline, "labels were not acknowledged"
        time.sleep(0.001)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(30)
    stop.set()
    for t in threads:
        t.join(30)
    assert process.returncode == -signal.SIGKILL
    # the one start-up line says what was served
    log.seek(0)
    lines = [line for line in log.read().splitlines() if line.startswith("certa serve:")]
    assert len(lines) == 1
    assert "model 'tiny'" in lines[0] and "confidence 'sequence_likelihood'" in lines[0]
    assert "no trained artifact" in lines[0] and "feedback in" in lines[0]
    assert 16 <= len(acked) < len(keys), "the kill must land while labels are still arriving"
    with FeedbackStore(db) as store:
        assert store.answer_count() == len(keys)
        for cid, choice, correct in acked:
            label = store.label(cid, choice)
            assert label is not None, f"acknowledged label {cid}/{choice} lost"
            assert label.correct == correct
        assert store.label_count() >= len(acked)
