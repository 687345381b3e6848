"""Where second answers come from: the local model, another model, or an OpenAI-compatible server.

Self-correction and the model cascade both ask a model to answer a list of
examples; ``GenerateFn`` is that contract (examples in, generations out) and
this module builds one for a loaded model or for a server URL.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CertaError, InputError
from ..generation import generate
from ..prompts import SYSTEM_PROMPT, question_prompt
from ..records import Example, Generation, Record

if TYPE_CHECKING:
    from ..models import LoadedModel

GenerateFn = Callable[[Sequence[Example]], Sequence[Generation]]


def local_generator(lm: LoadedModel, **options: Any) -> GenerateFn:
    """Answers from a loaded model (its base model, for a certa artifact: an adapter only reads confidence)."""

    def run(examples: Sequence[Example]) -> list[Generation]:
        # generate() answers with the base model (LoadedModel.answering): an adapter only reads confidence.
        return generate(lm, examples, hooks=(), progress=False, **options)

    return run


def openai_generator(base_url: str, model_name: str, api_key: str | None, max_new_tokens: int,
                     timeout: float = 120.0) -> GenerateFn:
    """Answers from an OpenAI-compatible ``/chat/completions`` endpoint, one request per question."""
    import httpx

    url = base_url.rstrip("/") + "/chat/completions"
    key = api_key or os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def ask(client: httpx.Client, example: Example) -> Generation:
        payload = {"model": model_name, "max_tokens": max_new_tokens, "temperature": 0.0,
                   "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                {"role": "user", "content": question_prompt(example)}]}
        try:
            reply = client.post(url, json=payload, headers=headers)
            reply.raise_for_status()
            text = reply.json()["choices"][0]["message"]["content"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise CertaError(f"{url}: request for question {example.id!r} failed ({exc})") from None
        return Generation(id=example.id, prompt=question_prompt(example), response=text or "", model=model_name)

    def run(examples: Sequence[Example]) -> list[Generation]:
        with httpx.Client(timeout=timeout) as client:
            return [ask(client, e) for e in examples]

    return run


def generator_for(strong: LoadedModel | str | GenerateFn, model_name: str, api_key: str | None,
                  max_new_tokens: int, batch_size: int) -> GenerateFn:
    """A ``GenerateFn`` for a server URL, a loaded model, or a function that already is one."""
    if isinstance(strong, str):
        return openai_generator(strong, model_name, api_key, max_new_tokens)
    if callable(strong):
        return strong
    return local_generator(strong, max_new_tokens=max_new_tokens, batch_size=batch_size)


def check_confidences(records: Sequence[Record], confidences: Sequence[float] | np.ndarray) -> np.ndarray:
    """One finite confidence per record, as an array; a one-line error otherwise."""
    conf = np.asarray(confidences, dtype=float).reshape(-1)
    if not len(records):
        raise InputError("no records given")
    if conf.shape[0] != len(records):
        raise InputError(f"{conf.shape[0]} confidences for {len(records)} records")
    if not np.all(np.isfinite(conf)):
        raise InputError("confidences contain NaN or infinite values")
    return conf
