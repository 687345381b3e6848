"""The OpenAI-compatible server, exercised through the official ``openai`` client on loopback.

Most tests use a scripted engine whose answers and confidences are known in
advance, so the HTTP layer is checked value by value; the end-to-end tests
put the tiny random-weight model behind the real ``ConfidenceEngine``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import uvicorn

from certa.serving.app import create_app
from certa.serving.batcher import MicroBatcher, QueueFullError, ShuttingDownError
from certa.serving.engine import ChoiceResult, EngineRequest, EngineResult, cut_at_stop, token_pieces

TIMEOUT = 20.0  # seconds; every wait in this file is bounded by it


class ScriptedEngine:
    """Answers ``"<last word of the prompt> ok"`` with confidence 1 / (number of prompt words)."""

    model_name = "scripted"
    method_name = "word_count"

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None):
        self.delay, self.gate = delay, gate
        self.batch_sizes: list[int] = []

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        return " ".join(text for _, text in messages)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def complete(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        self.batch_sizes.append(len(requests))
        if self.gate is not None:
            assert self.gate.wait(TIMEOUT)
        time.sleep(self.delay)
        return [self._answer(r) for r in requests]

    def _answer(self, request: EngineRequest) -> EngineResult:
        words = request.prompt.split()
        tokens = [words[-1], " ok"][: request.max_new_tokens]
        finish = "stop" if len(tokens) == 2 else "length"
        choice = ChoiceResult("".join(tokens), finish, 1 / len(words), tokens, [-0.5, -0.25][: len(tokens)])
        return EngineResult([choice] * request.n, prompt_tokens=len(words))


class ServerThread:
    """uvicorn serving ``app`` in a thread on a free loopback port (what ``certa serve`` runs, minus signals)."""

    def __init__(self, app):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        _wait_for(lambda: self.server.started or not self.thread.is_alive())
        assert self.server.started, "server did not start"
        return self

    def stop(self) -> None:
        """What uvicorn does on SIGTERM: stop accepting, finish open requests, run the app's shutdown."""
        self.server.should_exit = True
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "server did not shut down"

    def __exit__(self, *exc_info) -> None:
        self.stop()
        self.sock.close()


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    with ServerThread(app) as server:
        yield server.url


def client(url: str, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=TIMEOUT)


@pytest.fixture
def scripted():
    engine = ScriptedEngine()
    with serving(create_app(engine, max_n=3, max_new_tokens_limit=50, max_prompt_tokens=6)) as url:
        yield engine, url


# ---- the HTTP layer, value by value ------------------------------------------------------------------


def test_chat_completion_carries_confidence_and_usage(scripted):
    _, url = scripted
    reply = client(url).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "what is four"}], max_tokens=5)
    choice = reply.choices[0]
    assert choice.message.content == "four ok"
    assert choice.finish_reason == "stop"
    assert choice.confidence == pytest.approx(1 / 3)
    assert choice.confidence_method == "word_count"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (3, 2, 5)


def test_n_choices_and_logprobs(scripted):
    _, url = scripted
    reply = client(url).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "hi there"}], n=2, logprobs=True)
    assert [c.index for c in reply.choices] == [0, 1]
    content = reply.choices[1].logprobs.content
    assert [(t.token, t.logprob) for t in content] == [("there", -0.5), (" ok", -0.25)]
    assert content[1].bytes == list(b" ok")


def test_stream_ends_with_the_confidence(scripted):
    _, url = scripted
    stream = client(url).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "a b c d"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "d ok"
    last = [c for c in chunks if c.choices][-1].choices[0]
    assert last.finish_reason == "stop"
    assert last.confidence == pytest.approx(0.25)
    assert all(getattr(c.choices[0], "confidence", None) is None for c in chunks[:-2])
    assert chunks[-1].usage.total_tokens == 4 + 2


