"""Sampling in the server does what the OpenAI API says: temperature, top_p, seed and n are honoured.

Checked at three levels: the rules for absent fields (``sampling_of``), what the engine is asked
for (a scripted engine records its requests), and real answers of the tiny model through the
official ``openai`` client: n samples drawn as one batch with a confidence each, seeded answers
reproducible even inside a busy batch, log-probs of sampled tokens from the raw model.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from test_server import TIMEOUT, ScriptedEngine, client, serving

import certa.serving.engine as engine_module
from certa.generation import RAW_PROMPT_KEY, generate
from certa.records import Example
from certa.serving.app import create_app
from certa.serving.schemas import OPENAI_DEFAULT_TEMPERATURE, Sampling, sampling_of

# ---- the rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "expected"), [
    ((None, None, None, 1), Sampling(temperature=0.0)),                      # absent: greedy
    ((None, None, 5, 1), Sampling(temperature=0.0)),                         # greedy needs no seed
    ((None, None, None, 3), Sampling(temperature=OPENAI_DEFAULT_TEMPERATURE)),  # n > 1: OpenAI's default
    ((0.0, None, None, 3), Sampling(temperature=0.0)),                       # 0: greedy whatever n
    ((0.7, 0.9, 11, 1), Sampling(temperature=0.7, top_p=0.9, seed=11)),
    ((1.0, 0.0, 11, 2), Sampling(temperature=0.0)),                          # top_p 0: only the top token
    ((2.0, None, None, 1), Sampling(temperature=2.0, top_p=1.0)),
])
def test_sampling_rules(fields, expected):
    assert sampling_of(*fields) == expected
    assert OPENAI_DEFAULT_TEMPERATURE == 1.0


class RecordingEngine(ScriptedEngine):
    def __init__(self):
        super().__init__()
        self.requests = []

    def complete(self, requests):
        self.requests.extend(requests)
        return super().complete(requests)


def test_request_fields_reach_the_engine():
    engine = RecordingEngine()
    with serving(create_app(engine)) as url:
        api = client(url)
        ask = lambda **kw: api.chat.completions.create(  # noqa: E731
            model="scripted", messages=[{"role": "user", "content": "hi"}], **kw)
        ask()
        ask(n=2)
        ask(temperature=0.5, top_p=0.8, seed=3, n=2)
        ask(temperature=1.2, top_p=0)
        ask(temperature=0, seed=9)
    got = [(r.temperature, r.top_p, r.seed, r.n, r.rows) for r in engine.requests]
    assert got == [(0.0, 1.0, None, 1, 1), (1.0, 1.0, None, 2, 2), (0.5, 0.8, 3, 2, 2), (0.0, 1.0, None, 1, 1),
                   (0.0, 1.0, None, 1, 1)]


@pytest.mark.parametrize("body", [{"temperature": 2.5}, {"temperature": -0.1}, {"top_p": 1.5}, {"seed": "x"},
                                  {"seed": 2**63}, {"n": 0}])
def test_out_of_range_sampling_fields_are_400s(body):
    with serving(create_app(ScriptedEngine())) as url:
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=TIMEOUT,
                           json={"model": "scripted", "messages": [{"role": "user", "content": "hi"}], **body})
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == next(iter(body))


def test_unknown_model_is_openais_404():
    # OpenAI answers an unknown model with 404, type invalid_request_error, code model_not_found, param null.
    with serving(create_app(ScriptedEngine())) as url:
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=TIMEOUT,
                           json={"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]})
        with pytest.raises(openai.NotFoundError) as caught:
            client(url).completions.create(model="gpt-9", prompt="hi")
    assert reply.status_code == 404
    error = reply.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "model_not_found", None)
    assert error["message"].startswith("The model `gpt-9` does not exist or you do not have access to it")
    assert caught.value.body["code"] == "model_not_found"


# ---- the tiny model -------------------------------------------------------------------------------
# The tests that count generate() calls run the micro-batcher (scheduler="micro"), whose batches go through
# generate(); the continuous decode loop is checked against it in test_server_continuous.py.


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from certa.models import load_model
    from certa.serving.engine import ConfidenceEngine

    lm = load_model(str(tiny_model_dir), device="cpu")
    return ConfidenceEngine(lm, "sequence_likelihood", model_name="tiny")


class _Calls(list):
    generations: list


@pytest.fixture
def generate_calls(monkeypatch):
    """Every call the engine makes to certa.generation.generate: (number of examples, keyword arguments)."""
    calls = _Calls()

    def counting(lm, examples, **kwargs):
        examples = list(examples)
        found = generate(lm, examples, **kwargs)
        calls.append((len(examples), kwargs))
        counting.generations.append(found)
        return found

    counting.generations = []
    calls.generations = counting.generations

    monkeypatch.setattr(engine_module, "generate", counting)
    return calls


QUESTION = [{"role": "user", "content": "What is 3 + 4?"}]


def _seq_likelihood(logprobs):
    return math.exp(sum(logprobs) / len(logprobs))


def test_n_samples_are_one_batch_each_with_its_own_confidence(tiny, generate_calls):
    with serving(create_app(tiny, scheduler="micro")) as url:
        reply = client(url).chat.completions.create(model="tiny", messages=QUESTION, n=4, temperature=1.0,
                                                    max_tokens=6, logprobs=True)
    assert generate_calls == [(4, generate_calls[0][1])]           # one generate call, the 4 rows together
    kwargs = generate_calls[0][1]
    assert kwargs["sample_answer"] and kwargs["temperature"] == 1.0 and kwargs["batch_size"] == 4
    texts = [c.message.content for c in reply.choices]
    assert len(set(texts)) == 4                                     # a random tiny model: four different answers
    assert len({c.confidence for c in reply.choices}) == 4
    for choice, gen in zip(reply.choices, generate_calls.generations[0], strict=True):
        # sequence likelihood of that sample's own tokens (special tokens included, which logprobs does not list)
        assert choice.confidence == pytest.approx(_seq_likelihood(gen.token_logprobs), rel=1e-5)
        assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
        assert gen.response.startswith(choice.message.content.strip())   # pieces leave out a cut-off character


def test_seeded_sampling_is_reproducible_even_in_a_busy_batch(tiny):
    engine_requests = dict(model="tiny", messages=QUESTION, n=3, temperature=0.9, top_p=0.95, max_tokens=6)
    with serving(create_app(tiny, scheduler="micro", max_batch=8, batch_wait_ms=150)) as url:
        api = client(url)
        alone = api.chat.completions.create(seed=1234, **engine_requests)
        with ThreadPoolExecutor(6) as pool:      # the same seeded request again, batched with unseeded neighbours
            busy = [pool.submit(api.chat.completions.create, seed=1234 if i == 0 else None, **engine_requests)
                    for i in range(6)]
            again = busy[0].result(TIMEOUT)
            neighbours = [f.result(TIMEOUT) for f in busy[1:]]
        other = api.chat.completions.create(seed=99, **engine_requests)
    answers = lambda r: [(c.message.content, c.confidence) for c in r.choices]  # noqa: E731
    assert answers(again) == answers(alone)
    assert answers(other) != answers(alone)
    assert len({tuple(answers(r)) for r in neighbours}) > 1       # unseeded requests are not fixed
    assert alone.system_fingerprint and alone.system_fingerprint == other.system_fingerprint


def test_temperature_zero_n_gives_the_greedy_answer_generated_once(tiny, generate_calls):
    with serving(create_app(tiny, scheduler="micro")) as url:
        api = client(url)
        greedy = api.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=6)   # temperature absent
        three = api.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=6, n=3, temperature=0)
        nucleus0 = api.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=6, temperature=1.5,
                                               top_p=0)
    assert [n for n, _ in generate_calls] == [1, 1, 1]
    assert not any(kw["sample_answer"] for _, kw in generate_calls)
    answer = (greedy.choices[0].message.content, greedy.choices[0].confidence)
    assert [(c.message.content, c.confidence) for c in three.choices] == [answer] * 3
    assert (nucleus0.choices[0].message.content, nucleus0.choices[0].confidence) == answer


def test_n_without_temperature_samples_at_openais_default(tiny, generate_calls):
    with serving(create_app(tiny, scheduler="micro")) as url:
        reply = client(url).chat.completions.create(model="tiny", messages=QUESTION, max_tokens=6, n=3)
    assert generate_calls[0][0] == 3 and generate_calls[0][1]["temperature"] == 1.0
    assert len({c.message.content for c in reply.choices}) > 1


def test_max_tokens_and_stop_finish_reasons(tiny):
    with serving(create_app(tiny)) as url:
        api = client(url)
        full = api.completions.create(model="tiny", prompt="Question: who wrote Hamlet? Answer:", max_tokens=5,
                                      logprobs=0).choices[0]
        stop = full.logprobs.tokens[3][:2] or full.logprobs.tokens[2][:2]
        cut = api.completions.create(model="tiny", prompt="Question: who wrote Hamlet? Answer:", max_tokens=5,
                                     stop=stop).choices[0]
        sampled = api.completions.create(model="tiny", prompt="Question: who wrote Hamlet? Answer:", max_tokens=3,
                                         temperature=1.0, seed=5, n=2)
    assert full.finish_reason == "length" and len(full.logprobs.tokens) == 5   # hit max_tokens
    assert cut.finish_reason == "stop" and stop not in cut.text                 # OpenAI: the stop text is not returned
    assert cut.text == full.text[: full.text.index(stop)]
    for choice in sampled.choices:
        assert choice.finish_reason in ("stop", "length")
        assert sampled.usage.completion_tokens <= 6


def test_generate_sampled_answer_keeps_raw_model_logprobs(tiny):
    """The sampled answer's log-probs are the model's own (temperature and top-p only pick the tokens)."""
    lm = tiny.lm
    prompt = lm.chat_prompt("Name a colour.")
    examples = [Example(id=f"c{i}", question="q", answers=[""], meta={RAW_PROMPT_KEY: prompt}) for i in range(2)]
    first = generate(lm, examples, max_new_tokens=5, sample_answer=True, temperature=0.6, top_p=0.9, seed=7,
                     progress=False)
    second = generate(lm, examples, max_new_tokens=5, sample_answer=True, temperature=0.6, top_p=0.9, seed=7,
                      progress=False)
    assert [g.token_ids for g in first] == [g.token_ids for g in second]
    prompt_ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for gen in first:
        ids = torch.tensor([prompt_ids + gen.token_ids])
        with torch.no_grad():
            logits = lm.model(ids).logits[0, len(prompt_ids) - 1:-1]
        expected = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(gen.token_ids)[:, None]).squeeze(1)
        assert gen.token_logprobs == pytest.approx(expected.tolist(), abs=1e-4)
    greedy = generate(lm, examples[:1], max_new_tokens=5, progress=False)[0]
    narrow = generate(lm, examples[:1], max_new_tokens=5, sample_answer=True, temperature=1.0, top_p=1e-9, seed=3,
                      progress=False)[0]
    assert narrow.token_ids == greedy.token_ids                         # top-p that keeps one token is greedy
