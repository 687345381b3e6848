"""Outbound HTTP to OpenAI-compatible servers: JSON POSTs that retry what is worth retrying, within a deadline.

Every call certa makes to another model's server (an LLM judge, the strong
model of a cascade, an OpenAI backend) goes through :class:`JsonClient`:

- 429, 408 and 5xx answers and transport failures (refused connection, reset,
  timeout) are retried with capped exponential backoff and jitter ("full
  jitter" on the upper half, so many clients do not retry in lock step; see
  Brooker, *Exponential Backoff And Jitter*, AWS Architecture Blog, 2015);
- a server's ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms`` is
  honoured instead of the computed wait;
- a total ``deadline`` bounds all attempts and waits together: no attempt starts
  after it and each attempt's timeout is cut to the time left;
- other 4xx answers are not retried (the request itself is wrong);
- every failure is one :class:`HttpError` line naming the URL, the status,
  the attempts and the time spent, with the server's own error message.

The API key comes from the ``api_key`` argument or the environment variable
``api_key_env`` (``OPENAI_API_KEY`` by default, as the ``openai`` client does);
it is sent as a bearer token and never appears in a message.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from .errors import CertaError

#: Answers worth trying again: rate limits, request timeouts and server-side failures.
RETRY_STATUSES = frozenset({408, 429})


class HttpError(CertaError):
    """A request to another server failed for good; ``status`` is ``None`` when no answer came."""

    def __init__(self, message: str, *, url: str, status: int | None, attempts: int):
        super().__init__(message)
        self.url, self.status, self.attempts = url, status, attempts


@dataclass(frozen=True)
class Retry:
    """How hard to try: at most ``attempts`` tries (first included), waits doubling from ``backoff``
    up to ``max_backoff`` seconds, everything within ``deadline`` seconds."""

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 20.0
    deadline: float = 300.0

    def wait(self, retry: int, rng: random.Random) -> float:
        """The pause before retry number ``retry`` (1, 2, ...): uniform in [½, 1] × the capped exponential."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return ceiling * rng.uniform(0.5, 1.0)


NO_RETRY = Retry(attempts=1)


def is_retryable(status: int) -> bool:
    return status in RETRY_STATUSES or status >= 500


class JsonClient:
    """POST JSON to ``base_url`` + path and get JSON back, retrying per :class:`Retry`.

    Args:
        base_url: e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1``.
        api_key: sent as ``Authorization: Bearer``; default: the ``api_key_env`` variable, if set.
        api_key_env: the environment variable to read the key from (``None``: do not read one).
        timeout: seconds one attempt may take (cut to what is left of the deadline).
        retry: attempts, backoff and the total deadline.
        what: how messages name the server (``"LLM judge"``, ``"strong model"``).
        transport: an ``httpx`` transport (tests; proxies).
        seed: seeds the jitter (reproducible waits).
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 60.0, retry: Retry = Retry(), what: str = "server",
                 transport: httpx.BaseTransport | None = None, seed: int | None = None):
        if retry.attempts < 1 or retry.deadline <= 0 or timeout <= 0:
            raise ValueError("need attempts >= 1, a positive deadline and a positive timeout")
        key = api_key or (os.environ.get(api_key_env) if api_key_env else None)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.base_url = base_url.rstrip("/")
        self.timeout, self.retry, self.what = timeout, retry, what
        self._rng = random.Random(seed)
        self._client = httpx.Client(headers=headers, transport=transport, timeout=timeout)

    def post_json(self, path: str, body: Any) -> Any:
        """POST ``body`` as JSON to ``base_url + path``; the decoded JSON answer of the first 2xx."""
        url = self.base_url + "/" + path.lstrip("/")
        start = time.monotonic()
        deadline = start + self.retry.deadline
        attempt = 0
        while True:
            attempt += 1
            left = deadline - time.monotonic()
            try:
                response = self._client.post(url, json=body, timeout=max(0.001, min(self.timeout, left)))
            except httpx.TransportError as exc:
                status, failure, server_wait = None, _transport_failure(exc), None
            else:
                if response.is_success:
                    return self._decode(response, url, attempt)
                status, failure = response.status_code, _server_message(response)
                if not is_retryable(status):
                    raise self._error(url, status, attempt, start, failure, "not retried")
                server_wait = _retry_after(response.headers)
            if attempt >= self.retry.attempts:
                raise self._error(url, status, attempt, start, failure, "gave up")
            wait = server_wait if server_wait is not None else self.retry.wait(attempt, self._rng)
            left = deadline - time.monotonic()
            if wait >= left:
                limit = f"{self.retry.deadline:g} s deadline"
                raise self._error(url, status, attempt, start, failure,
                                  f"gave up: the server asked to wait {wait:.1f} s, past the {limit}"
                                  if server_wait is not None else f"gave up at the {limit}")
            time.sleep(wait)
            if time.monotonic() >= deadline:  # the sleep overshot: do not start an attempt past the deadline
                raise self._error(url, status, attempt, start, failure,
                                  f"gave up at the {self.retry.deadline:g} s deadline")

    def chat(self, model: str, messages: list[dict[str, str]], **params: Any) -> str:
        """``POST /chat/completions`` and return the first choice's message text ('' when null)."""
        reply = self.post_json("/chat/completions", {"model": model, "messages": messages, **params})
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise CertaError(f"{self.what} at {self.base_url} sent a reply that is not a chat completion: "
                             f"{str(reply)[:200]!r}") from None
        return str(content or "")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> JsonClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _decode(self, response: httpx.Response, url: str, attempts: int) -> Any:
        try:
            return response.json()
        except ValueError:
            raise HttpError(f"{self.what} at {url} answered HTTP {response.status_code} with a body that is not "
                            f"JSON: {response.text[:200]!r}", url=url, status=response.status_code,
                            attempts=attempts) from None

    def _error(self, url: str, status: int | None, attempts: int, start: float, failure: str,
               outcome: str) -> HttpError:
        answer = f"HTTP {status}" if status is not None else "no answer"
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        seconds = time.monotonic() - start
        return HttpError(f"{self.what} at {url}: {answer} ({failure}) after {tries} in {seconds:.1f} s; {outcome}",
                         url=url, status=status, attempts=attempts)


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds a server asks us to wait: ``retry-after-ms``, ``Retry-After`` seconds or HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _server_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI's ``error.message`` when present, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict) and body["error"].get("message"):
        return repr(str(body["error"]["message"])[:200])
    text = response.text.strip()
    return repr(text[:200]) if text else response.reason_phrase or "empty body"


def _transport_failure(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    text = " ".join(str(exc).split())  # one line
    if isinstance(exc, httpx.ConnectError):
        return f"unreachable: {text}" if text else "unreachable"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