def test_legacy_completion_plain_and_streamed(scripted):
    _, url = scripted
    api = client(url)
    reply = api.completions.create(model="scripted", prompt="one two", max_tokens=1, logprobs=0)
    assert reply.choices[0].text == "two"
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].confidence == pytest.approx(0.5)
    assert reply.choices[0].logprobs.token_logprobs == [-0.5]
    chunks = list(api.completions.create(model="scripted", prompt="x y z", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "z ok"
    assert chunks[-1].choices[0].confidence == pytest.approx(1 / 3) and chunks[-1].usage is None
    chunks = list(api.completions.create(model="scripted", prompt="x y z", stream=True,
                                         stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 3 + 2
    assert chunks[-2].choices[0].confidence == pytest.approx(1 / 3)


def test_models_and_health(scripted):
    _, url = scripted
    assert [m.id for m in client(url).models.list()] == ["scripted"]
    health = httpx.get(f"{url}/health", timeout=TIMEOUT).json()
    assert health["status"] == "ok" and health["confidence_method"] == "word_count"


@pytest.mark.parametrize(("kwargs", "error", "param"), [
    ({"n": 4}, openai.BadRequestError, "n"),
    ({"max_tokens": 51}, openai.BadRequestError, "max_tokens"),
    ({"temperature": 3.0}, openai.BadRequestError, "temperature"),
    ({"model": "gpt-9"}, openai.NotFoundError, None),
    ({"messages": [{"role": "user", "content": "one two three four five six seven"}]},
     openai.BadRequestError, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, openai.BadRequestError, "messages.0.role"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(scripted, kwargs, error, param):
    engine, url = scripted
    api = client(url)
    request = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], **kwargs}
    with pytest.raises(error) as caught:
        api.chat.completions.create(**request)
    assert caught.value.body["param"] == param
    assert caught.value.body["message"]
    assert engine.batch_sizes == []  # rejected before it reached the model
    assert api.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hi"}])


def test_malformed_json_and_wrong_types(scripted):
    _, url = scripted
    bad = httpx.post(f"{url}/v1/chat/completions", content=b'{"model": "scripted", "messages": [',
                     headers={"content-type": "application/json"}, timeout=TIMEOUT)
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_json"
    wrong = httpx.post(f"{url}/v1/chat/completions", timeout=TIMEOUT,
                       json={"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "n": "many"})
    assert wrong.status_code == 400
    assert set(wrong.json()["error"]) == {"message", "type", "param", "code"}
    assert wrong.json()["error"]["param"] == "n"
    missing = httpx.post(f"{url}/v1/nowhere", json={}, timeout=TIMEOUT)
    assert missing.status_code == 404 and "error" in missing.json()


def test_a_body_over_the_cap_is_refused_before_it_is_read_whole():
    # A multi-megabyte prompt was read, parsed and tokenized on the event loop before the length check.
    engine = ScriptedEngine()
    with serving(create_app(engine, max_body_bytes=2048)) as url:
        big = {"model": "scripted", "messages": [{"role": "user", "content": "word " * 1000}]}
        declared = httpx.post(f"{url}/v1/chat/completions", json=big, timeout=TIMEOUT)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "request_too_large" and "2048 bytes" in declared.json()["error"]["message"]
        chunks = iter([b'{"model": "scripted", "messages": [{"role": "user", "content": "', b"x" * 1500, b"y" * 1500])
        chunked = httpx.post(f"{url}/v1/completions", content=chunks, timeout=TIMEOUT,
                             headers={"content-type": "application/json"})
        assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"
        # a declared 10 MB body is answered before any of it is sent (reading it would wait until the timeout)
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 10000000\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 413")
        assert engine.batch_sizes == []
        small = client(url).chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hi"}])
        assert small.choices[0].message.content == "hi ok"


def test_prompts_are_rendered_and_counted_off_the_event_loop():
    threads: list[str] = []

    class Recording(ScriptedEngine):
        def render_chat(self, messages):
            threads.append(threading.current_thread().name)
            return super().render_chat(messages)

        def count_tokens(self, text):
            threads.append(threading.current_thread().name)
            return super().count_tokens(text)

    with serving(create_app(Recording())) as url:
        client(url).chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hi"}])
        client(url).completions.create(model="scripted", prompt="one two")
    assert len(threads) == 3 and all(name.startswith("certa-prompt") for name in threads)


@pytest.mark.parametrize(("route", "field", "value"), [
    ("chat", "temperature", False), ("chat", "top_p", True), ("chat", "n", True), ("chat", "max_tokens", "5"),
    ("chat", "top_logprobs", True), ("chat", "logprobs", "yes"), ("chat", "stream", "false"),
    ("chat", "stream_options", {"include_usage": "false"}), ("text", "stream_options", {"include_usage": 1}),
    ("text", "logprobs", True), ("text", "echo", 1),
    ("text", "max_tokens", "5"), ("text", "include_abstained_answer", "true"),
])
def test_json_values_of_the_wrong_type_are_not_coerced(scripted, route, field, value):
    _, url = scripted
    path, body = (("chat/completions", {"messages": [{"role": "user", "content": "hi"}]}) if route == "chat"
                  else ("completions", {"prompt": "hi"}))
    reply = httpx.post(f"{url}/v1/{path}", json={"model": "scripted", **body, field: value}, timeout=TIMEOUT)
    assert reply.status_code == 400 and reply.json()["error"]["param"].split(".")[0] == field
    whole = httpx.post(f"{url}/v1/chat/completions", timeout=TIMEOUT,  # a whole number is a valid temperature
                       json={"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "temperature": 1})
    assert whole.status_code == 200


def test_api_key_is_required_when_set():
    with serving(create_app(ScriptedEngine(), api_key="s3cret")) as url:
        with pytest.raises(openai.AuthenticationError) as caught:
            client(url, api_key="wrong").models.list()
        assert caught.value.body["code"] == "invalid_api_key"
        missing = httpx.get(f"{url}/v1/models", timeout=TIMEOUT)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        assert [m.id for m in client(url, api_key="s3cret").models.list()] == ["scripted"]
        assert httpx.get(f"{url}/health", timeout=TIMEOUT).status_code == 200


def test_shutdown_finishes_requests_already_accepted():
    engine = ScriptedEngine(delay=0.3)
    with ServerThread(create_app(engine, max_batch=2, batch_wait_ms=0)) as server:
        api = client(server.url)
        with ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(api.chat.completions.create, model="scripted",
                                   messages=[{"role": "user", "content": f"word{i}"}]) for i in range(3)]
            _wait_for(lambda: engine.batch_sizes)  # the first batch is running, the rest is queued
            server.stop()
            answers = sorted(p.result(TIMEOUT).choices[0].message.content for p in pending)
    assert answers == ["word0 ok", "word1 ok", "word2 ok"]
    assert sum(engine.batch_sizes) == 3


def test_full_queue_answers_429_instead_of_growing():
    gate = threading.Event()
    engine = ScriptedEngine(gate=gate)
    with serving(create_app(engine, max_queue=1, max_batch=1, batch_wait_ms=0)) as url:
        api = client(url)
        ask = lambda: api.chat.completions.create(  # noqa: E731
            model="scripted", messages=[{"role": "user", "content": "hi"}])
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(ask)  # taken by the worker, blocked on the gate
            _wait_for(lambda: engine.batch_sizes == [1])
            queued = pool.submit(ask)  # fills the one queue slot
            _wait_for(lambda: httpx.get(f"{url}/health", timeout=TIMEOUT).json()["queued"] == 1)
            with pytest.raises(openai.RateLimitError):
                ask()
            gate.set()
            assert running.result(TIMEOUT).choices[0].message.content == "hi ok"
            assert queued.result(TIMEOUT).choices[0].message.content == "hi ok"


def _wait_for(condition) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# ---- pieces --------------------------------------------------------------------------------------------


def test_cut_at_stop_keeps_pieces_aligned():
    assert cut_at_stop(["Par", "is", ".", " Next"], ["."]) == (["Par", "is"], True)
    assert cut_at_stop(["Par", "is.", " Next"], [" N", "."]) == (["Par", "is"], True)
    assert cut_at_stop(["ab", "cd"], ["x"]) == (["ab", "cd"], False)
    assert cut_at_stop(["ab", "cd"], ["ab"]) == ([], True)


def test_batcher_drains_queued_requests_on_stop_and_then_refuses():
    async def scenario():
        sizes: list[int] = []

        def run(batch):
            sizes.append(len(batch))
            time.sleep(0.02)
            return [x * 10 for x in batch]

        batcher = MicroBatcher(run, max_queue=8, max_batch=3, batch_wait_ms=50)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(i)) for i in range(7)]
        await asyncio.sleep(0)  # let every submit reach the queue
        await asyncio.wait_for(batcher.stop(), TIMEOUT)
        with pytest.raises(ShuttingDownError):
            await batcher.submit(99)
        return sizes, [p.result() for p in pending]

    sizes, results = asyncio.run(scenario())
    assert results == [0, 10, 20, 30, 40, 50, 60]
    assert sizes == [3, 3, 1]


def test_batcher_refuses_beyond_max_queue_and_reports_failures():
    gate = threading.Event()

    async def scenario():
        def run(batch):
            assert gate.wait(TIMEOUT)
            raise ValueError("model broke")

        batcher = MicroBatcher(run, max_queue=2, max_batch=1, batch_wait_ms=0)
        with pytest.raises(ShuttingDownError):
            await batcher.submit(0)  # not started yet
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(1))
        while batcher.stats.batches == 0:  # bounded by the wait_for around scenario()
            await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await batcher.submit(4)
        gate.set()
        outcomes = await asyncio.gather(running, *queued, return_exceptions=True)
        await batcher.stop()
        return outcomes

    outcomes = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
    assert [str(o) for o in outcomes] == ["model broke"] * 3


# ---- end to end with the tiny model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    pytest.importorskip("certa.generation")
    from certa.models import load_model
    from certa.serving.engine import ConfidenceEngine

    lm = load_model(str(tiny_model_dir), device="cpu")
    return ConfidenceEngine(lm, "sequence_likelihood", model_name="tiny")


class CountingEngine:
    """Wraps an engine and records the size of every batch it is asked to run."""

    def __init__(self, inner):
        self.inner, self.batch_sizes = inner, []
        self.model_name, self.method_name = inner.model_name, inner.method_name
        self.render_chat, self.count_tokens = inner.render_chat, inner.count_tokens

    def complete(self, requests):
        self.batch_sizes.append(len(requests))
        return self.inner.complete(requests)


def test_tiny_model_answers_match_offline_generation(tiny_engine):
    from certa.generation import RAW_PROMPT_KEY, generate
    from certa.records import Example

    question = "What is 3 + 4?"
    with serving(create_app(tiny_engine)) as url:
        api = client(url)
        reply = api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}],
                                            max_tokens=6, logprobs=True)
        chunks = list(api.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": question}], max_tokens=6, stream=True))
    prompt = tiny_engine.render_chat([("user", question)])
    offline = generate(tiny_engine.lm, [Example(id="q", question=question, answers=[""],
                                                meta={RAW_PROMPT_KEY: prompt})],
                       max_new_tokens=6, progress=False)[0]
    choice = reply.choices[0]
    assert choice.message.content.strip() == offline.response
    # sequence likelihood: exp(mean log p) over every generated token, end-of-turn included
    assert choice.confidence_method == "sequence_likelihood"
    assert choice.confidence == pytest.approx(math.exp(sum(offline.token_logprobs) / len(offline.token_logprobs)),
                                              rel=1e-4)
    streamed = [t.logprob for t in choice.logprobs.content]
    assert streamed == pytest.approx(offline.token_logprobs[: len(streamed)], rel=1e-4)
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    assert reply.usage.completion_tokens == len(streamed) <= 6
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
    assert chunks[-1].choices[0].confidence == pytest.approx(choice.confidence, rel=1e-4)


def test_tiny_model_stop_sequence_cuts_answer_and_its_score(tiny_engine):
    prompt = "Question: who wrote Hamlet? Answer:"
    with serving(create_app(tiny_engine)) as url:
        api = client(url)
        full = api.completions.create(model="tiny", prompt=prompt, max_tokens=8, logprobs=0).choices[0]
        stop = "".join(full.logprobs.tokens[2:4])[:3]  # starts at the third token's first character
        cut = api.completions.create(model="tiny", prompt=prompt, max_tokens=8, logprobs=0, stop=[stop]).choices[0]
    end = full.text.index(stop)
    kept = sum(offset < end for offset in full.logprobs.text_offset)
    assert cut.text == full.text[:end]
    assert cut.finish_reason == "stop"
    assert cut.logprobs.token_logprobs == pytest.approx(full.logprobs.token_logprobs[:kept], rel=1e-4)
    # the confidence scores the answer as cut (at least the token the stop string starts in)
    scored = full.logprobs.token_logprobs[: max(kept, 1)]
    assert cut.confidence == pytest.approx(math.exp(sum(scored) / len(scored)), rel=1e-4)


def test_token_pieces_join_to_the_text_and_keep_multibyte_characters_whole(tiny_engine):
    tokenizer = tiny_engine.lm.tokenizer
    ids = tokenizer("Paris \u20ac 42 caf\u00e9", add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tokenizer, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == tokenizer.decode(ids)
    assert any(p.strip() == "\u20ac" for p in pieces)  # three byte tokens, one whole character


def test_tiny_model_batches_concurrent_requests(tiny_engine):
    engine = CountingEngine(tiny_engine)
    with serving(create_app(engine, max_batch=8, batch_wait_ms=200)) as url:
        api = client(url)
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: api.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"Count to {i}"}], max_tokens=4),
                range(8), timeout=TIMEOUT))
    assert all(0.0 <= r.choices[0].confidence <= 1.0 for r in replies)
    assert sum(engine.batch_sizes) == 8 and max(engine.batch_sizes) > 1
