"""Pulling the final answer out of a free-form response.

Small models explain before they answer ("23 + 45 means ... so the sum is
68."), echo the question, or name several options. These extractors decide
what the response *commits to*; the graders compare that with the gold answer,
and majority voting and consistency compare it across samples.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from ..prompts import choice_letters
from .text import contains_phrase, normalize_text

# A number not glued to a word or a decimal point before it: "$18", "-3", "1,234.5", "= 7".
# Thousands groups only count as one number when they are well formed ("1,000", not "3,4").
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
# Explicit final-answer formats that win over "the last number".
_FINAL_MARKER = re.compile(r"####|\\boxed\{")
# "The answer is 68" counts only when the number is not the start of a calculation ("Answer: 23 + 45 = 68").
_ANSWER_IS_NUMBER = re.compile(
    r"\banswer\s*(?:is|=|:)\s*[$*\s]*(?P<num>" + _NUMBER.pattern + r")(?![\d,.]*\s*[-+*/×=^])", re.IGNORECASE)
_MINUS_SIGNS = str.maketrans({"−": "-", "–": "-"})
_STATED_CONFIDENCE = re.compile(r"\n[\W_]*confidence\W*\d+(?:\.\d+)?\s*%?[\W_]*\Z", re.IGNORECASE)


def canonical_number(text: str) -> str | None:
    """``"1,000"`` → ``"1000"``, ``"18.0"`` → ``"18"``, ``"-0.50"`` → ``"-0.5"``; None if not a number."""
    try:
        value = Decimal(text.replace(",", "").strip())
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _without_stated_confidence(text: str) -> str:
    """The response without a last line stating a confidence ("42\\nConfidence: 80%" answers 42, not 80)."""
    return _STATED_CONFIDENCE.sub("", text)


def extract_number(text: str) -> str | None:
    """The final number a response commits to, in canonical form (GSM8K convention).

    Priority: the first number after the last ``####`` or ``\\boxed{``; a number right
    after "the answer is" / "Answer:"; otherwise the last number in the text. A last line
    stating a confidence ("Confidence: 80%") is not part of the answer.
    """
    text = _without_stated_confidence(text).translate(_MINUS_SIGNS)
    markers = list(_FINAL_MARKER.finditer(text))
    if markers:
        found = _NUMBER.search(text, markers[-1].end())
        if found:
            return canonical_number(found.group())
    stated = list(_ANSWER_IS_NUMBER.finditer(text))
    if stated:
        return canonical_number(stated[-1].group("num"))
    numbers = _NUMBER.findall(text)
    return canonical_number(numbers[-1]) if numbers else None


@lru_cache(maxsize=32)
def _letter_tiers(letters: str) -> tuple[re.Pattern[str], ...]:
    """Ways of naming an option by letter, most explicit first (see ``extract_choice``)."""
    cls = f"[{letters}]"
    # A letter the answer names, then any it lists beside it ("B or C", "B, C"): several are ambiguous.
    listed = rf"[(\[*_]*({cls})\b(?!['’])(?:[)\]*_]*\s*(?:,|/|\bor\b(?:\s+maybe)?|\band\b)\s*[(\[*_]*({cls})\b)?"
    return (
        # the whole response, or its first line, is a letter: "B", "(b)", "B.", "B\nLondon is ..."
        re.compile(rf"^\W*({cls})\W*$", re.IGNORECASE),
        re.compile(rf"\A\s*\W*({cls})[^\w\n]*\n", re.IGNORECASE),
        # "Answer: B", "The answer is (B)", "correct answer is option B", "Answer: **b**" (a lower-case
        # letter only where it cannot be the article: "the answer is a city" names no option)
        re.compile(rf"(?i:\banswer\s*(?:is|:)?\s*(?:option\s*|choice\s*)?){listed}"),
        re.compile(rf"(?i:\banswer\s*(?:is|:)?\s*(?:option\s*|choice\s*)?[(\[*_]*)({cls.lower()})(?=[)\].:*_]|\s*$)"),
        # starts with a lettered option ("B. Paris", "B) Paris", "B: Paris"), "B is correct", or "(B)" /
        # "option (is) B" anywhere; one tier, so that "(A) or (B)" is ambiguous rather than A
        re.compile(rf"^\W*?[(\[]?({cls})[).:\]]|^\W*({cls})\s+is\s+(?:the\s+)?(?:correct|right)\b|\(({cls})\)"
                   rf"|(?i:\b(?:option|choice)\s+(?:is\s+)?)({cls})\b"),
    )


def _unique(found: set[str]) -> tuple[bool, str | None]:
    """(decided, letter): one candidate decides; several make the answer ambiguous (None)."""
    if not found:
        return False, None
    return True, (found.pop() if len(found) == 1 else None)


def extract_choice(text: str, choices: list[str] | None) -> str | None:
    """The option letter a response picks, or None when it picks none or several.

    Tiers, first decisive one wins: a bare letter; "answer is B"; a leading "B." or "(B)"
    anywhere; a response that starts with an option's text; the one option whose text it
    mentions. Within a tier, naming two different options is ambiguous and yields None.
    """
    letters = choice_letters(len(choices)) if choices else "ABCD"
    text = _without_stated_confidence(text)
    for pattern in _letter_tiers(letters):
        found = {g.upper() for m in pattern.finditer(text) for g in m.groups() if g}
        decided, letter = _unique(found)
        if decided:
            return letter
    if not choices:
        return None
    return _choice_by_text(text, choices, letters)


def _choice_by_text(text: str, choices: list[str], letters: str) -> str | None:
    numbers = [canonical_number(choice) for choice in choices]
    if all(number is not None for number in numbers):
        # Numeric options: one option's number named, or a calculation's result ("2 × 12 = 24" picks 24,
        # not the leading 2); "Either 4 or 6" names two and picks none.
        named = {canonical_number(n) for n in _NUMBER.findall(_without_stated_confidence(text))} & set(numbers)
        if len(named) > 1 and "=" in text:
            named = {extract_number(text)}
        return _unique({letter for letter, number in zip(letters, numbers, strict=True) if number in named})[1]
    response = normalize_text(text)
    options = [(letter, normalize_text(choice)) for letter, choice in zip(letters, choices, strict=True)]
    options = [(letter, option) for letter, option in options if option]
    leading = [(len(option), letter) for letter, option in options
               if f"{response} ".startswith(f"{option} ")]
    if leading:
        return max(leading)[1]
    mentioned = [(letter, option) for letter, option in options if contains_phrase(response, option)]
    # "Yes, always" mentions both "yes" and "yes always": only the longest mention counts.
    maximal = {letter for letter, option in mentioned
               if not any(option != other and contains_phrase(other, option) for _, other in mentioned)}
    return _unique(maximal)[1]


_ANSWER_PREFIX = re.compile(r"^.*\banswer\s*(?:is|:)\s*", re.IGNORECASE | re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
# "The capital of France is Paris" → "Paris"; "Paris is the capital of France" stays whole.
_LEAD_IN = re.compile(r"^(?:the|it|this|that)\b.*?\b(?:is|are|was|were)\s+(?P<rest>.+)$", re.IGNORECASE)


def extract_short(text: str) -> str | None:
    """The normalised short answer: text after the last "answer is", first line, first
    sentence, without a "The X is" lead-in. None when nothing is left."""
    text = _ANSWER_PREFIX.sub("", text.strip())
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    sentence = _SENTENCE_END.split(line.strip(), maxsplit=1)[0]
    lead_in = _LEAD_IN.match(sentence)
    if lead_in:
        sentence = lead_in.group("rest")
    return normalize_text(sentence) or None


def extract_answer(text: str, answer_type: str, choices: list[str] | None = None) -> str | None:
    """The normalised final answer in ``text``: a canonical number string (numeric), an option
    letter (choice) or normalised short text (short); None when there is none.

    Two responses that commit to the same answer extract to the same string, which is what
    majority voting and consistency-based confidence compare.
    """
    if answer_type == "numeric":
        return extract_number(text)
    if answer_type == "choice":
        return extract_choice(text, choices)
    if answer_type == "short":
        return extract_short(text)
    raise ValueError(f"unknown answer_type {answer_type!r}; expected numeric, short or choice")
