"""P(True) and verbalized confidence read from a model behind an OpenAI-compatible server.

A chat API cannot continue an assistant turn that certa has begun (no ``(``
or ``Confidence:`` prefilled), and it returns no log-probs for prompt tokens
(``echo`` with log-probs is gone from OpenAI's API and absent from most
servers). What it can return is the distribution of the *first tokens the
model writes*, as ``top_logprobs`` (up to 20 alternatives per token). So:

- ``p_true``: the same question, proposed answer and "(A) True / (B) False"
  request as the local read-out, sent as one user turn; the confidence is
  p(A) / (p(A) + p(B)) at the first answer token whose top alternatives hold a
  letter (a reply may open with "(" first). An option outside the top-k counts
  as probability 0. Needs a server that returns ``top_logprobs`` (vLLM, SGLang,
  llama.cpp, OpenAI chat models); ``certa serve`` returns none and gets a clear error.
- ``verbalized``: the follow-up turn of the local read-out ("How likely is your
  answer to be correct? Reply with 'Confidence: ' and a whole number from 0 to
  100") after the model's own answer, answered greedily; the number is parsed
  from the text (:func:`~certa.methods.prompting.verbalized.parse_confidence`),
  as for any black-box model. The local read-out's expected level over the
  next-token distribution needs the prefilled ``Confidence:`` and is not
  available through a chat API.

Replies that hold no readable letter or number are counted in the method's
``diagnostics()`` (``unreadable``) and scored 0.5 (P(True)) or the mean of the
readable ones (verbalized): a method must return a number for every answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from ...errors import CertaError
from ...models.remote import RemoteChoice, RemoteClient, RemoteModel, map_concurrently
from ...prompts import SYSTEM_PROMPT, question_prompt
from ...records import Record

log = logging.getLogger(__name__)

VERBAL_SCALE = 100
_LETTERS = ("A", "B")


def option_letter(token: str) -> str | None:
    """``"A"`` / ``"B"`` for a token that spells one option (``"A"``, ``" B"``, ``"(A"``, ``"A)"``), else None."""
    text = token.strip().lstrip("(").rstrip(")").strip()
    return text if text in _LETTERS else None


def p_true_from_choice(choice: RemoteChoice) -> float | None:
    """p(A) / (p(A) + p(B)) at the first answer token whose top alternatives name an option; None if none does."""
    for token in choice.tokens or []:
        alternatives = {**token.top, token.token: token.logprob}
        mass = {letter: 0.0 for letter in _LETTERS}
        for text, logprob in alternatives.items():
            letter = option_letter(text)
            if letter is not None:
                mass[letter] += float(np.exp(logprob))
        total = mass["A"] + mass["B"]
        if total > 0:
            return mass["A"] / total
    return None


def p_true_user_turn(record: Record) -> str:
    """The user turn of the remote P(True) read-out: the local read-out's question, answer and options."""
    return (f"Question:\n{question_prompt(record.example())}\n\n"
            f"Proposed answer: {record.response.strip()}\n\n"
            "Is the proposed answer correct?\n(A) True\n(B) False\n"
            "Reply with (A) or (B).")


def remote_p_true(remote: RemoteModel, records: Sequence[Record], *, concurrency: int = 8) -> tuple[np.ndarray, int]:
    """P(True) of each record's answer from the server's first-token ``top_logprobs``; (scores, unreadable)."""
    with RemoteClient(remote, what="P(True) server") as client:
        def ask(record: Record) -> RemoteChoice:
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": p_true_user_turn(record)}]
            choices = client.chat(messages, max_tokens=3, temperature=0.0, logprobs=True, top_logprobs=20)
            if not choices:
                raise CertaError(f"{remote.base_url} returned no choices for the P(True) request of {record.id!r}")
            choice = choices[0]
            if not choice.tokens or not any(t.top for t in choice.tokens):
                raise CertaError(f"{remote.base_url} returned no top_logprobs for the P(True) request of {record.id!r}: "
                                 "p_true through a server reads p(A) and p(B) from them (vLLM, SGLang, llama.cpp and "
                                 "OpenAI return them; certa serve does not)")
            return choice

        values = [p_true_from_choice(c) for c in map_concurrently(ask, list(records), concurrency)]
    return _fill(values, 0.5, "p_true", remote)


def remote_verbalized(remote: RemoteModel, records: Sequence[Record], parse: Callable[..., float | None], *,
                      concurrency: int = 8) -> tuple[np.ndarray, int]:
    """The confidence the served model states after its answer, read by ``parse`` (``verbalized.parse_confidence``)
    from its reply; (scores, unreadable)."""
    instruction = (f"How likely is your answer to be correct? Reply with 'Confidence: ' and a whole number from 0 to "
                   f"{VERBAL_SCALE} ({VERBAL_SCALE} = surely correct, 0 = surely wrong).")
    with RemoteClient(remote, what="verbalized-confidence server") as client:
        def ask(record: Record) -> float | None:
            messages = [{"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": question_prompt(record.example())},
                        {"role": "assistant", "content": record.response},
                        {"role": "user", "content": instruction}]
            choices = client.chat(messages, max_tokens=12, temperature=0.0)
            return parse(choices[0].text, scale=VERBAL_SCALE) if choices else None

        values = map_concurrently(ask, list(records), concurrency)
    readable = [v for v in values if v is not None]
    return _fill(values, float(np.mean(readable)) if readable else 0.5, "verbalized", remote)


def _fill(values: list[float | None], default: float, name: str, remote: RemoteModel) -> tuple[np.ndarray, int]:
    unreadable = sum(v is None for v in values)
    if unreadable:
        log.warning("%s: %d of %d replies from %s held no readable confidence (scored %.3f)", name, unreadable,
                    len(values), remote.base_url, default)
    return np.array([default if v is None else v for v in values], dtype=float), unreadable
