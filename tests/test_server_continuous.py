"""The server's continuous-batching scheduler (certa.serving.continuous) on the tiny model.

The same requests answered through the micro-batcher and through the decode loop give the same
answers and confidences (with and without a read-out hook over the KV cache); seeded sampling is
reproducible; a short request overtakes a long one already decoding; a full queue is a 429; a
cancelled request's rows leave the batch; ``stop`` fails what is still pending. Where the order of
events matters, the decoder's steps are released one by one (no timing in any assertion).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from test_server import TIMEOUT, client, serving

from certa.methods.answer_cache import extend, read_logits
from certa.serving.app import create_app
from certa.serving.batcher import MicroBatcher, ShuttingDownError
from certa.serving.continuous import ContinuousScheduler
from certa.serving.engine import EngineRequest
from certa.serving.settings import ServerSettings

LONG = 400  # tokens: the tiny random model repeats one token, so a greedy answer runs to the limit


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from certa.models import load_model

    return load_model(str(tiny_model_dir), device="cpu")


def _engine(lm, hooked: bool = False):
    from certa.serving.engine import ConfidenceEngine

    engine = ConfidenceEngine(lm, "sequence_likelihood", model_name="tiny")
    if hooked:  # a read-out over the answer's KV cache, served as the confidence (as GrACE's is)
        engine._hooks = [ProbeHook()]
        engine.method = lambda records: [r.confidence[ProbeHook.name] for r in records]
    return engine


class ProbeHook:
    """Probability of token 7 one step after the answer, read over the rows' kept KV cache."""

    name = "probe"

    def on_finished(self, lm, batch):
        suffixes = [[5]] * len(batch.rows)
        with torch.no_grad():
            logits = read_logits(extend(lm.model, batch.cache, suffixes), suffixes)
        return logits.float().softmax(-1)[:, 7].tolist()


QUESTIONS = ["What is 3 + 4?", "Who wrote Hamlet?", "Name a colour.", "abc", "Is it True or False? Answer briefly.",
             "What is the capital of France?"]


def _ask_all(url: str) -> list:
    """Greedy chat and text completions of varied lengths, n and stop strings, sent concurrently."""
    api = client(url)
    jobs = [dict(kind="chat", messages=[{"role": "user", "content": q}], max_tokens=3 + 2 * i, n=1 + i % 2, temperature=0,
                 logprobs=True) for i, q in enumerate(QUESTIONS)]
    jobs += [dict(kind="text", prompt=f"Question: {q} Answer:", max_tokens=9, stop=["e"], logprobs=0)
             for q in QUESTIONS[:3]]

    def ask(job):
        job = dict(job)
        if job.pop("kind") == "chat":
            reply = api.chat.completions.create(model="tiny", **job)
            return [(c.message.content, c.finish_reason, c.confidence, [t.logprob for t in c.logprobs.content])
                    for c in reply.choices]
        reply = api.completions.create(model="tiny", **job)
        return [(c.text, c.finish_reason, c.confidence, c.logprobs.token_logprobs) for c in reply.choices]

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(ask, jobs, timeout=TIMEOUT))


@pytest.mark.parametrize("hooked", [False, True], ids=["likelihood", "cache-read-out"])
def test_continuous_answers_equal_the_micro_batched_ones(varied_lm, hooked):
    engine = _engine(varied_lm, hooked)
    with serving(create_app(engine, scheduler="micro", max_batch=8, batch_wait_ms=50)) as url:
        micro = _ask_all(url)
    with serving(create_app(engine, max_batch=4)) as url:
        continuous = _ask_all(url)
    assert len(micro) == len(continuous) == len(QUESTIONS) + 3
    for mine, theirs in zip(continuous, micro, strict=True):
        assert len(mine) == len(theirs)
        for (text, finish, conf, logprobs), (text2, finish2, conf2, logprobs2) in zip(mine, theirs, strict=True):
            assert (text, finish) == (text2, finish2)
            assert conf == pytest.approx(conf2, abs=1e-5)
            assert logprobs == pytest.approx(logprobs2, abs=1e-5)
    confidences = {c for reply in continuous for _, _, c, _ in reply}
    assert len(confidences) > 3 and all(0 <= c <= 1 for c in confidences)
    assert any(finish == "stop" for reply in continuous for _, finish, _, _ in reply)   # a stop string cut one


