"""Text normalisation shared by the graders and the generated datasets."""

from __future__ import annotations

import re
import unicodedata

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
# A possessive 's goes ("Denmark's capital" mentions "Denmark"); other apostrophes join
# ("N'Djamena" == "Ndjamena"); every other punctuation mark separates words.
_POSSESSIVE = re.compile(r"['’]s\b")
_APOSTROPHES = re.compile(r"['’ʻ`]")
_NON_WORD = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")
# Dotted initials are one word: "U.S.A." is "usa", not "u s" and the article "a"; "J. R. R." is "jrr".
_INITIALS = re.compile(r"\b(?:[^\W\d_]\.[ \t]?){2,}")


def normalize_text(text: str) -> str:
    """Lower-case, strip accents, possessives and punctuation, drop articles, collapse whitespace.

    ``"The Bogotá, D.C."`` → ``"bogota dc"``: the SQuAD-style normalisation, plus accent folding so
    that answers typed without diacritics still match, and dotted initials read as one word.
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = _APOSTROPHES.sub("", _POSSESSIVE.sub("", text))
    text = _INITIALS.sub(lambda m: m.group().replace(".", "").replace(" ", "").replace("\t", "") + " ", text)
    text = _NON_WORD.sub(" ", text)
    text = _ARTICLES.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def contains_phrase(text: str, phrase: str) -> bool:
    """Whether normalised ``phrase`` occurs in normalised ``text`` as whole words.

    An empty phrase (for example an alias that was only an article) never matches.
    """
    needle = normalize_text(phrase)
    return bool(needle) and f" {needle} " in f" {normalize_text(text)} "


def tokens(text: str) -> list[str]:
    """Normalised word tokens, for token-level F1."""
    return normalize_text(text).split()
