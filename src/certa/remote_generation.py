"""Answers from any OpenAI-compatible server, as the same ``Generation`` records local generation writes.

``certa generate -m openai:http://host:8000/v1#model`` sends each question as
a chat completion (certa's system prompt and question prompt, so a local run
and a served one see the same conversation): the greedy answer with
``temperature=0``, ``logprobs`` and ``top_logprobs``, and ``samples`` extra
answers at ``temperature`` (one request with ``n``; more requests when a
server ignores ``n``). Requests run ``concurrency`` at a time, which is what
lets vLLM or SGLang batch them. With ``out=`` finished answers are appended as
they arrive and a re-run skips them, as for local generation.

What a record holds, compared with local generation:

- ``token_logprobs``: the servers' log-probs of the answer tokens. Servers
  leave out the end-of-turn token, so ``sequence_likelihood`` averages over the
  answer's text tokens only (a local record also counts the end token).
- ``token_entropies``: only when the server returns ``top_logprobs``: the
  entropy of the top-k with the rest of the mass as one outcome, a lower bound
  on the true entropy (:func:`certa.models.remote.top_k_entropy`; k is in
  ``meta["remote"]["top_logprobs"]``). ``token_entropy`` also needs the
  vocabulary size (``vocab_size=``), which the OpenAI API does not report.
- no ``token_ids`` (the server's tokenizer is not certa's), no ``hidden_state``,
  and ``prompt`` is empty: a local scorer (ConfTuner, GrACE, P(True) with a local
  model) that reads these answers renders its own prompt for the question.
- ``confidence``: a confidence the server attached to the choice (``certa
  serve`` does), under the method it named.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import zlib
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from .errors import CertaError, InputError
from .http import HttpError, Retry
from .models.remote import RemoteChoice, RemoteClient, RemoteModel, parse_remote_spec, top_k_entropy
from .prompts import SYSTEM_PROMPT, question_prompt
from .records import Example, Generation, JsonlAppender, read_jsonl

log = logging.getLogger(__name__)

#: Alternatives asked for per answer token (OpenAI's and vLLM's default limit is 20).
TOP_LOGPROBS = 20


class LogprobsUnavailable(CertaError):
    """The server returned no token log-probs although they were required."""


def question_messages(example: Example) -> list[dict[str, str]]:
    """The conversation certa sends for a question: the same system and user turns local generation renders."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question_prompt(example)}]


def generate_remote(
    model: RemoteModel | str,
    examples: Iterable[Example],
    *,
    max_new_tokens: int = 48,
    samples: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    logprobs: bool | None = None,
    top_logprobs: int = TOP_LOGPROBS,
    vocab_size: int | None = None,
    concurrency: int = 8,
    timeout: float = 120.0,
    retry: Retry | None = None,
) -> list[Generation]:
    """Answer every example through an OpenAI-compatible server; one ``Generation`` per example, in input order.

    Args:
        model: a :class:`~certa.models.remote.RemoteModel` or its spec, ``openai:BASE_URL[#model]``.
        examples: the questions; ids must be unique.
        max_new_tokens: ``max_tokens`` of every request.
        samples: extra answers sampled at ``temperature`` (``Generation.samples``).
        temperature: of the sampled answers (the main answer is requested with temperature 0).
        seed: sent with sampled requests (servers that honour ``seed`` reproduce them), mixed with the id.
        out: JSONL path; answers are appended as they arrive and ids already there are skipped.
        progress: show a progress bar.
        logprobs: ``True``: require token log-probs (:class:`LogprobsUnavailable` at the first answer without
            them); ``False``: do not ask; ``None`` (default): ask, and keep answers without them when the
            server has none (a server that rejects the parameter is asked again without it).
        top_logprobs: alternatives per token to ask for (0: none; entropies need some).
        vocab_size: the model's vocabulary size, stored as ``meta["vocab_size"]`` for ``token_entropy``.
        concurrency: requests in flight at once.
        timeout: seconds one request may take; ``retry`` bounds the retries of 429/5xx/timeouts.
    """
    remote = parse_remote_spec(model) if isinstance(model, str) else model
    examples = list(examples)
    _check_arguments(examples, max_new_tokens, samples, temperature, concurrency, top_logprobs)
    asker = _Asker(RemoteClient(remote, timeout=timeout, retry=retry), max_new_tokens, samples, temperature,
                   seed, logprobs, top_logprobs, vocab_size)
    with contextlib.ExitStack() as stack:
        stack.callback(asker.client.close)
        appender = stack.enter_context(JsonlAppender(out)) if out is not None else None
        done = {g.id: g for g in read_jsonl(appender.partial, Generation)} if appender is not None else {}
        short = [g.id for g in done.values() if len(g.samples) < samples]
        if short and any(ex.id in short for ex in examples):
            raise InputError(f"{out}: earlier generations lack {samples} samples; "
                             "delete the file (and its .partial) or write to a new path")
        todo = [ex for ex in examples if ex.id not in done]
        for gen in _run_all(asker, todo, concurrency, progress, len(examples)):
            done[gen.id] = gen
            if appender is not None:
                appender.append(gen)
    if asker.missing_logprobs:
        log.warning("%s returned no token log-probs for %d answers: methods that read log-probs "
                    "(sequence_likelihood, token_entropy, ...) cannot score them", remote.base_url,
                    asker.missing_logprobs)
    return [done[ex.id] for ex in examples]


