"""The prompts every stage shows the model.

Generation, confidence read-outs, training and the server all build the user
message through :func:`question_prompt`, so an answer cached by one stage is
scored against exactly the text that produced it. The wording is short on
purpose: small chat models ramble, and an answer cut off by the token limit
grades as wrong for reasons that have nothing to do with what the model knows.

Base models (no chat template) are prompted few-shot instead: :func:`few_shot_prompt`
puts three worked examples in a plain ``Question: ... / Answer: ...`` layout before the
question, and their answers end at :data:`ANSWER_STOP`.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from .records import AnswerType, Example

SYSTEM_PROMPT = "You are a helpful assistant. Answer the question briefly."
"""Always passed explicitly: some chat templates (SmolLM2's among them) insert a long default
system prompt when none is given."""

_INSTRUCTIONS = {
    "numeric": "Reply with just the final number.",
    "short": "Answer in a few words.",
    "choice": "Reply with just the letter of the correct option.",
}


ANSWER_STOP = "\n"
"""Where a few-shot answer ends: the examples answer on one line, so a base model that has
answered goes on to a new line (and, left alone, to a made-up next question)."""

# Worked examples for few-shot prompts, per answer_type: (question, choices or None, answer).
# Deliberately easy and unrelated to the bundled datasets, so they teach the format, not facts.
_SHOTS: dict[AnswerType, tuple[tuple[str, list[str] | None, str], ...]] = {
    "numeric": (
        # Answers far apart: with 15, 12, 13 Gemma-3-270M answered "14" to nearly everything.
        ("What is 6 + 9?", None, "15"),
        ("What is 7 × 8?", None, "56"),
        ("What is 100 - 38?", None, "62"),
    ),
    "short": (
        ("What colour is a clear daytime sky?", None, "Blue"),
        ("Which animal is known for saying 'moo'?", None, "A cow"),
        ("What is frozen water called?", None, "Ice"),
    ),
    "choice": (
        ("How many legs does a spider have?", ["Six", "Eight", "Ten", "Four"], "B"),
        ("Which of these is a fruit?", ["Carrot", "Potato", "Apple", "Onion"], "C"),
        ("What do bees make?", ["Honey", "Milk", "Silk", "Wax paper"], "A"),
    ),
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


def few_shot_prompt(user: str, system: str | None = None,
                    history: Sequence[tuple[str, str]] = ()) -> str:
    """A plain-text prompt for a model without a chat template.

    When ``user`` is one of certa's question prompts (it ends with an answer-type instruction),
    three worked examples of that answer type come first, each answering on a single line, so a
    base model continues the pattern with a one-line answer. Any other text gets no examples.
    ``history`` holds earlier (question, answer) exchanges of a dialogue, placed before ``user``.
    """
    answer_type = _answer_type_of(user)
    blocks = [f"Question: {_shot_prompt(question, choices, answer_type)}\nAnswer: {answer}"
              for question, choices, answer in (_SHOTS[answer_type] if answer_type else ())]
    blocks += [f"Question: {question}\nAnswer: {answer.strip()}".rstrip() for question, answer in history]
    blocks.append(f"Question: {user}\nAnswer:")
    prefix = f"{system}\n\n" if system else ""
    return prefix + "\n\n".join(blocks)


def _answer_type_of(user: str) -> AnswerType | None:
    text = user.rstrip()
    return next((kind for kind, instruction in _INSTRUCTIONS.items() if text.endswith(instruction)), None)


def _shot_prompt(question: str, choices: list[str] | None, answer_type: AnswerType) -> str:
    # Through question_prompt, so the examples carry exactly the instruction the real question does.
    example = Example(id="shot", question=question, answers=[], answer_type=answer_type, choices=choices)
    return question_prompt(example)
