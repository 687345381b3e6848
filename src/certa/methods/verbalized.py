"""Verbalized confidence: the model states how sure it is, as ``Confidence: N``.

Two read-outs share the helpers here. For a model certa can see inside, the
prompt ends right before the confidence token and the confidence is the
expected level under the next-token distribution restricted to the level
tokens (continuous, nothing to parse). For text a model wrote — a black-box
API, a tuned model's free generation — :func:`parse_confidence` reads the
number, and an unreadable answer is a counted failure (``None``), never a
silent default.

The level tokens (SPEC §2): ``T_100`` = "0".."100" with score i/100 when each
is a single token after ``Confidence:``, else ``T_9`` = "0".."9" with score
i/9. SmolLM2, like many tokenizers, splits numbers into single digits, so it
uses ``T_9``; there ``"Confidence: 7"`` is ``Conf|idence|:|Ġ|7``, so the
prompt ends with the space and the next token is the bare digit. Tokenizers
whose digits carry the space (``"Ġ7"``) get a prompt ending at the colon and
the space-prefixed tokens instead; :func:`confidence_tokens` picks whichever
form the tokenizer really produces.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CertaError, InputError
from ..prompts import question_prompt
from ..records import Record
from ..scoring import continuation_token_ids, restricted_next_token_probs
from .base import ModelReadoutMethod, Needs, register

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..models import LoadedModel

CONFIDENCE_CUE = "\nConfidence:"
"""Appended after the answer (plus ``ConfidenceTokens.lead``); the next token is the level."""

__all__ = [
    "CONFIDENCE_CUE",
    "ConfidenceTokens",
    "Verbalized",
    "confidence_instruction",
    "confidence_tokens",
    "expected_confidence",
    "format_confidence",
    "parse_confidence",
    "verbal_prompt",
]


@dataclass
class ConfidenceTokens:
    """The confidence levels a model can emit as one token each.

    ``token_ids[i]`` is the token for level ``labels[i]`` (e.g. ``"7"``) and
    ``scores[i]`` its confidence in [0, 1]. ``lead`` is what follows
    ``"\\nConfidence:"`` in the prompt: ``" "`` when the level tokens are bare
    digits (the space is its own token), ``""`` when they carry the space.
    """

    token_ids: list[int]
    scores: np.ndarray
    labels: list[str]
    lead: str = " "

    @property
    def scale(self) -> int:
        """The top level: 100 for ``T_100``, 9 for ``T_9``."""
        return len(self.labels) - 1

    @property
    def cue(self) -> str:
        """The exact text to append after an answer so that the next token is the level."""
        return CONFIDENCE_CUE + self.lead


def confidence_tokens(tokenizer: PreTrainedTokenizerBase) -> ConfidenceTokens:
    """Pick ``T_100`` when "0".."100" are single tokens after ``Confidence:``, else ``T_9`` digits.

    Raises:
        CertaError: neither scale is a set of single tokens in this tokenizer.
    """
    for top in (100, 9):
        labels = [str(i) for i in range(top + 1)]
        # Bare digits after a separate space token (SmolLM2, Llama 3, Qwen) come first; then
        # tokenizers whose digit tokens carry their leading space (GPT-2 style).
        for lead, forms in ((" ", labels), ("", [" " + label for label in labels])):
            ids = continuation_token_ids(tokenizer, CONFIDENCE_CUE + lead, forms)
            if ids is not None:
                scores = np.arange(top + 1, dtype=float) / top
                return ConfidenceTokens(token_ids=ids, scores=scores, labels=labels, lead=lead)
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    raise CertaError(
        f"tokenizer {name!r}: neither '0'..'100' nor '0'..'9' is a single token after 'Confidence:'; "
        "verbalized confidence cannot be read from its next-token distribution"
    )


def confidence_instruction(tokens: ConfidenceTokens) -> str:
    """The sentence added to the user message asking for a confidence on the tokens' scale."""
    return (
        f"After your answer, write 'Confidence: ' and a whole number from 0 to {tokens.scale} for how "
        f"likely your answer is correct ({tokens.scale} = surely correct, 0 = surely wrong)."
    )


def verbal_prompt(
    lm: LoadedModel, question_prompt_text: str, response: str, tokens: ConfidenceTokens | None = None
) -> str:
    """The chat text whose next token is the confidence level for ``response``.

    The user turn asks for an answer and a confidence; the assistant turn is
    the answer followed by ``"\\nConfidence: "`` (see :class:`ConfidenceTokens`
    for where the space goes). Pass ``tokens`` when building many prompts.
    """
    tokens = tokens or confidence_tokens(lm.tokenizer)
    user = f"{question_prompt_text}\n{confidence_instruction(tokens)}"
    return lm.chat_prompt(user) + response.strip() + tokens.cue


def expected_confidence(probs: np.ndarray, tokens: ConfidenceTokens) -> np.ndarray:
    """Σ_i p_i s_i per row: the mean level under the restricted next-token distribution."""
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] != len(tokens.scores):
        raise InputError(f"probs has shape {probs.shape}; expected [N, {len(tokens.scores)}] (one column per level)")
    return probs @ tokens.scores


# --- parsing generated text ------------------------------------------------------------------

