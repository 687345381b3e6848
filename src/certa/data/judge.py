"""An optional grader that asks another model, behind any OpenAI-compatible endpoint.

Free-form answers (TruthfulQA, long explanations) defeat string matching; a
judge model reads the question, the reference answers and the response and
says yes or no. Never used unless asked for: ``get_grader("llm_judge",
base_url=..., model=...)``.
"""

from __future__ import annotations

import logging

import httpx

from ..http import JsonClient, Retry
from ..prompts import format_choices
from ..records import Example
from .text import normalize_text

log = logging.getLogger(__name__)

JUDGE_SYSTEM_PROMPT = (
    "You grade answers to questions. Given a question, its correct answer(s) and a proposed answer, "
    "decide whether the proposed answer means the same as a correct answer. Reply with only yes or no."
)

_YES = {"yes", "correct", "true"}
_NO = {"no", "incorrect", "false", "wrong"}


def parse_verdict(reply: str) -> float | None:
    """``"Yes."`` → 1.0, ``"no"`` → 0.0, anything else → None (the first word decides)."""
    words = normalize_text(reply).split()
    if not words:
        return None
    if words[0] in _YES:
        return 1.0
    if words[0] in _NO:
        return 0.0
    return None


class LLMJudge:
    """Grader backed by a chat model at ``base_url`` (e.g. ``https://api.openai.com/v1``).

    Calls ``POST {base_url}/chat/completions`` at temperature 0; identical
    (question, response) pairs are asked once. A reply that is neither yes nor no
    grades as wrong and is counted in ``failures`` (and logged), so a run never
    silently drops it. Requests go through :class:`certa.http.JsonClient`: rate limits and
    server errors are retried with backoff within ``retry.deadline``; the key is ``api_key`` or
    the ``api_key_env`` variable. ``transport`` lets tests substitute ``httpx.MockTransport``.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *,
                 timeout: float = 60.0, retry: Retry = Retry(), api_key_env: str | None = "OPENAI_API_KEY",
                 transport: httpx.BaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.client = JsonClient(self.base_url, api_key=api_key, api_key_env=api_key_env, timeout=timeout,
                                 retry=retry, what="LLM judge", transport=transport)
        self.failures = 0
        self._cache: dict[tuple[str, str], float] = {}

    def __call__(self, response: str, example: Example) -> float:
        key = (example.id, response)
        if key not in self._cache:
            self._cache[key] = self._judge(response, example)
        return self._cache[key]

    def _judge(self, response: str, example: Example) -> float:
        reply = self._complete(judge_messages(response, example))
        verdict = parse_verdict(reply)
        if verdict is None:
            self.failures += 1
            log.warning("LLM judge reply for %r is neither yes nor no: %r (graded as wrong)", example.id, reply[:80])
            return 0.0
        return verdict

    def _complete(self, messages: list[dict[str, str]]) -> str:
        # 429 / 5xx / timeouts are retried within the deadline (certa.http); failures are one CertaError line.
        return self.client.chat(self.model, messages, temperature=0, max_tokens=5)

    def close(self) -> None:
        self.client.close()


def judge_messages(response: str, example: Example) -> list[dict[str, str]]:
    """The chat messages the judge sees for one (response, example) pair."""
    question = example.question
    if example.choices:
        question += "\n" + format_choices(example.choices)
    user = (f"Question: {question}\nCorrect answer(s): {' | '.join(example.answers)}\n"
            f"Proposed answer: {response.strip()}\n\nIs the proposed answer correct?")
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]
