"""Verbalized confidence: the model states how sure it is, as ``Confidence: N``.

Two read-outs share the helpers here. For a model certa can see inside, a
short follow-up turn after the answer asks for a confidence and the
assistant's reply opens with ``Confidence:``; the confidence is the expected
level under the next-token distribution restricted to the level tokens
(continuous, nothing to parse). The follow-up is a *suffix* of prompt + answer,
so it costs only its own tokens over the answer's KV cache
(:mod:`certa.methods.answer_cache`) and ConfTuner trains and reads exactly the
same suffix. For text a model wrote — a black-box API, a tuned model's free
generation — :func:`parse_confidence` reads the number, and an unreadable
answer is a counted failure (``None``), never a silent default.

The level tokens (ConfTuner, arXiv 2508.18847): ``T_100`` = "0".."100" with score i/100 when each
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ...errors import CertaError, InputError
from ...models import end_token_ids, render_chat
from ...models.remote import RemoteModel
from ...records import Record
from ..answer_cache import AnswerCache, answer_ids, readout_logits
from ..base import ModelReadoutMethod, Needs, register
from ..readouts import continuation_token_ids, restricted_log_softmax
from ..shared_encodings import encode_or_reuse
from .remote import remote_verbalized

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ...models import LoadedModel

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
    "level_probabilities",
    "parse_confidence",
    "verbal_inputs",
    "verbal_prompt",
    "verbal_suffix",
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


def confidence_tokens(tokenizer: PreTrainedTokenizerBase, scale: int | None = None) -> ConfidenceTokens:
    """Pick ``T_100`` when "0".."100" are single tokens after ``Confidence:``, else ``T_9`` digits.

    ``scale`` (100 or 9) asks for one of them only.

    Raises:
        CertaError: neither scale (or the requested one) is a set of single tokens in this tokenizer.
    """
    if scale not in (None, 100, 9):
        raise InputError(f"confidence scale must be 100 or 9, got {scale!r}")
    for top in (100, 9) if scale is None else (scale,):
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
    """The follow-up request for a confidence on the tokens' scale."""
    return (
        f"How likely is your answer to be correct? Reply with 'Confidence: ' and a whole number from 0 to "
        f"{tokens.scale} ({tokens.scale} = surely correct, 0 = surely wrong)."
    )


_ANSWER_MARK = "\x00certa-answer\x00"


Style = Literal["follow_up", "cue"]
"""How the confidence is asked for: ``follow_up``, a follow-up turn with the request (what an untrained
model needs, ~40 tokens); ``cue``, only ``Confidence:`` after the answer (a tuned model needs no request;
a few tokens, so the read-out costs almost nothing)."""


@dataclass(frozen=True)
class VerbalSuffix:
    """The text that follows an answer and ends right before the confidence level.

    ``follow_up``: a chat model gets a follow-up turn (the request, then an
    assistant turn opening with ``Confidence:``); a model without a chat template
    gets the request and the cue on the next lines. ``cue``: the cue alone.
    ``after_end`` follows an answer that ended its turn; ``after_cut`` one cut at
    the length limit (a follow-up closes the turn first).
    """

    after_end: str
    after_cut: str


def verbal_suffix(lm: LoadedModel, tokens: ConfidenceTokens, style: Style = "follow_up") -> VerbalSuffix:
    """The verbal read-out's suffix for ``lm``'s prompt format (see :class:`VerbalSuffix`)."""
    if style == "cue":
        return VerbalSuffix(after_end=tokens.cue, after_cut=tokens.cue)
    if style != "follow_up":
        raise InputError(f"verbal read-out style is {style!r}; expected 'follow_up' or 'cue'")
    instruction = confidence_instruction(tokens)
    cue = tokens.cue.lstrip("\n")
    if not getattr(lm.tokenizer, "chat_template", None):
        # Few-shot answers end with their newline (the stop string), which stays in the answer.
        text = f"{instruction}\n{cue}"
        return VerbalSuffix(after_end=text, after_cut="\n" + text)
    rendered = render_chat(lm.tokenizer, [("user", "?"), ("assistant", _ANSWER_MARK), ("user", instruction)])
    after = rendered.split(_ANSWER_MARK, 1)[1] + cue
    end_text = lm.tokenizer.decode(end_token_ids(lm)[-1:])
    after_end = after[len(end_text):] if end_text and after.startswith(end_text) else after
    return VerbalSuffix(after_end=after_end, after_cut=after)


def verbal_suffix_ids(lm: LoadedModel, responses: Sequence[Sequence[int]], tokens: ConfidenceTokens,
                      style: Style = "follow_up") -> list[list[int]]:
    """Per answer (its token ids), the suffix ids after which the next token is the confidence level."""
    suffix = verbal_suffix(lm, tokens, style)
    ends = set(end_token_ids(lm))
    encode = {text: lm.tokenizer(text, add_special_tokens=False)["input_ids"]
              for text in (suffix.after_end, suffix.after_cut)}
    return [list(encode[suffix.after_end if ids and ids[-1] in ends else suffix.after_cut]) for ids in responses]


