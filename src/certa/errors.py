"""The small error hierarchy certa raises for problems a user can fix.

Every message is one line that names the file, line, field or name at fault and
says what to do. The CLI prints the message (exit code 2) instead of a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class CertaError(Exception):
    """Base class: a problem with the user's input or environment, not a bug in certa."""


class InputError(CertaError):
    """A file, record or argument is malformed (bad JSONL, missing field, NaN, empty dataset)."""


class UnknownNameError(CertaError):
    """A model, dataset, method or grader name that certa does not know."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}.{hint} Known: {', '.join(known)}")
        self.kind, self.name, self.known = kind, name, known


class MissingDependencyError(CertaError):
    """An optional package is needed; the message gives the exact install command."""


class ModelLoadError(CertaError):
    """A model could not be found or loaded."""


def first_validation_problem(exc: ValidationError) -> tuple[str, str, str]:
    """The first problem of a pydantic error: its field (dotted; "" for the whole model), type and message."""
    err = exc.errors()[0]
    return ".".join(str(part) for part in err["loc"]), err["type"], str(err["msg"]).removeprefix("Value error, ")


def validation_error(exc: ValidationError, where: str) -> InputError:
    """A pydantic validation error as one ``InputError`` line naming the first bad field."""
    field, kind, message = first_validation_problem(exc)
    if kind == "extra_forbidden":
        return InputError(f"{where}: unknown key {field!r}")
    return InputError(f"{where}: field {field!r}: {message}" if field else f"{where}: {message}")


def one_line(problem: BaseException | str, limit: int = 200) -> str:
    """An exception's (or a text's) message on one line, cut at ``limit`` characters: for a one-line error."""
    text = " ".join(str(problem).split())
    return text[:limit] + ("…" if len(text) > limit else "")
