"""The shared outbound HTTP client against a REAL local server that fails on purpose (no mocked httpx)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from http_reply import send_reply  # tests/http_reply.py

from certa.errors import CertaError
from certa.http import HttpError, JsonClient, Retry

FAST = Retry(attempts=5, backoff=0.05, max_backoff=0.2, deadline=30.0)
CHAT_REPLY = {"choices": [{"message": {"role": "assistant", "content": "yes"}}]}


class Script:
    """What the server answers, request by request: (status, headers, body, delay seconds); the last repeats."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.seen: list[dict] = []

    def next(self):
        return self.steps[min(len(self.seen) - 1, len(self.steps) - 1)]


@pytest.fixture
def server():
    """Start a threaded HTTP server on a free port; ``server(script)`` returns its base URL."""
    started = []

    def start(script: Script) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                script.seen.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                    "body": json.loads(body), "at": time.monotonic()})
                send_reply(self, *script.next())

            def log_message(self, *args):
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1"

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def test_two_rate_limits_then_success(server, monkeypatch):
    script = Script((429, {"Retry-After": "0"}, {"error": {"message": "slow down"}}, 0),
                    (429, {}, {"error": {"message": "slow down"}}, 0),
                    (200, {}, CHAT_REPLY, 0))
    url = server(script)
    monkeypatch.setenv("CERTA_TEST_KEY", "sk-local")
    with JsonClient(url, api_key_env="CERTA_TEST_KEY", retry=FAST, seed=0) as client:
        assert client.chat("judge", [{"role": "user", "content": "hi"}], temperature=0) == "yes"
    assert len(script.seen) == 3
    assert {s["path"] for s in script.seen} == {"/v1/chat/completions"}
    assert {s["auth"] for s in script.seen} == {"Bearer sk-local"}
    assert script.seen[0]["body"] == {"model": "judge", "messages": [{"role": "user", "content": "hi"}],
                                      "temperature": 0}


def test_retry_after_is_honoured(server):
    script = Script((503, {"Retry-After": "1"}, {}, 0), (200, {}, {"ok": True}, 0))
    url = server(script)
    with JsonClient(url, retry=Retry(attempts=3, backoff=0.0, deadline=30)) as client:
        assert client.post_json("/anything", {"a": 1}) == {"ok": True}
    assert script.seen[1]["at"] - script.seen[0]["at"] >= 1.0     # sleep waits at least this long


def test_always_500_gives_up_within_the_deadline(server):
    script = Script((500, {}, {"error": {"message": "boom"}}, 0))
    url = server(script)
    retry = Retry(attempts=1000, backoff=0.1, max_backoff=0.3, deadline=1.5)
    start = time.monotonic()
    with JsonClient(url, retry=retry, seed=1) as client, pytest.raises(HttpError) as err:
        client.post_json("/chat/completions", {})
    message = str(err.value)
    n = len(script.seen)
    assert 2 < n < 1000 and err.value.attempts == n and err.value.status == 500
    assert message.startswith(f"server at {url}/chat/completions: HTTP 500 ('boom') after {n} attempts in ")
    assert message.endswith("s; gave up at the 1.5 s deadline") and "\n" not in message
    # no attempt starts after the deadline (0.5 s of slack: the server notes a request after it was sent)
    assert all(s["at"] - start < 1.5 + 0.5 for s in script.seen)


def test_attempts_bound_the_retries(server):
    script = Script((502, {}, b"<html>bad gateway</html>", 0))
    url = server(script)
    with JsonClient(url, retry=Retry(attempts=3, backoff=0.01, deadline=30)) as client, \
            pytest.raises(HttpError, match=r"HTTP 502 \('<html>bad gateway</html>'\) after 3 attempts .*; gave up$"):
        client.post_json("/x", {})
    assert len(script.seen) == 3


def test_a_slow_server_times_out(server):
    script = Script((200, {}, {"late": True}, 3.0))
    url = server(script)
    with JsonClient(url, timeout=0.3, retry=Retry(attempts=10, backoff=0.05, deadline=1.0), what="strong model") as client, \
            pytest.raises(HttpError) as err:
        client.post_json("/chat/completions", {})
    assert err.value.status is None
    assert str(err.value).startswith(f"strong model at {url}/chat/completions: no answer (timed out) after ")
    assert 1 <= len(script.seen) <= 4


def test_client_errors_are_not_retried(server):
    script = Script((401, {}, {"error": {"message": "Incorrect API key provided"}}, 0))
    url = server(script)
    with JsonClient(url, retry=FAST, what="LLM judge") as client, pytest.raises(HttpError) as err:
        client.post_json("/chat/completions", {})
    assert len(script.seen) == 1
    assert str(err.value).startswith(f"LLM judge at {url}/chat/completions: HTTP 401 ('Incorrect API key provided') "
                                     "after 1 attempt in ")
    assert str(err.value).endswith("; not retried")


def test_a_retry_after_past_the_deadline_gives_up_at_once(server):
    script = Script((429, {"Retry-After": "3600"}, {}, 0))
    url = server(script)
    with JsonClient(url, retry=Retry(deadline=10)) as client, \
            pytest.raises(HttpError, match=r"gave up: the server asked to wait 3600\.0 s, past the 10 s deadline$"):
        client.post_json("/x", {})
    assert len(script.seen) == 1


def test_an_unreachable_server_is_one_line():
    with socket.socket() as sock:        # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with JsonClient(f"http://127.0.0.1:{port}", retry=Retry(attempts=2, backoff=0.01)) as client, \
            pytest.raises(HttpError, match=r"no answer \(unreachable: .*\) after 2 attempts"):
        client.post_json("/x", {})


def test_a_success_that_is_not_json_or_not_a_chat_completion(server):
    url = server(Script((200, {}, b"not json", 0)))
    with JsonClient(url) as client, pytest.raises(HttpError, match="body that is not JSON: 'not json'"):
        client.post_json("/x", {})
    url = server(Script((200, {}, {"choices": []}, 0)))
    with JsonClient(url) as client, pytest.raises(CertaError, match="not a chat completion"):
        client.chat("m", [])


def test_the_llm_judge_retries_through_the_shared_client(server):
    from certa.data import LLMJudge
    from certa.records import Example

    script = Script((503, {}, {}, 0), (200, {}, CHAT_REPLY, 0))
    url = server(script)
    judge = LLMJudge(url, "judge-model", api_key="sk-judge", retry=FAST)
    ex = Example(id="q", question="Who painted the Mona Lisa?", answers=["Leonardo da Vinci"])
    assert judge("Da Vinci", ex) == 1.0
    assert len(script.seen) == 2 and script.seen[1]["auth"] == "Bearer sk-judge"
    judge.close()
