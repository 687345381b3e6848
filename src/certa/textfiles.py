"""Reading users' text files: UTF-8 (byte-order mark accepted), every problem one line naming file and line.

Every file a user hands certa (datasets, generations, records, scores, answers,
configs) is read through these functions, so a file saved by a Windows tool
(UTF-8 with a BOM) just works, and a file in another encoding or a binary file
gives ``file:line: not UTF-8 text (...)`` instead of a ``UnicodeDecodeError``
traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import InputError

UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def read_text(path: str | os.PathLike[str], what: str = "file") -> str:
    """The text of a UTF-8 file, byte-order mark dropped.

    Missing, unreadable or not UTF-8 → :class:`InputError` naming the file (and, for
    bad bytes, the line and column). ``what`` names the file in the not-found
    message (``"config file not found"``).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: {what} not found")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    data = _strip_bom(p, data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InputError(_not_utf8(p, lineno, data[exc.start], column)) from None


def iter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) for every line of a UTF-8 file, streaming, without line endings.

    Lines end at LF, CRLF or a lone CR, as in Python's text mode, so the numbers
    match an editor's. A leading byte-order mark is dropped; bytes that are not
    UTF-8 raise ``file:line: not UTF-8 text (byte 0x.. at column N)``.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    try:
        fh = p.open("rb")
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    with fh:
        yield from _decoded_lines(p, fh)


def iter_json_objects(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line of a JSONL file.

    Bytes that are not UTF-8, malformed JSON and a line that is not a JSON object
    raise :class:`InputError` saying ``file:line: problem``.
    """
    p = Path(path)
    for lineno, line in iter_lines(p):
        if line.strip():
            yield lineno, parse_json_object(line, f"{p}:{lineno}")


def read_json_object(path: str | os.PathLike[str], what: str = "file") -> dict[str, Any]:
    """A whole file holding one JSON object (e.g. an artifact's ``certa.json``); errors name file and line."""
    p = Path(path)
    text = read_text(p, what)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    except (RecursionError, ValueError):
        raise InputError(f"{p}: malformed JSON (nested too deeply or a number too long)") from None
    if not isinstance(obj, dict):
        raise InputError(f"{p}: expected a JSON object, got {json_type(obj)}")
    return obj


def parse_json_object(text: str, where: str) -> dict[str, Any]:
    """One JSON object from ``text``; anything else → ``InputError`` prefixed with ``where``."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise InputError(f"{where}: malformed JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {json_type(obj)}")
    return obj


def json_type(value: Any) -> str:
    """How a JSON value's type reads in a message: ``an array``, ``a string``, ``null``..."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
             dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _decoded_lines(p: Path, fh: IO[bytes]) -> Iterator[tuple[int, str]]:
    lineno = 0
    try:
        for chunk in fh:  # chunks end at b"\n"; splitlines also ends a line at a lone b"\r"
            if lineno == 0:
                chunk = _strip_bom(p, chunk)
            for raw in chunk.splitlines():
                lineno += 1
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(_not_utf8(p, lineno, raw[exc.start], exc.start + 1)) from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None


def _strip_bom(p: Path, data: bytes) -> bytes:
    if data.startswith(UTF8_BOM):
        return data[len(UTF8_BOM):]
    if data.startswith(_UTF16_BOMS):
        raise InputError(f"{p}: the file is UTF-16 text; save it as UTF-8")
    return data


def _not_utf8(p: Path, lineno: int, byte: int, column: int) -> str:
    return f"{p}:{lineno}: not UTF-8 text (byte 0x{byte:02x} at column {column}); save the file as UTF-8"