@pytest.mark.parametrize("scheduler", ["micro", "continuous"])
def test_an_answer_cut_by_a_client_stop_string_is_scored_as_cut(varied_lm, scheduler):
    """The read-out taken while decoding describes the uncut answer: the method must read the cut one."""
    engine = _engine(varied_lm, hooked=True)
    engine.method = lambda records: [r.confidence.get(ProbeHook.name, len(r.response) / 100) for r in records]
    prompts = [f"Question: {q} Answer:" for q in QUESTIONS]
    with serving(create_app(engine, scheduler=scheduler, max_batch=4)) as url:
        api = client(url)
        full = [api.completions.create(model="tiny", prompt=p, max_tokens=9).choices[0] for p in prompts]
        # every other prompt is cut at its answer's third character; the others' stop never shows
        stops = [f.text.strip()[2] if k % 2 == 0 else "\u2603" for k, f in enumerate(full)]
        cut = [api.completions.create(model="tiny", prompt=p, max_tokens=9, stop=[stop]).choices[0]
               for p, stop in zip(prompts, stops, strict=True)]
    was_cut = [c.text != f.text for c, f in zip(cut, full, strict=True)]
    assert was_cut == [k % 2 == 0 for k in range(len(prompts))]
    for c, f, shorter, stop in zip(cut, full, was_cut, stops, strict=True):
        if shorter:
            assert c.finish_reason == "stop" and stop not in c.text and f.text.startswith(c.text)
            assert c.confidence == pytest.approx(len(c.text.strip()) / 100)        # read on the cut answer
        else:
            assert c.confidence == pytest.approx(f.confidence, abs=1e-5)           # the decode-time read-out
            assert f.confidence != pytest.approx(len(f.text.strip()) / 100)


def test_seeded_sampling_is_reproducible_and_matches_the_micro_batcher(lm):
    engine = _engine(lm)
    request = dict(model="tiny", messages=[{"role": "user", "content": "Name a colour."}], n=3, temperature=0.9,
                   top_p=0.95, max_tokens=6)
    answers = lambda r: [(c.message.content, c.confidence) for c in r.choices]  # noqa: E731
    with serving(create_app(engine, scheduler="micro")) as url:
        micro = answers(client(url).chat.completions.create(seed=1234, **request))
    with serving(create_app(engine, max_batch=8)) as url:
        api = client(url)
        alone = answers(api.chat.completions.create(seed=1234, **request))
        with ThreadPoolExecutor(5) as pool:     # the same seeded request again, beside unseeded neighbours
            busy = [pool.submit(api.chat.completions.create, seed=1234 if i == 0 else None, **request)
                    for i in range(5)]
            again = answers(busy[0].result(TIMEOUT))
            neighbours = [answers(f.result(TIMEOUT)) for f in busy[1:]]
        other = answers(api.chat.completions.create(seed=99, **request))
    # The same tokens; the confidences to float noise (the rows shared a padded batch with others).
    for answers_ in (again, micro):
        assert [t for t, _ in answers_] == [t for t, _ in alone]
        assert [c for _, c in answers_] == pytest.approx([c for _, c in alone], abs=1e-5)
    assert other != alone
    assert len({tuple(n) for n in neighbours}) > 1       # unseeded requests are not fixed


# ---- the scheduler itself, steps released one by one ------------------------------------------------


class Gate:
    """Holds the decoder before each step until the test releases it."""

    def __init__(self, decoder):
        self.steps = threading.Semaphore(0)
        self.taken = 0
        real = decoder.step

        def step():
            assert self.steps.acquire(timeout=TIMEOUT), "step never released"
            self.taken += 1
            return real()

        decoder.step = step

    def release(self, steps: int = 10_000) -> None:
        for _ in range(steps):
            self.steps.release()


async def _until(condition) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def _request(lm, text: str, max_new_tokens: int) -> EngineRequest:
    return EngineRequest(prompt=lm.chat_prompt(text), max_new_tokens=max_new_tokens, question=text)


def test_a_short_request_overtakes_a_long_one_already_decoding(lm):
    engine = _engine(lm)
    scheduler = ContinuousScheduler(engine, max_rows=4)
    gate = Gate(scheduler.decoder)

    async def scenario():
        scheduler.start()
        finished = []
        long = asyncio.create_task(scheduler.submit(_request(lm, "Tell me a long story.", LONG)))
        long.add_done_callback(lambda _: finished.append("long"))
        gate.release(2)
        await _until(lambda: scheduler.decoder.running == 1)                 # the long answer is decoding
        short = asyncio.create_task(scheduler.submit(_request(lm, "Hi", 2)))
        short.add_done_callback(lambda _: finished.append("short"))
        await _until(lambda: scheduler.queued + scheduler.running == 2)      # submitted
        gate.release()
        results = await asyncio.gather(long, short)
        await scheduler.stop()
        return finished, results

    order, (long, short) = asyncio.run(scenario())
    assert order == ["short", "long"]
    assert long.choices[0].finish_reason == "length" and long.completion_tokens > 2
    assert short.completion_tokens <= 2
    assert scheduler.stats.max_batch_seen == 2                                  # both rows in one step


