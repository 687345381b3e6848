"""The records that flow between stages, and their JSONL files.

``Example`` (a question with its gold answers) → ``Generation`` (what a model
answered, with the per-token evidence confidence methods need) → ``Record``
(a generation joined with its example and graded). Each stage reads and writes
JSONL; writes are atomic (temp file + rename) and read errors name the file and
line.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from .errors import InputError
from .textfiles import iter_json_objects, json_type

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock
    fcntl = None  # type: ignore[assignment]

AnswerType = Literal["numeric", "short", "choice"]
ANSWER_TYPES: tuple[str, ...] = ("numeric", "short", "choice")


@dataclass
class Example:
    """A question and the answers accepted as correct (the JSONL fields of docs/data.md, "Your own data")."""

    id: str
    question: str
    answers: list[str]
    answer_type: AnswerType = "short"
    choices: list[str] | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not str(self.id):
            raise InputError("field 'id' is empty")
        if not isinstance(self.question, str) or not self.question.strip():
            raise InputError(f"example {self.id!r}: field 'question' must be a non-empty string")
        if not isinstance(self.answers, list) or not all(isinstance(a, str) for a in self.answers):
            raise InputError(f"example {self.id!r}: field 'answers' must be a list of strings")
        if self.answer_type not in ANSWER_TYPES:
            raise InputError(
                f"example {self.id!r}: field 'answer_type' is {self.answer_type!r}; expected one of {ANSWER_TYPES}"
            )
        if self.choices is not None and not _is_str_list(self.choices):
            raise InputError(f"example {self.id!r}: field 'choices' must be a list of strings")
        if self.answer_type == "choice" and not self.choices:
            raise InputError(f"example {self.id!r}: answer_type 'choice' needs a non-empty 'choices' list")


@dataclass
class Generation:
    """One model response to one example, with everything read during decoding.

    ``response`` is the answer text (special tokens stripped). ``token_ids``,
    ``token_logprobs`` and ``token_entropies`` are per generated token, from the
    same forward passes that produced the text. ``hidden_state`` is the
    last-layer state at the last response position (the one that predicts the
    end of the answer), when requested. ``samples`` are extra sampled
    responses (temperature > 0) for consistency-style methods. ``confidence``
    holds confidences read during generation itself (e.g. GrACE), keyed by
    method name; ``sample_confidence`` the same for each sample.
    """

    id: str
    prompt: str
    response: str
    model: str = ""
    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    token_entropies: list[float] = field(default_factory=list)
    finish_reason: str = "stop"
    hidden_state: list[float] | None = None
    samples: list[str] = field(default_factory=list)
    confidence: dict[str, float] = field(default_factory=dict)
    sample_confidence: dict[str, list[float]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Record(Generation):
    """A generation joined with its example and graded: ``correct`` ∈ [0, 1].

    ``sample_correct`` grades each of ``samples`` the same way (used by
    test-time scaling). ``question`` / ``answers`` / ``answer_type`` /
    ``choices`` are copied from the example so a record file stands alone.
    """

    question: str = ""
    answers: list[str] = field(default_factory=list)
    answer_type: AnswerType = "short"
    choices: list[str] | None = None
    correct: float = 0.0
    sample_correct: list[float] = field(default_factory=list)

    @classmethod
    def from_generation(cls, gen: Generation, example: Example, correct: float,
                        sample_correct: Sequence[float] = ()) -> Record:
        return cls(
            **{f.name: getattr(gen, f.name) for f in fields(Generation)},
            question=example.question,
            answers=list(example.answers),
            answer_type=example.answer_type,
            choices=list(example.choices) if example.choices else None,
            correct=float(correct),
            sample_correct=[float(c) for c in sample_correct],
        )

    def example(self) -> Example:
        return Example(id=self.id, question=self.question, answers=list(self.answers),
                       answer_type=self.answer_type, choices=self.choices)


T = TypeVar("T", Example, Generation, Record)


def to_dict(obj: Example | Generation | Record) -> dict[str, Any]:
    return asdict(obj)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build ``cls`` from a JSON object; unknown keys are kept in ``meta`` if it exists, else rejected."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [n for n in required if n not in data]
    if missing:
        raise InputError(f"{where}: missing field {missing[0]!r}")
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    if "meta" in known and known["meta"] is not None and not isinstance(known["meta"], dict):
        raise InputError(f"{where}: field 'meta' must be a JSON object, got {json_type(known['meta'])}")
    if extra:
        known["meta"] = {**(known.get("meta") or {}), **extra}
    try:
        obj = cls(**known)
    except TypeError as exc:  # pragma: no cover - defensive, dataclass signature mismatch
        raise InputError(f"{where}: {exc}") from exc
    if isinstance(obj, Example):
        obj.id = str(obj.id)
        try:
            obj.validate()
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
    if isinstance(obj, Generation):
        _check_generation(obj, where)
    if isinstance(obj, Record):
        if "correct" not in data:  # the default 0.0 would silently grade the answer wrong
            raise InputError(f"{where}: missing field 'correct' (a graded record needs its grade)")
        _check_finite(obj.correct, "correct", where)
        obj.correct = float(obj.correct)  # true / false are grades too
        _check_grades([obj.correct], "correct", where)
        _check_numbers(obj.sample_correct, "sample_correct", where)
        _check_grades(obj.sample_correct, "sample_correct", where)
        for name in ("answers", "choices"):
            value = getattr(obj, name)
            if value is not None and not _is_str_list(value):
                raise InputError(f"{where}: field {name!r} must be a list of strings")
    return obj


def _check_generation(gen: Generation, where: str) -> None:
    """The fields every reader relies on have their JSON types (a number as ``response`` crashed grading)."""
    if isinstance(gen.id, (str, int)) and not isinstance(gen.id, bool):
        gen.id = str(gen.id)
    else:
        raise InputError(f"{where}: field 'id' must be a string or an integer, got {json_type(gen.id)}")
    for name in ("prompt", "response", "model", "finish_reason"):
        if not isinstance(getattr(gen, name), str):
            raise InputError(f"{where}: field {name!r} must be a string, got {json_type(getattr(gen, name))}")
    if not _is_str_list(gen.samples):
        raise InputError(f"{where}: field 'samples' must be a list of strings")
    if not (isinstance(gen.token_ids, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                                     for t in gen.token_ids)):
        raise InputError(f"{where}: field 'token_ids' must be a list of integers")
    for name in ("token_logprobs", "token_entropies"):
        _check_numbers(getattr(gen, name), name, where)
    if gen.hidden_state is not None:
        _check_numbers(gen.hidden_state, "hidden_state", where)
    if not isinstance(gen.confidence, dict):
        raise InputError(f"{where}: field 'confidence' must be a JSON object of numbers")
    for name, value in gen.confidence.items():
        _check_finite(value, f"confidence.{name}", where)


def _check_numbers(values: Any, name: str, where: str) -> None:
    if not isinstance(values, list):
        raise InputError(f"{where}: field {name!r} must be a list of numbers, got {json_type(values)}")
    # Hidden states are hundreds of floats per row and read on every stage: check them in one pass,
    # and walk them one by one only to name the first bad value.
    try:
        if {type(v) for v in values} <= {float, int} and all(map(math.isfinite, values)):
            return
    except OverflowError:  # an integer too large for a float: named below
        pass
    for i, value in enumerate(values):
        if isinstance(value, bool):
            raise InputError(f"{where}: field '{name}[{i}]' must be a number, got {value!r}")
        _check_finite(value, f"{name}[{i}]", where)


def _check_grades(values: Sequence[float], name: str, where: str) -> None:
    for i, value in enumerate(values):
        if not 0.0 <= value <= 1.0:
            label = name if name == "correct" else f"{name}[{i}]"
            raise InputError(f"{where}: field {label!r} must be in [0, 1], got {value!r}")


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_finite(value: float, name: str, where: str) -> None:
    try:
        finite = isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise InputError(f"{where}: field {name!r} must be a finite number, got {value!r}")


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; every problem names file and line.

    UTF-8 with or without a byte-order mark; see :func:`certa.textfiles.iter_json_objects`.
    """
    return iter_json_objects(path)