def _check_arguments(examples: list[Example], max_new_tokens: int, samples: int, temperature: float,
                     concurrency: int, top_logprobs: int) -> None:
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if samples < 0:
        raise InputError(f"samples must be 0 or more, got {samples}")
    if samples and not temperature > 0:
        raise InputError(f"temperature must be positive to sample, got {temperature}")
    if concurrency < 1:
        raise InputError(f"concurrency must be at least 1, got {concurrency}")
    if not 0 <= top_logprobs <= 20:
        raise InputError(f"top_logprobs must be between 0 and 20 (the OpenAI limit), got {top_logprobs}")
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise InputError(f"example id {ex.id!r} appears more than once; ids must be unique")
        if ex.meta.get("raw_prompt"):
            raise InputError(f"example {ex.id!r} carries a raw prompt; a server is sent chat messages only")
        seen.add(ex.id)


def _run_all(asker: _Asker, todo: list[Example], concurrency: int, progress: bool, total: int):
    """Yield generations as their requests finish; the first failure cancels what has not started."""
    from tqdm.auto import tqdm

    if not todo:
        return
    bar = tqdm(total=total, initial=total - len(todo), disable=not progress, unit="ex", desc="generate (server)")
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="certa-remote")
    try:
        pending: set[Future[Generation]] = {pool.submit(asker.ask, ex) for ex in todo}
        while pending:
            # Each answer is handed on as soon as it arrives (the caller appends it: a kill loses nothing).
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            failed = [f for f in finished if f.exception() is not None]
            for future in finished:
                if future.exception() is None:
                    yield future.result()
                    bar.update(1)
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


