"""Graders: is a response correct for its example? And ``grade``, which joins and grades.

A grader is any callable ``(response, example) -> float`` in [0, 1]. Registered
graders (``get_grader(name)``):

==============  ==============================================================
``numeric``     final number (GSM8K convention) equals a gold number
``short``       a gold alias occurs in the response as whole words; aliases that
                the question itself contains are ignored (else echoing the
                question would score), falling back to exact match
``exact_match`` the normalised short answer equals a gold alias
``f1``          best token F1 between the short answer and a gold alias (partial credit)
``choice``      the one option the response picks is the gold option
``contrast_f1`` token F1 closer to a correct reference than to every incorrect one
                (``meta.incorrect_answers``; TruthfulQA's similarity-based accuracy)
``llm_judge``   ask a model behind an OpenAI-compatible endpoint (``certa.data.judge``)
==============  ==============================================================

The default follows ``answer_type``; an example (or its dataset) names another
grader in ``meta["grader"]``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

from ..errors import CertaError, InputError
from ..prompts import choice_letters
from ..records import Example, Generation, Record
from ..registry import Registry
from .answers import canonical_number, extract_choice, extract_number, extract_short
from .judge import LLMJudge
from .text import contains_phrase, normalize_text, tokens

Grader = Callable[[str, Example], float]
"""``(response, example) -> correctness in [0, 1]``."""

DEFAULT_GRADERS = {"numeric": "numeric", "short": "short", "choice": "choice"}
NUMERIC_REL_TOL = 1e-6
NUMERIC_ABS_TOL = 1e-6

#: Grader name -> a factory taking the grader's options (none for most) and returning the grader.
GRADERS: Registry[Callable[..., Grader]] = Registry("grader")


def register_grader(name: str, *, factory: bool = False) -> Callable[[Any], Any]:
    """Register a grader under ``name``.

    Decorates either a grader function (``factory=False``) or a factory that takes
    options and returns a grader (``factory=True``, e.g. a class like ``LLMJudge``).
    """
    def decorate(obj: Any) -> Any:
        GRADERS.add(name, obj if factory else _without_options(name, obj))
        return obj
    return decorate


def _without_options(name: str, grader: Grader) -> Callable[..., Grader]:
    def make(**options: Any) -> Grader:
        if options:
            raise InputError(f"grader {name!r} takes no options, got {', '.join(sorted(options))}")
        return grader
    return make


def grader_names() -> list[str]:
    """Names accepted by ``get_grader``."""
    return GRADERS.names()


def get_grader(name: str, **options: Any) -> Grader:
    """The grader registered as ``name``, built with ``options`` (only ``llm_judge`` takes any)."""
    make = GRADERS.get(name)
    try:
        return make(**options)
    except TypeError as exc:
        raise InputError(f"grader {name!r}: {exc}") from None


@register_grader("numeric")
def numeric_grader(response: str, example: Example) -> float:
    """1 when the response's final number equals any gold number: whole numbers exactly, others to
    a float tolerance of 1e-6 (a relative tolerance would accept 1450001 for 1450000)."""
    predicted = extract_number(response)
    if predicted is None:
        return 0.0
    golds = [g for g in (canonical_number(a) for a in example.answers) if g is not None]
    return float(any(_same_number(predicted, g) for g in golds))


def _same_number(predicted: str, gold: str) -> bool:
    exact_p, exact_g = Decimal(predicted), Decimal(gold)
    if exact_p == exact_p.to_integral_value() and exact_g == exact_g.to_integral_value():
        return exact_p == exact_g
    return math.isclose(float(exact_p), float(exact_g), rel_tol=NUMERIC_REL_TOL, abs_tol=NUMERIC_ABS_TOL)


@register_grader("exact_match")
def exact_match_grader(response: str, example: Example) -> float:
    """1 when the normalised short answer (or the whole normalised response) equals a gold alias."""
    candidates = {extract_short(response), normalize_text(response)}
    return float(any(normalize_text(a) in candidates for a in example.answers if normalize_text(a)))


@register_grader("short")
def short_grader(response: str, example: Example) -> float:
    """1 when a gold alias occurs in the response as whole words (normalised).

    Aliases the question already contains are skipped: for "Which author also wrote as
    Mary Westmacott?" the alias "Mary Westmacott" would credit any echo of the question.
    When every alias is in the question, only an exact match counts.
    """
    usable = [a for a in example.answers if normalize_text(a) and not contains_phrase(example.question, a)]
    if not usable:
        return exact_match_grader(response, example)
    return float(any(contains_phrase(response, alias) for alias in usable))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 between two texts after normalisation (0 when either is empty)."""
    pred, ref = tokens(prediction), tokens(reference)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def _best_f1(prediction: str, references: Iterable[str]) -> float:
    return max((token_f1(prediction, r) for r in references), default=0.0)


