"""The user messages built for each answer type."""

from __future__ import annotations

import pytest

from certa.data import extract_answer, load_dataset
from certa.prompts import SYSTEM_PROMPT, choice_letters, format_choices, question_prompt
from certa.records import Example


def test_system_prompt_is_short_and_asks_for_brevity():
    assert "brief" in SYSTEM_PROMPT.lower() and len(SYSTEM_PROMPT) < 100


def test_numeric_prompt_asks_for_just_the_number():
    ex = Example(id="a", question="  What is 2 + 3? ", answers=["5"], answer_type="numeric")
    assert question_prompt(ex) == "What is 2 + 3?\nReply with just the final number."


def test_short_prompt_asks_for_a_short_answer():
    ex = Example(id="b", question="What is the capital of France?", answers=["Paris"])
    assert question_prompt(ex) == "What is the capital of France?\nAnswer in a few words."


def test_choice_prompt_letters_the_options():
    ex = Example(id="c", question="Is ice cold?", answers=["A", "Yes"], answer_type="choice",
                 choices=["Yes", "No", "Sometimes"])
    assert question_prompt(ex) == ("Is ice cold?\n\nA. Yes\nB. No\nC. Sometimes\n\n"
                                   "Reply with just the letter of the correct option.")


def test_letters_in_the_prompt_are_the_ones_the_grader_reads():
    ex = load_dataset("mmlu", split="all")[0]
    prompt = question_prompt(ex)
    for letter, option in zip(choice_letters(len(ex.choices)), ex.choices, strict=True):
        assert f"\n{letter}. {option}" in prompt
        assert extract_answer(f"{letter}. {option}", "choice", ex.choices) == letter


def test_choice_letters_limits():
    assert choice_letters(4) == "ABCD"
    assert format_choices(["x", "y"]) == "A. x\nB. y"
    with pytest.raises(ValueError, match="at most 26 choices"):
        choice_letters(27)


@pytest.mark.parametrize("name", ["arithmetic", "capitals", "gsm8k", "triviaqa", "truthfulqa", "mmlu", "strategyqa"])
def test_every_dataset_builds_prompts(name):
    for ex in load_dataset(name, split="test", limit=5):
        prompt = question_prompt(ex)
        assert prompt.startswith(ex.question.strip()) and prompt.count("\n") >= 1
        assert "rationale" not in prompt and ex.meta.get("rationale", "\x00") not in prompt