class _Asker:
    """The requests for one question: the greedy answer (with log-probs) and the samples."""

    def __init__(self, client: RemoteClient, max_new_tokens: int, samples: int, temperature: float, seed: int,
                 logprobs: bool | None, top_logprobs: int, vocab_size: int | None):
        self.client, self.max_new_tokens, self.samples = client, max_new_tokens, samples
        self.temperature, self.seed, self.require = temperature, seed, logprobs is True
        self.ask_logprobs = logprobs is not False
        self.top_logprobs, self.vocab_size = top_logprobs, vocab_size
        self.missing_logprobs = 0

    def ask(self, example: Example) -> Generation:
        messages = question_messages(example)
        start = time.perf_counter()
        choice = self._greedy(messages, example.id)
        answered = time.perf_counter()
        samples = self._samples(messages, example.id)
        return self._record(example, messages, choice, samples,
                            {"answer": answered - start, **({"samples": time.perf_counter() - answered}
                                                            if self.samples else {})})

    def _greedy(self, messages: list[dict[str, str]], example_id: str) -> RemoteChoice:
        params: dict[str, Any] = {"max_tokens": self.max_new_tokens, "temperature": 0.0, "n": 1}
        if self.ask_logprobs:
            params["logprobs"] = True
            if self.top_logprobs:
                params["top_logprobs"] = self.top_logprobs
        try:
            choices = self.client.chat(messages, **params)
        except HttpError as exc:
            # A server that does not know the parameter refuses the request (400/422); ask again without it.
            if not (self.ask_logprobs and not self.require and exc.status in (400, 422) and "logprob" in str(exc)):
                raise
            log.warning("%s refused logprobs (%s); asking without them", self.client.remote.base_url, exc)
            self.ask_logprobs = False
            return self._greedy(messages, example_id)
        if not choices:
            raise CertaError(f"{self.client.remote.base_url} returned no choices for question {example_id!r}")
        choice = choices[0]
        if choice.tokens is None and self.ask_logprobs and choice.text:
            if self.require:
                raise LogprobsUnavailable(
                    f"{self.client.remote.base_url} returned no token log-probs for question {example_id!r} "
                    "although logprobs=true was sent; methods that read log-probs (sequence_likelihood, "
                    "token_entropy, ...) need a server that returns them (vLLM, SGLang, llama.cpp, OpenAI "
                    "chat models do), or generate without requiring them")
            self.missing_logprobs += 1
        return choice

    def _samples(self, messages: list[dict[str, str]], example_id: str) -> list[str]:
        texts: list[str] = []
        request = 0
        # Servers that ignore n (one choice per request) get more requests, each with its own seed.
        while len(texts) < self.samples and request < self.samples:
            seed = zlib.crc32(f"{self.seed}\x00{example_id}\x00{request}".encode()) & 0x7FFFFFFF
            choices = self.client.chat(messages, max_tokens=self.max_new_tokens, temperature=self.temperature,
                                       n=self.samples - len(texts), seed=seed)
            texts += [c.text.strip() for c in choices][: self.samples - len(texts)]
            request += 1
        if len(texts) < self.samples:
            raise CertaError(f"{self.client.remote.base_url} returned {len(texts)} of {self.samples} sampled "
                             f"answers for question {example_id!r}")
        return texts

    def _record(self, example: Example, messages: list[dict[str, str]], choice: RemoteChoice, samples: list[str],
                seconds: dict[str, float]) -> Generation:
        tokens = choice.tokens or []
        entropies = [top_k_entropy(t.top) for t in tokens]
        has_entropy = bool(tokens) and all(e is not None for e in entropies)
        top_k = max((len(t.top) for t in tokens), default=0)
        meta: dict[str, Any] = {
            "remote": {"base_url": self.client.remote.base_url, "model": self.client.model,
                       "logprobs": bool(tokens), "top_logprobs": top_k,
                       **({"entropy": "top-k lower bound"} if has_entropy else {})},
            "messages": messages, "seconds": seconds,
        }
        if tokens:
            meta["tokens"] = [t.token for t in tokens]
        if self.vocab_size:
            meta["vocab_size"] = int(self.vocab_size)
        confidence: dict[str, float] = {}
        if choice.confidence is not None:
            method = choice.confidence_method or "server"
            confidence[method] = choice.confidence
            meta["confidence_source"] = {method: self.client.name}
        return Generation(
            id=example.id, prompt="", response=choice.text.strip(), model=self.client.name,
            token_logprobs=[t.logprob for t in tokens],
            token_entropies=[float(e) for e in entropies] if has_entropy else [],  # type: ignore[arg-type]
            finish_reason="length" if choice.finish_reason == "length" else "stop",
            samples=samples, confidence=confidence, meta=meta,
        )