_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"
_TAIL = r"(\s*%|\s*/\s*\d+(?:\.\d+)?)?"
# Each optional part takes its own leading whitespace, so no two ``\s*`` compete for the same spaces:
# adjacent ones made "confidence" + many spaces backtrack in cubic time (800 spaces: 12 s).
_KEYWORD = (r"confidence(?:\s+(?:level|score))?(?:\s*(?:is\b|of\b|[:=]))?"
            r"(?:\s*(?:about|around|roughly|approximately|~))?\s*")
_AFTER_KEYWORD = re.compile(_KEYWORD + _NUMBER + _TAIL, re.IGNORECASE)
_BARE = re.compile(r"\s*" + _NUMBER + _TAIL + r"\s*(?:\.\s*)?")
_PERCENT = re.compile(r"(?<!\d)" + _NUMBER + r"\s*%")  # starts only where a number starts: linear, not quadratic
WORD_LEVELS: dict[str, float] = {"very low": 0.1, "low": 0.25, "medium": 0.5, "moderate": 0.5,
                                 "high": 0.75, "very high": 0.9}
"""Confidence for coarse verbal levels; certa's choice (the papers ask for numbers)."""
_WORDS = "|".join(sorted((w.replace(" ", r"\s+") for w in WORD_LEVELS), key=len, reverse=True))
_WORD_AFTER_KEYWORD = re.compile(_KEYWORD + rf"({_WORDS})\b", re.IGNORECASE)
_BARE_WORD = re.compile(rf"\s*({_WORDS})\s*(?:\.\s*)?", re.IGNORECASE)


def parse_confidence(text: str, *, scale: int | None = None) -> float | None:
    """Read a confidence in [0, 1] from generated text, or None when there is none to read.

    Accepted, in order of precedence: a number after the word "confidence"
    (the last such mention), a text that is only a number, a percentage
    anywhere, a level word (``WORD_LEVELS``). Numbers mean: ``80%`` → 0.8;
    ``8/10`` → 0.8; a decimal up to 1 (``0.8``) → itself; any other number →
    number / ``scale`` when the scale is given (``scale=9``: ``"7"`` → 7/9),
    else a percentage (``"80"`` → 0.8). Placeholders (``"X"``), values outside
    [0, 1] and text without a confidence give None — callers count those as
    parse failures.
    """
    if not text:
        return None
    if scale is not None and scale < 1:
        raise InputError(f"scale must be a positive integer, got {scale}")
    matches = list(_AFTER_KEYWORD.finditer(text))
    if matches:
        return _to_unit(*matches[-1].groups(), scale)
    bare = _BARE.fullmatch(text)
    if bare:
        return _to_unit(*bare.groups(), scale)
    percents = _PERCENT.findall(text)
    if percents:
        return _to_unit(percents[-1], "%", scale)
    words = [m.group(1) for m in _WORD_AFTER_KEYWORD.finditer(text)]
    bare_word = _BARE_WORD.fullmatch(text)
    if bare_word:
        words.append(bare_word.group(1))
    if words:
        return WORD_LEVELS[" ".join(words[-1].lower().split())]
    return None


def _to_unit(number: str, tail: str | None, scale: int | None) -> float | None:
    """Map a parsed number and its suffix (``%``, ``/10`` or nothing) to [0, 1], or None if outside."""
    value = float(number)
    tail = (tail or "").strip()
    if tail == "%":
        unit = value / 100
    elif tail.startswith("/"):
        denominator = float(tail[1:])
        unit = value / denominator if denominator > 0 else math.nan
    elif "." in number and value <= 1:
        unit = value
    else:
        unit = value / (scale if scale is not None else 100)
    return unit if 0.0 <= unit <= 1.0 else None


def format_confidence(confidence: float, *, scale: int = 100) -> str:
    """``"Confidence: 80%"`` (``scale=100``) or ``"Confidence: 7"`` on a coarse scale; parses back."""
    if not 0.0 <= confidence <= 1.0:  # also rejects NaN
        raise InputError(f"confidence must be in [0, 1], got {confidence!r}")
    if scale < 1:
        raise InputError(f"scale must be a positive integer, got {scale}")
    level = round(confidence * scale)
    return f"Confidence: {level}%" if scale == 100 else f"Confidence: {level}"


# --- the method ------------------------------------------------------------------------------


@register("verbalized")
class Verbalized(ModelReadoutMethod):
    """Asks the untrained model for 'Confidence: N' after its answer; reads the expected level.

    The answer is the record's own response; the confidence is Σ p_i s_i over
    the level tokens at the position after ``"Confidence: "``, read with any
    trained adapter switched off so this stays the base-model baseline.
    """

    needs = Needs.MODEL
    cost = "1 forward pass over prompt+answer"

    def score(self, records: Sequence[Record]) -> np.ndarray:
        assert self.model is not None  # guaranteed by Needs.MODEL
        lm = self.model
        tokens = confidence_tokens(lm.tokenizer)
        texts = [verbal_prompt(lm, question_prompt(r.example()), r.response, tokens) for r in records]
        with lm.adapter_disabled():
            probs = restricted_next_token_probs(
                lm, texts, tokens.token_ids, batch_size=self.batch_size, progress=self.progress
            )
        return expected_confidence(probs, tokens)