def verbal_inputs(lm: LoadedModel, records: Sequence[Record], tokens: ConfidenceTokens, style: Style = "follow_up"
                  ) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt ids, answer ids, suffix ids) of each record's verbal read-out."""
    pairs = [answer_ids(lm, r) for r in records]
    suffixes = verbal_suffix_ids(lm, [response for _, response in pairs], tokens, style)
    return [(p, r, s) for (p, r), s in zip(pairs, suffixes, strict=True)]


def verbal_prompt(lm: LoadedModel, record: Record, tokens: ConfidenceTokens | None = None,
                  style: Style = "follow_up") -> str:
    """The full text whose next token is the confidence level for ``record``'s answer (for reading and tests)."""
    tokens = tokens or confidence_tokens(lm.tokenizer)
    ((prompt, response, suffix),) = verbal_inputs(lm, [record], tokens, style)
    return lm.tokenizer.decode(prompt + response + suffix)


def level_probabilities(lm: LoadedModel, records: Sequence[Record], tokens: ConfidenceTokens, *,
                        adapter_enabled: bool, adapter_for_answer: bool = False, style: Style = "follow_up",
                        batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """The restricted softmax over the level tokens after each record's verbal suffix, ``[N, levels]``.

    Prompt and answer are encoded once with the base model (or with the adapter,
    ``adapter_for_answer``, for a model trained over its answers), or taken from
    the encodings a scoring pass shares (:mod:`certa.methods.shared_encodings`);
    the suffix runs with ``lm``'s adapter when ``adapter_enabled``. Batches
    group answers of similar length; rows come back in input order.
    """
    inputs = verbal_inputs(lm, records, tokens, style)
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i][0]) + len(inputs[i][1]))
    out = np.empty((len(inputs), len(tokens.token_ids)))
    for start in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch", disable=not progress):
        rows = order[start:start + batch_size]
        cache = encode_or_reuse(lm, [inputs[i][:2] for i in rows], adapter_enabled=adapter_for_answer,
                                adapter_name=lm.adapter)
        out[rows] = levels_after(lm, cache, [inputs[i][2] for i in rows], tokens, adapter_enabled=adapter_enabled)
    return out


def levels_after(lm: LoadedModel, cache: AnswerCache, suffixes: Sequence[Sequence[int]], tokens: ConfidenceTokens,
                 *, adapter_enabled: bool) -> np.ndarray:
    """The restricted softmax over the level tokens after each row's suffix over ``cache``, ``[B, levels]``."""
    with torch.no_grad():  # the read-out leaves the cache as it found it
        logits = readout_logits(lm.model, cache, suffixes, adapter_enabled=adapter_enabled, adapter_name=lm.adapter)
    return restricted_log_softmax(logits, tokens.token_ids).exp().float().cpu().numpy()


class VerbalHook:
    """Generation hook: the verbal read-out over each finished answer's KV cache, with no re-encoding.

    The suffix after the answer (``style``) runs over the cache generation left
    behind (:class:`certa.decoding.FinishedBatch`) — the same computation as
    :func:`level_probabilities` after :func:`encode_answers`, so both read the
    same number — and the expected level Σ p_i s_i is returned, through
    ``calibrate`` when given. ConfTuner's tuned read-out uses it with the adapter
    on the suffix.
    """

    def __init__(self, name: str, tokens: ConfidenceTokens, *, style: Style, adapter_enabled: bool,
                 calibrate: Callable[[np.ndarray], np.ndarray] | None = None):
        self.name = name
        self.tokens = tokens
        self.style = style
        self.adapter_enabled = adapter_enabled
        self.calibrate = calibrate

    def on_finished(self, lm: LoadedModel, batch: Any) -> list[float]:
        suffixes = verbal_suffix_ids(lm, [row.token_ids for row in batch.rows], self.tokens, self.style)
        probs = levels_after(lm, batch.cache, suffixes, self.tokens, adapter_enabled=self.adapter_enabled)
        values = expected_confidence(probs, self.tokens)
        return (self.calibrate(values) if self.calibrate else values).tolist()


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

    The answer is the record's own response; a follow-up turn asks for a
    confidence and the assistant's reply opens with ``Confidence:``; the
    confidence is Σ p_i s_i over the level tokens there, read with every
    trained adapter off, so this stays the base-model baseline.
    """

    needs = Needs.MODEL
    cost = "a short suffix step over the answer's KV cache (the follow-up request, ~40 tokens)"
    unreadable: int | None = None

    def diagnostics(self) -> dict:
        return {} if self.unreadable is None else {"unreadable": self.unreadable}

    def score(self, records: Sequence[Record]) -> np.ndarray:
        assert self.model is not None  # guaranteed by Needs.MODEL
        if isinstance(self.model, RemoteModel):  # a model behind a server: parse the confidence it writes
            scores, self.unreadable = remote_verbalized(self.model, records, parse_confidence)
            return scores
        tokens = confidence_tokens(self.model.tokenizer)
        probs = level_probabilities(self.model, records, tokens, adapter_enabled=False,
                                    batch_size=self.batch_size, progress=self.progress)
        return expected_confidence(probs, tokens)