@register_grader("f1")
def f1_grader(response: str, example: Example) -> float:
    """Best token F1 between the short answer and any gold alias: partial credit in [0, 1]."""
    return _best_f1(extract_short(response) or "", example.answers)


@register_grader("contrast_f1")
def contrast_f1_grader(response: str, example: Example) -> float:
    """1 when the response is closer (token F1) to some correct reference than to every
    incorrect one in ``meta["incorrect_answers"]``; without those, when F1 ≥ 0.5."""
    correct = _best_f1(response, example.answers)
    incorrect = example.meta.get("incorrect_answers") or []
    if not incorrect:
        return float(correct >= 0.5)
    return float(correct > _best_f1(response, incorrect))


def gold_letter(example: Example) -> str:
    """The gold option letter of a choice example: ``answers[0]`` when it is a letter, else the
    letter of the first answer that equals an option's text."""
    letters = choice_letters(len(example.choices or []))
    first = example.answers[0].strip().upper() if example.answers else ""
    if len(first) == 1 and first in letters:
        return first
    options = [normalize_text(c) for c in example.choices or []]
    for answer in example.answers:
        if normalize_text(answer) in options:
            return letters[options.index(normalize_text(answer))]
    raise InputError(f"example {example.id!r}: answers {example.answers!r} name none of its {len(options)} choices")


@register_grader("choice")
def choice_grader(response: str, example: Example) -> float:
    """1 when the response picks exactly one option and it is the gold one; naming several is wrong."""
    return float(extract_choice(response, example.choices) == gold_letter(example))


register_grader("llm_judge", factory=True)(LLMJudge)


def _grader_for(example: Example, cache: dict[str, Grader]) -> Grader:
    name = example.meta.get("grader") or DEFAULT_GRADERS[example.answer_type]
    if name not in cache:
        cache[name] = get_grader(name)
    return cache[name]


def _score(grader: Grader, response: str, example: Example) -> float:
    value = float(grader(response, example))
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise CertaError(f"grader returned {value!r} for example {example.id!r}; graders must return a value in [0, 1]")
    return value


def index_examples(examples: Iterable[Example]) -> dict[str, Example]:
    """Examples by id; a repeated id is an error (a join by id would be ambiguous)."""
    by_id: dict[str, Example] = {}
    for ex in examples:
        if ex.id in by_id:
            raise InputError(f"example id {ex.id!r} appears twice; ids must be unique")
        by_id[ex.id] = ex
    return by_id


def grade(generations: Sequence[Generation], examples: Iterable[Example],
          grader: str | Grader | None = None) -> list[Record]:
    """Join generations to their examples by id and grade each ``response`` and each of ``samples``.

    ``grader``: a registered name or a callable; by default each example's
    ``meta["grader"]`` or the default for its ``answer_type``. Examples without a
    generation are simply not graded; a generation without an example is an error.
    """
    by_id = index_examples(examples)
    cache: dict[str, Grader] = {}
    fixed = get_grader(grader) if isinstance(grader, str) else grader
    records = []
    for gen in generations:
        example = by_id.get(gen.id)
        if example is None:
            raise InputError(f"generation {gen.id!r} has no example with that id (graded against the wrong dataset?)")
        g = fixed or _grader_for(example, cache)
        records.append(Record.from_generation(
            gen, example, _score(g, gen.response, example), [_score(g, s, example) for s in gen.samples]))
    return records


def check_gold(example: Example, where: str) -> None:
    """Reject gold answers the graders could never match (empty, non-numeric, naming no option)."""
    if not example.answers:
        raise InputError(f"{where}: field 'answers' is empty")
    if example.answer_type == "numeric" and canonical_number(example.answers[0]) is None:
        raise InputError(f"{where}: answer {example.answers[0]!r} is not a number (answer_type 'numeric')")
    if example.answer_type == "choice":
        try:
            gold_letter(example)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
