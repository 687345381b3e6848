"""An optional grader that asks another model, behind any OpenAI-compatible endpoint.

Free-form answers (TruthfulQA, long explanations) defeat string matching; a
judge model reads the question, the reference answers and the response and
says yes or no. Never used unless asked for: ``get_grader("llm_judge",
base_url=..., model=...)``.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from ..errors import CertaError
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
    silently drops it. ``transport`` lets tests substitute ``httpx.MockTransport``.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *,
                 timeout: float = 60.0, transport: httpx.BaseTransport | None = None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
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
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": 5}
        try:
            resp = self.client.post("/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise CertaError(f"LLM judge at {self.base_url} unreachable: {exc}") from None
        if resp.status_code != 200:
            raise CertaError(f"LLM judge at {self.base_url} answered HTTP {resp.status_code}: {resp.text[:200]!r}")
        try:
            return str(resp.json()["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):
            raise CertaError(f"LLM judge at {self.base_url} sent a reply that is not a chat completion: "
                             f"{resp.text[:200]!r}") from None

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
