"""A model behind an OpenAI-compatible server, named ``openai:BASE_URL[#model]``.

vLLM, SGLang, llama.cpp's server, text-generation-inference, hosted APIs and
``certa serve`` itself all speak the same ``/v1/chat/completions``. certa
cannot see inside such a model: it gets the answer text, the chosen tokens'
log-probs and a few top alternatives per token when the server returns them,
and sampled answers. ``RemoteModel`` is only the address; the requests are
made by :mod:`certa.remote_generation` and the remote read-outs of
``p_true`` and ``verbalized``.

The API key is read from the environment variable ``api_key_env``
(``OPENAI_API_KEY`` by default, as the ``openai`` client does); it never
appears in a spec, a record or a message.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlparse

from ..errors import CertaError, InputError
from ..http import JsonClient, Retry

T = TypeVar("T")
R = TypeVar("R")

REMOTE_PREFIX = "openai:"
API_KEY_ENV = "OPENAI_API_KEY"


@dataclass(frozen=True)
class RemoteModel:
    """An OpenAI-compatible server and the model id to ask it for (``None``: the one it lists first)."""

    base_url: str
    model: str | None = None
    api_key_env: str = API_KEY_ENV

    @property
    def name(self) -> str:
        """The spec as a user writes it; what records name as their ``model``."""
        return f"{REMOTE_PREFIX}{self.base_url}" + (f"#{self.model}" if self.model else "")

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None


def is_remote_spec(spec: object) -> bool:
    """Whether ``spec`` names a server (``openai:http...``) rather than weights certa loads."""
    return isinstance(spec, str) and spec.startswith(REMOTE_PREFIX)


def parse_remote_spec(spec: str, *, api_key_env: str = API_KEY_ENV) -> RemoteModel:
    """``openai:http://host:8000/v1#model-id`` → :class:`RemoteModel`; a one-line error for anything else.

    The base URL is what the server's OpenAI routes hang under (usually ends in
    ``/v1``); ``#model-id`` picks the model when the server serves several.
    """
    if not is_remote_spec(spec):
        raise InputError(f"{spec!r} is not a server spec; write openai:BASE_URL[#model], "
                         "e.g. openai:http://localhost:8000/v1#Qwen/Qwen2.5-7B-Instruct")
    url, _, model = spec[len(REMOTE_PREFIX):].partition("#")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InputError(f"{spec!r}: the base URL must start with http:// or https:// and name a host, "
                         "e.g. openai:http://localhost:8000/v1")
    return RemoteModel(url.rstrip("/"), model.strip() or None, api_key_env)


# --------------------------------------------------------------------------- the client


@dataclass
class TokenLogprob:
    """One answer token as a server reports it: its text, log-prob and the top alternatives' log-probs."""

    token: str
    logprob: float
    top: dict[str, float]


@dataclass
class RemoteChoice:
    """One choice of a chat completion: the text, why it ended, per-token log-probs (``None``: not returned)."""

    text: str
    finish_reason: str
    tokens: list[TokenLogprob] | None
    confidence: float | None = None
    confidence_method: str | None = None


#: Log-probs below this are stored as it (servers send -inf or -9999 for probabilities that underflow).
MIN_LOGPROB = -1e4


class RemoteClient:
    """Chat completions from one :class:`RemoteModel`, with :class:`certa.http.JsonClient`'s bounded retries.

    429, 408 and 5xx answers and transport failures are retried with capped
    exponential backoff within ``retry.deadline``; other 4xx are not; every
    failure is one line naming the server. ``model`` is resolved once from
    ``GET /models`` when the spec names none.
    """

    def __init__(self, remote: RemoteModel, *, timeout: float = 120.0, retry: Retry | None = None,
                 what: str = "generating server"):
        self.remote = remote
        self.json = JsonClient(remote.base_url, api_key_env=remote.api_key_env, timeout=timeout,
                               retry=retry or Retry(), what=what)
        self._model = remote.model

    @property
    def model(self) -> str:
        if self._model is None:
            self._model = self._first_model()
        return self._model

    @property
    def name(self) -> str:
        """``openai:URL#model`` with the model resolved: what records name."""
        return RemoteModel(self.remote.base_url, self.model).name

    def _first_model(self) -> str:
        import httpx

        url = self.remote.base_url + "/models"
        key = self.remote.api_key
        try:
            reply = httpx.get(url, headers={"Authorization": f"Bearer {key}"} if key else {},
                              timeout=self.json.timeout)
            reply.raise_for_status()
            return str(reply.json()["data"][0]["id"])
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise CertaError(f"{url}: could not list the server's models ({' '.join(str(exc).split())[:160]}); "
                             f"name the model in the spec: openai:{self.remote.base_url}#MODEL") from None

    def chat(self, messages: list[dict[str, str]], **params: Any) -> list[RemoteChoice]:
        """``POST /chat/completions``; the reply's choices, parsed."""
        reply = self.json.post_json("/chat/completions", {"model": self.model, "messages": messages, **params})
        try:
            choices = reply["choices"]
            return [_choice(c) for c in choices]
        except (KeyError, TypeError, ValueError) as exc:
            raise CertaError(f"{self.json.what} at {self.remote.base_url} sent a reply that is not a chat "
                             f"completion ({exc}): {str(reply)[:200]!r}") from None

    def close(self) -> None:
        self.json.close()

    def __enter__(self) -> RemoteClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _choice(raw: dict[str, Any]) -> RemoteChoice:
    message = raw.get("message") or {}
    logprobs = raw.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    tokens = None
    if content:  # null or [] both mean: no log-probs (certa serve sends [] for an empty answer)
        tokens = [TokenLogprob(str(t.get("token", "")), _finite(t["logprob"]),
                               {str(a.get("token", "")): _finite(a["logprob"]) for a in t.get("top_logprobs") or []})
                  for t in content]
    confidence = raw.get("confidence")
    return RemoteChoice(str(message.get("content") or ""), str(raw.get("finish_reason") or "stop"), tokens,
                        float(confidence) if isinstance(confidence, (int, float)) else None,
                        raw.get("confidence_method"))


def _finite(value: Any) -> float:
    """A log-prob as a finite number in [MIN_LOGPROB, 0] (JSON files hold no infinities)."""
    number = float(value)
    return MIN_LOGPROB if math.isnan(number) else min(0.0, max(number, MIN_LOGPROB))


def top_k_entropy(top: dict[str, float]) -> float | None:
    """Entropy (nats) of a next-token distribution known only through its top-k log-probs.

    The k listed probabilities are kept and the rest of the mass, 1 − Σ p_i, is
    treated as one more outcome. Merging outcomes never raises entropy, so this
    is a lower bound on the full distribution's entropy, tight when the top k
    hold almost all the mass. ``None`` when no alternatives were returned.
    """
    if not top:
        return None
    probs = [math.exp(lp) for lp in top.values()]
    mass = sum(probs)
    if mass > 1.0:  # rounding in the server's numbers
        probs = [p / mass for p in probs]
        mass = 1.0
    rest = 1.0 - mass
    terms = [p * math.log(p) for p in probs if p > 0]
    if rest > 1e-12:
        terms.append(rest * math.log(rest))
    return float(-sum(terms))


def map_concurrently(fn: Callable[[T], R], items: Sequence[T], concurrency: int = 8) -> list[R]:
    """``[fn(x) for x in items]`` with up to ``concurrency`` calls in flight (servers batch concurrent requests)."""
    if concurrency <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="certa-remote") as pool:
        return list(pool.map(fn, items))