def read_jsonl(path: str | os.PathLike[str], cls: type[T]) -> list[T]:
    """Read a JSONL file of ``cls`` objects; errors say ``file:line: problem``."""
    return [from_dict(cls, obj, where=f"{path}:{lineno}") for lineno, obj in iter_jsonl(path)]


def write_jsonl(path: str | os.PathLike[str], items: Iterable[Example | Generation | Record | dict[str, Any]]) -> Path:
    """Write items atomically: a reader never sees a half-written file."""
    rows = (item if isinstance(item, dict) else to_dict(item) for item in items)
    return atomic_write_lines(path, (json.dumps(r, ensure_ascii=False, allow_nan=False) for r in rows))


def atomic_write_lines(path: str | os.PathLike[str], lines: Iterable[str]) -> Path:
    """Write text lines to ``path`` through a temp file and a rename: never half-written."""

    def write(fh: Any) -> None:
        for line in lines:
            fh.write((line + "\n").encode("utf-8"))

    return _atomic_write(path, write)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file and a rename: never half-written."""
    return _atomic_write(path, lambda fh: fh.write(data))


def _atomic_write(path: str | os.PathLike[str], write: Callable[[Any], Any]) -> Path:
    p = Path(path)
    if p.is_dir():  # caught here, or the rename's error would name the temp file
        raise InputError(f"{p} is a directory; cannot write a file there")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs should look like any other
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_lines(path, [text.rstrip("\n")])


def _drop_torn_last_line(fd: int) -> None:
    """A run killed mid-write can leave a partial last line; drop it so the resume can read the rest.

    Works on bytes, so a line torn inside a multi-byte character is dropped too.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return
    tail = 1 << 16
    pos = size
    while pos > 0:  # find the last b"\n", reading backwards in blocks
        start = max(0, pos - tail)
        os.lseek(fd, start, os.SEEK_SET)
        block = os.read(fd, pos - start)
        if pos == size and block.endswith(b"\n"):
            return
        cut = block.rfind(b"\n")
        if cut >= 0:
            os.ftruncate(fd, start + cut + 1)
            return
        pos = start
    os.ftruncate(fd, 0)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class JsonlAppender:
    """Appends records one at a time to ``path.partial`` and renames on ``close``.

    Long generation writes each finished record as it goes, so a killed run
    loses nothing; ``done_ids`` lets a re-run skip what is already there.

    The ``.partial`` file is held under an exclusive advisory lock (``flock``)
    from opening to ``close``, so a second process given the same output
    refuses with :class:`InputError` instead of writing duplicates into it.
    The operating system drops the lock when the process ends, however it ends.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done_ids: set[str] = set()
        self._fd = self._open_locked()
        self._created = False
        try:
            _drop_torn_last_line(self._fd)
            if os.fstat(self._fd).st_size == 0 and self.path.exists():
                # Resume from a finished file: copy it in, then append.
                with self.path.open("rb") as src, os.fdopen(os.dup(self._fd), "ab") as dst:
                    shutil.copyfileobj(src, dst)
            self._created = os.fstat(self._fd).st_size == 0
            for _, obj in iter_jsonl(self.partial):
                self.done_ids.add(str(obj.get("id")))
        except BaseException:
            self._release(keep=not self._created)
            raise

    def _open_locked(self) -> int:
        """Open (creating) and lock ``.partial``; retry if a finishing writer renamed it away meanwhile."""
        while True:
            fd = os.open(self.partial, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise InputError(f"{self.path}: another certa process is writing this file (its "
                                     f"{self.partial.name} is locked); wait for it or choose another output") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.partial))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # we locked a file another writer has since renamed to its final name

    def append(self, item: Generation | Record | dict[str, Any]) -> None:
        row = item if isinstance(item, dict) else to_dict(item)
        line = json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"
        data = memoryview(line.encode("utf-8"))
        while data:  # a regular file takes it in one write; loop in case it does not
            data = data[os.write(self._fd, data):]
        self._created = False
        self.done_ids.add(str(row["id"]))

    def close(self) -> Path:
        os.replace(self.partial, self.path)  # before unlocking: a waiting writer then sees the rename (samestat)
        self._release(keep=True)
        return self.path

    def _release(self, keep: bool) -> None:
        """Close the file (dropping the lock); an empty ``.partial`` this run created is removed first."""
        if self._fd < 0:
            return
        if not keep:
            self.partial.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._release(keep=not self._created)  # keep .partial so the next run resumes