def _failing_engine(lm, failures: dict):
    """An engine whose method raises ``failures[word]`` for any batch with a question containing ``word``."""
    engine = _engine(lm)
    score = engine.method

    def method(records):
        for word, exc in failures.items():
            if any(word in r.question for r in records):
                raise exc
        return score(records)

    engine.method = method
    return engine


def test_a_request_that_fails_to_score_fails_alone_not_the_ones_finishing_beside_it(lm):
    from certa.errors import CertaError

    engine = _failing_engine(lm, {"poison": CertaError("method returned a NaN confidence")})
    scheduler = ContinuousScheduler(engine, max_rows=4)
    gate = Gate(scheduler.decoder)

    async def scenario():
        scheduler.start()
        tasks = [asyncio.create_task(scheduler.submit(_request(lm, text, 3))) for text in ("Hi", "poison", "Yo")]
        await _until(lambda: scheduler.queued + scheduler.running == 3)
        gate.release()                                   # all three prefill together and end at the same step
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await scheduler.stop()
        return results

    hi, poisoned, yo = asyncio.run(scenario())
    assert isinstance(poisoned, CertaError)
    assert [r.choices[0].finish_reason for r in (hi, yo)] == ["length", "length"]
    assert all(0 <= r.choices[0].confidence <= 1 for r in (hi, yo))


