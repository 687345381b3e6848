"""The prompts every stage shows the model.

Generation, confidence read-outs, training and the server all build the user
message through :func:`question_prompt`, so an answer cached by one stage is
scored against exactly the text that produced it. The wording is short on
purpose: small chat models ramble, and an answer cut off by the token limit
grades as wrong for reasons that have nothing to do with what the model knows.
"""

from __future__ import annotations

import string

from .records import Example

SYSTEM_PROMPT = "You are a helpful assistant. Answer the question briefly."
"""Always passed explicitly: some chat templates (SmolLM2's among them) insert a long default
system prompt when none is given."""

_INSTRUCTIONS = {
    "numeric": "Reply with just the final number.",
    "short": "Answer in a few words.",
    "choice": "Reply with just the letter of the correct option.",
}


def choice_letters(n: int) -> str:
    """The option letters for ``n`` choices: ``"ABCD"`` for four."""
    if n > len(string.ascii_uppercase):
        raise ValueError(f"at most {len(string.ascii_uppercase)} choices are supported, got {n}")
    return string.ascii_uppercase[:n]


def format_choices(choices: list[str]) -> str:
    """Options one per line as ``"A. text"``."""
    return "\n".join(f"{letter}. {text}" for letter, text in zip(choice_letters(len(choices)), choices, strict=True))


def question_prompt(example: Example) -> str:
    """The user message for ``example``: the question, lettered options for multiple choice,
    and a one-line request for a brief final answer suited to its ``answer_type``."""
    question = example.question.strip()
    instruction = _INSTRUCTIONS[example.answer_type]
    if example.answer_type == "choice" and example.choices:
        return f"{question}\n\n{format_choices(example.choices)}\n\n{instruction}"
    return f"{question}\n{instruction}"