def test_a_server_side_failure_is_a_500_and_a_bad_request_a_400(lm):
    from certa.errors import CertaError, InputError

    engine = _failing_engine(lm, {"nan": CertaError("method 'x' returned a NaN or infinite confidence"),
                                  "bad": InputError("the question is refused")})
    with serving(create_app(engine, max_batch=4)) as url:
        for text, status, kind in (("nan", 500, "server_error"), ("bad", 400, "invalid_request_error")):
            reply = httpx.post(f"{url}/v1/chat/completions", timeout=TIMEOUT, json={
                "model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 2})
            assert reply.status_code == status and reply.json()["error"]["type"] == kind


def test_a_row_the_decoder_refuses_fails_its_request_and_a_dead_loop_turns_health_503(lm):
    from certa.errors import InputError

    app = create_app(_engine(lm), max_batch=2)
    ask = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with serving(app) as url:
        scheduler = app.state.scheduler
        extend = scheduler.decoder.extend
        refusals = iter([InputError("a row the decoder cannot take")])

        def refuses_once(requests):
            for exc in refusals:
                raise exc
            return extend(requests)

        scheduler.decoder.extend = refuses_once
        assert httpx.post(f"{url}/v1/chat/completions", json=ask, timeout=TIMEOUT).status_code == 400
        assert httpx.post(f"{url}/v1/chat/completions", json=ask, timeout=TIMEOUT).status_code == 200
        assert httpx.get(f"{url}/health", timeout=TIMEOUT).json()["status"] == "ok"

        def broken():
            raise RuntimeError("a bug in the loop itself")

        scheduler._take_admissible = broken
        assert httpx.post(f"{url}/v1/chat/completions", json=ask, timeout=TIMEOUT).status_code == 500
        health = httpx.get(f"{url}/health", timeout=TIMEOUT)
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert httpx.post(f"{url}/v1/chat/completions", json=ask, timeout=TIMEOUT).status_code == 503


def test_the_micro_batcher_makes_the_short_request_wait(lm):
    """The contrast: a micro-batch runs to its end, so the short request waits for the long one."""
    engine = _engine(lm)
    entered, go = threading.Event(), threading.Event()

    def run(requests):
        entered.set()
        assert go.wait(TIMEOUT)
        return engine.complete(requests)

    async def scenario():
        micro = MicroBatcher(run, max_batch=4, batch_wait_ms=0)
        micro.start()
        finished = []
        long = asyncio.create_task(micro.submit(_request(lm, "Tell me a long story.", 40)))
        long.add_done_callback(lambda _: finished.append("long"))
        await _until(entered.is_set)
        short = asyncio.create_task(micro.submit(_request(lm, "Hi", 2)))
        short.add_done_callback(lambda _: finished.append("short"))
        await asyncio.sleep(0)
        go.set()
        await asyncio.gather(long, short)
        await micro.stop()
        return finished

    assert asyncio.run(scenario()) == ["long", "short"]


def test_cancelled_request_leaves_the_batch(lm):
    scheduler = ContinuousScheduler(_engine(lm), max_rows=2)
    gate = Gate(scheduler.decoder)

    async def scenario():
        scheduler.start()
        long = asyncio.create_task(scheduler.submit(_request(lm, "Tell me a long story.", LONG)))
        gate.release(3)
        await _until(lambda: gate.taken == 3 and scheduler.decoder.running == 1)
        long.cancel()                                    # the caller went away (a client that hung up)
        await _until(lambda: all(job.cancelled for job in scheduler._jobs.values()))
        gate.release(1)                                  # the next step drops its row
        await _until(lambda: scheduler.running == 0 and scheduler.decoder.idle)
        taken = gate.taken
        gate.release()
        after = await scheduler.submit(_request(lm, "Hi", 2))   # the loop goes on
        await scheduler.stop()
        return long, taken, after

    long, taken, after = asyncio.run(scenario())
    assert long.cancelled()
    assert taken == 4 < LONG            # the row left at the step after the cancel, not after LONG steps
    assert after.choices[0].finish_reason == "length"


def test_a_client_that_hangs_up_frees_its_rows(lm):
    app = create_app(_engine(lm), max_batch=2)
    with serving(app) as url:
        scheduler = app.state.scheduler
        gate = Gate(scheduler.decoder)
        with pytest.raises(httpx.ReadTimeout):      # the client gives up and closes the connection
            with httpx.Client(timeout=httpx.Timeout(TIMEOUT, read=1.0)) as http:
                gate.release(2)
                http.post(f"{url}/v1/chat/completions", json={
                    "model": "tiny", "messages": [{"role": "user", "content": "Tell me a long story."}],
                    "max_tokens": LONG})
        _wait(lambda: scheduler._jobs and all(job.cancelled for job in scheduler._jobs.values()))  # noticed
        gate.release()
        _wait(lambda: scheduler.running == 0 and scheduler.decoder.idle)
        assert gate.taken < LONG / 2                 # its row left the batch, not after LONG steps
        reply = client(url).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                                    max_tokens=2)
    assert reply.choices[0].finish_reason == "length"


def test_stop_fails_pending_requests(lm):
    scheduler = ContinuousScheduler(_engine(lm), max_rows=1)
    gate = Gate(scheduler.decoder)

    async def scenario():
        scheduler.start()
        running = asyncio.create_task(scheduler.submit(_request(lm, "Tell me a long story.", LONG)))
        gate.release(1)
        await _until(lambda: scheduler.running == 1)
        waiting = asyncio.create_task(scheduler.submit(_request(lm, "Hi", 2)))
        await _until(lambda: scheduler.queued == 1)
        gate.release()
        await scheduler.stop(timeout=0)
        outcomes = await asyncio.gather(running, waiting, return_exceptions=True)
        with pytest.raises(ShuttingDownError):
            await scheduler.submit(_request(lm, "Hi", 2))
        return outcomes

    outcomes = asyncio.run(scenario())
    assert [type(o) for o in outcomes] == [ShuttingDownError, ShuttingDownError]


def test_full_queue_is_a_429(lm):
    engine = _engine(lm)
    app = create_app(engine, max_batch=1, max_queue=1)
    body = lambda tokens: {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a story."}],  # noqa: E731
                           "max_tokens": tokens}
    with serving(app) as url:
        scheduler = app.state.scheduler
        assert isinstance(scheduler, ContinuousScheduler)
        gate = Gate(scheduler.decoder)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body(50), timeout=TIMEOUT)
            gate.release(1)
            _wait(lambda: scheduler.running == 1)
            second = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body(3), timeout=TIMEOUT)
            _wait(lambda: scheduler.queued == 1)
            third = httpx.post(f"{url}/v1/chat/completions", json=body(3), timeout=TIMEOUT)
            gate.release()
            replies = [first.result(TIMEOUT), second.result(TIMEOUT)]
    assert third.status_code == 429
    assert (third.json()["error"]["type"], third.json()["error"]["code"]) == ("rate_limit_error", "queue_full")
    assert [r.status_code for r in replies] == [200, 200]
    assert [r.json()["usage"]["completion_tokens"] for r in replies] == [50, 3]


def test_certa_serve_scheduler_option(monkeypatch, capsys):
    import sys

    import certa.cli.serve as serve_cli
    from certa import cli

    seen = []
    monkeypatch.setattr(serve_cli, "run_server", lambda *args, settings, **kwargs: seen.append(settings))
    for argv in (["serve"], ["serve", "--scheduler", "micro", "--max-batch", "4"]):
        monkeypatch.setattr(sys, "argv", ["certa", *argv])
        cli.main()
    assert [(s.scheduler, s.max_batch) for s in seen] == [("continuous", 16), ("micro", 4)]
    monkeypatch.setattr(sys, "argv", ["certa", "serve", "--scheduler", "fifo"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2 and "--scheduler must be 'continuous' or 'micro'" in capsys.readouterr().err
    with pytest.raises(ValueError):
        ServerSettings(scheduler="fifo")


def _wait(condition) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)
