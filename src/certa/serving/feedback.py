"""A feedback store for served answers: what was answered with which confidence, and whether it was right.

The server records every answer it serves (completion id, choice index, confidence, method, model,
time, optionally the question and answer text); a client later labels it correct or not
(``POST /v1/feedback`` in the server integration). The labelled pairs feed the online recalibrator
(:mod:`certa.serving.recalibration`) and drift monitoring, overall and per time window.

Storage is one SQLite file (standard library ``sqlite3``):

- **Versioned schema.** ``PRAGMA user_version`` holds the schema version; opening a store runs the
  pending steps of :data:`MIGRATIONS` in one transaction (all or nothing), so a file written by an
  older certa is upgraded in place and a file from a newer one is refused.
- **Nothing lost under concurrency.** One connection per store, guarded by a lock, so any number of
  threads may call it; every write is one ``BEGIN IMMEDIATE`` transaction, so other processes
  sharing the file queue on SQLite's lock (``busy_timeout``) instead of failing.
- **Durable once acknowledged.** Write-ahead logging with ``synchronous=FULL``: when
  :meth:`FeedbackStore.record_label` returns, the label is in the WAL file and fsynced, so it
  survives a ``kill -9`` of the process (and a power cut).
- **Errors an HTTP layer can map.** A label for an unknown answer raises
  :class:`UnknownAnswerError` (404), a second label for the same answer
  :class:`DuplicateLabelError` (409), a malformed label or id :class:`InvalidLabelError` (400);
  each has ``http_status``, and a failed call changes nothing.
"""

from __future__ import annotations

import math
import numbers
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CertaError, InputError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "DuplicateAnswerError",
    "DuplicateLabelError",
    "FeedbackDatabaseError",
    "FeedbackError",
    "FeedbackStore",
    "InvalidLabelError",
    "Label",
    "LabelledPairs",
    "ServedAnswer",
    "UnknownAnswerError",
    "Window",
    "migrate",
    "parse_label",
]

MAX_ID_LENGTH = 256
MAX_CHOICE = 2**31 - 1  # an SQLite INTEGER holds it; no request has that many choices


# --------------------------------------------------------------------------- errors


class FeedbackError(CertaError):
    """Base class of the feedback store's errors; ``http_status`` is the status an HTTP layer returns."""

    http_status = 400


class InvalidLabelError(FeedbackError):
    """The label, completion id or choice index is malformed (HTTP 400)."""

    http_status = 400


class UnknownAnswerError(FeedbackError):
    """No served answer has this completion id and choice (HTTP 404)."""

    http_status = 404


class DuplicateLabelError(FeedbackError):
    """This answer is already labelled; labels are write-once (HTTP 409)."""

    http_status = 409


class DuplicateAnswerError(FeedbackError):
    """An answer with this completion id and choice is already recorded (HTTP 409)."""

    http_status = 409


class FeedbackDatabaseError(FeedbackError):
    """The file is not a certa feedback database, or one from a newer certa (HTTP 500: a server problem)."""

    http_status = 500


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ServedAnswer:
    """One served choice. ``confidence`` is what the client saw; ``raw_confidence`` the method's score
    before any recalibration map (the recalibrator refits on it, never on its own output)."""

    completion_id: str
    choice: int
    confidence: float
    method: str
    model: str
    created: float
    raw_confidence: float | None = None
    question: str | None = None
    answer: str | None = None
    abstained: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Label:
    """A grade of a served answer: ``correct`` in [0, 1] (1 right, 0 wrong, between: partial credit)."""

    completion_id: str
    choice: int
    correct: float
    labelled_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LabelledPairs:
    """Labelled answers as parallel arrays, ordered by the time they were served."""

    confidence: np.ndarray       # as served
    raw_confidence: np.ndarray   # before recalibration
    correct: np.ndarray
    created: np.ndarray          # when the answer was served (seconds since the epoch)
    labelled_at: np.ndarray

    def __len__(self) -> int:
        return int(self.correct.size)

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[float, float, float, float, float]]) -> LabelledPairs:
        cols = np.asarray(rows, dtype=float).reshape(-1, 5).T
        return cls(*(np.ascontiguousarray(col) for col in cols))


@dataclass(frozen=True)
class Window:
    """The labelled answers served in ``[start, end)``."""

    start: float
    end: float
    pairs: LabelledPairs


# --------------------------------------------------------------------------- validation


def parse_label(value: Any) -> float:
    """A label as a float in [0, 1]: ``True``/``False``, 0/1 or a number in [0, 1] (partial credit).

    Anything else (a string such as ``"true"``, None, NaN, 1.5) raises :class:`InvalidLabelError`;
    strings are refused rather than guessed at.
    """
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        x = float(value)
        if math.isfinite(x) and 0.0 <= x <= 1.0:
            return x
        raise InvalidLabelError(f"correct must be true, false or a number in [0, 1], got {value!r}")
    raise InvalidLabelError(f"correct must be true, false or a number in [0, 1], got {type(value).__name__} "
                            f"{value!r}")


def _check_key(completion_id: Any, choice: Any, error: type[CertaError]) -> tuple[str, int]:
    if not isinstance(completion_id, str) or not completion_id or len(completion_id) > MAX_ID_LENGTH:
        raise error(f"id must be a non-empty string of at most {MAX_ID_LENGTH} characters, got {completion_id!r}")
    if not isinstance(choice, (int, np.integer)) or isinstance(choice, bool) or not 0 <= choice <= MAX_CHOICE:
        raise error(f"choice must be a non-negative integer (at most {MAX_CHOICE}), got {choice!r}")
    return completion_id, int(choice)


def _check_unit(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 <= float(value) <= 1.0):
        raise InputError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- schema and migrations


def _to_v1(conn: sqlite3.Connection) -> None:
    """The first layout: served answers and their labels."""
    conn.execute("""
        CREATE TABLE answers (
            completion_id TEXT NOT NULL,
            choice INTEGER NOT NULL CHECK (choice >= 0),
            confidence REAL NOT NULL CHECK (confidence BETWEEN 0 AND 1),
            method TEXT NOT NULL,
            model TEXT NOT NULL,
            created REAL NOT NULL,
            PRIMARY KEY (completion_id, choice)
        )""")
    conn.execute("""
        CREATE TABLE labels (
            completion_id TEXT NOT NULL,
            choice INTEGER NOT NULL,
            correct REAL NOT NULL CHECK (correct BETWEEN 0 AND 1),
            labelled_at REAL NOT NULL,
            PRIMARY KEY (completion_id, choice),
            FOREIGN KEY (completion_id, choice) REFERENCES answers (completion_id, choice)
        )""")


def _to_v2(conn: sqlite3.Connection) -> None:
    """The raw (pre-recalibration) confidence, the question/answer text, the abstention flag, time indexes.

    Answers stored by v1 were never recalibrated, so their raw confidence is the served one.
    """
    conn.execute("ALTER TABLE answers ADD COLUMN raw_confidence REAL CHECK (raw_confidence BETWEEN 0 AND 1)")
    conn.execute("UPDATE answers SET raw_confidence = confidence")
    conn.execute("ALTER TABLE answers ADD COLUMN question TEXT")
    conn.execute("ALTER TABLE answers ADD COLUMN answer TEXT")
    conn.execute("ALTER TABLE answers ADD COLUMN abstained INTEGER NOT NULL DEFAULT 0")
    conn.execute("CREATE INDEX answers_by_created ON answers (created)")
    conn.execute("CREATE INDEX labels_by_time ON labels (labelled_at)")


#: ``MIGRATIONS[v]`` upgrades a database from version ``v`` to ``v + 1``; version 0 is an empty file.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_to_v1, _to_v2)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection,
            migrations: Sequence[Callable[[sqlite3.Connection], None]] = MIGRATIONS) -> tuple[int, int]:
    """Bring the database on ``conn`` to the newest schema; returns ``(version before, version after)``.

    All pending steps and the new ``user_version`` commit in one transaction, so a failed step leaves
    the file as it was. The connection must be in autocommit mode (``isolation_level=None``).
    """
    newest = len(migrations)
    conn.execute("BEGIN IMMEDIATE")   # take the write lock first: concurrent openers migrate once
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > newest:
            raise FeedbackDatabaseError(f"feedback database schema version {version} is newer than this certa "
                                        f"understands ({newest}); upgrade certa")
        if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise FeedbackDatabaseError("the file holds an SQLite database that is not a certa feedback store")
        for step in migrations[version:]:
            step(conn)
        conn.execute(f"PRAGMA user_version = {newest}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return version, newest


# --------------------------------------------------------------------------- the store

_ANSWER_COLUMNS = ("completion_id, choice, confidence, method, model, created, raw_confidence, question, answer, "
                   "abstained")


class FeedbackStore:
    """Served answers and their labels in one SQLite file; safe to share between threads and processes.

    ``path`` is created (with its parent folder) when missing and migrated to the current schema.
    ``timeout`` is how long a write waits for another process's lock before failing.
    ``read_only`` (a reader such as ``certa monitor``): the file must exist at the current schema and is
    neither created, migrated nor switched to write-ahead logging.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0, read_only: bool = False):
        self.path = Path(path)
        self._lock = threading.Lock()
        if read_only:
            self._conn = self._open_read_only(timeout)
            self.migrated_from = SCHEMA_VERSION
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise FeedbackDatabaseError(f"{self.path}: SQLite refused write-ahead logging (journal mode {mode})")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self.migrated_from, _ = migrate(self._conn)
        except BaseException as e:
            self._conn.close()
            if isinstance(e, sqlite3.DatabaseError):
                raise FeedbackDatabaseError(f"{self.path}: not a usable feedback database ({e})") from None
            raise

    def _open_read_only(self, timeout: float) -> sqlite3.Connection:
        if not self.path.is_file():
            raise FeedbackDatabaseError(f"{self.path}: no such feedback database")
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            conn.close()
            raise FeedbackDatabaseError(f"{self.path}: not a usable feedback database ({e})") from None
        if version != SCHEMA_VERSION or "answers" not in tables:
            conn.close()
            raise FeedbackDatabaseError(f"{self.path}: not a feedback database at schema {SCHEMA_VERSION} (found "
                                        f"version {version}); `certa serve --db` creates and migrates one")
        return conn

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``work`` in one write transaction: committed (and fsynced) on return, rolled back on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return result

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # ------------------------------------------------------------------ served answers

    def record_answer(self, completion_id: str, choice: int, confidence: float, *, method: str, model: str,
                      created: float | None = None, raw_confidence: float | None = None,
                      question: str | None = None, answer: str | None = None,
                      abstained: bool = False) -> ServedAnswer:
        """Store one served choice; raises :class:`DuplicateAnswerError` if it is already stored."""
        served = ServedAnswer(completion_id, choice, confidence, method, model,
                              time.time() if created is None else created, raw_confidence, question, answer,
                              abstained)
        return self.record_answers([served])[0]

    def record_answers(self, answers: Iterable[ServedAnswer]) -> list[ServedAnswer]:
        """Store several served choices (e.g. the ``n`` choices of one completion) in one transaction."""
        rows, stored = [], []
        for a in answers:
            cid, choice = _check_key(a.completion_id, a.choice, InputError)
            conf = _check_unit(a.confidence, "confidence")
            raw = conf if a.raw_confidence is None else _check_unit(a.raw_confidence, "raw_confidence")
            if not isinstance(a.created, numbers.Real) or not math.isfinite(a.created):
                raise InputError(f"created must be a time in seconds since the epoch, got {a.created!r}")
            for name in ("method", "model"):
                if not isinstance(getattr(a, name), str):
                    raise InputError(f"{name} must be a string, got {getattr(a, name)!r}")
            a = ServedAnswer(cid, choice, conf, a.method, a.model, float(a.created), raw, a.question, a.answer,
                             bool(a.abstained))
            stored.append(a)
            rows.append((a.completion_id, a.choice, a.confidence, a.method, a.model, a.created, a.raw_confidence,
                         a.question, a.answer, int(a.abstained)))

        def insert(conn: sqlite3.Connection) -> None:
            for row in rows:
                try:
                    conn.execute(f"INSERT INTO answers ({_ANSWER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                except sqlite3.IntegrityError:
                    raise DuplicateAnswerError(f"answer {row[0]!r} choice {row[1]} is already recorded") from None

        self._write(insert)
        return stored

    def answer(self, completion_id: str, choice: int = 0) -> ServedAnswer:
        """The stored answer; :class:`UnknownAnswerError` when there is none."""
        cid, choice = _check_key(completion_id, choice, InvalidLabelError)
        rows = self._read(f"SELECT {_ANSWER_COLUMNS} FROM answers WHERE completion_id = ? AND choice = ?",
                          (cid, choice))
        if not rows:
            raise UnknownAnswerError(f"no served answer with id {cid!r} and choice {choice}")
        r = rows[0]
        return ServedAnswer(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], bool(r[9]))

    def answer_count(self) -> int:
        return int(self._read("SELECT count(*) FROM answers")[0][0])

    # ------------------------------------------------------------------ labels

    def record_label(self, completion_id: Any, choice: Any, correct: Any, *,
                     labelled_at: float | None = None) -> Label:
        """Label a served answer; durable when this returns.

        Raises :class:`InvalidLabelError` for a malformed id, choice or label,
        :class:`UnknownAnswerError` when no such answer was served and :class:`DuplicateLabelError`
        when it is already labelled; in every one of those cases the store is unchanged.
        """
        cid, choice = _check_key(completion_id, choice, InvalidLabelError)
        label = Label(cid, choice, parse_label(correct), time.time() if labelled_at is None else float(labelled_at))

        def insert(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM answers WHERE completion_id = ? AND choice = ?",
                            (cid, choice)).fetchone() is None:
                raise UnknownAnswerError(f"no served answer with id {cid!r} and choice {choice}")
            previous = conn.execute("SELECT correct FROM labels WHERE completion_id = ? AND choice = ?",
                                    (cid, choice)).fetchone()
            if previous is not None:
                raise DuplicateLabelError(f"answer {cid!r} choice {choice} is already labelled "
                                          f"(correct={previous[0]:g}); labels cannot be changed")
            conn.execute("INSERT INTO labels (completion_id, choice, correct, labelled_at) VALUES (?, ?, ?, ?)",
                         (cid, choice, label.correct, label.labelled_at))

        self._write(insert)
        return label

    def label(self, completion_id: str, choice: int = 0) -> Label | None:
        """The label of a served answer, or None when it has none yet."""
        cid, choice = _check_key(completion_id, choice, InvalidLabelError)
        rows = self._read("SELECT correct, labelled_at FROM labels WHERE completion_id = ? AND choice = ?",
                          (cid, choice))
        return Label(cid, choice, rows[0][0], rows[0][1]) if rows else None

    def label_count(self) -> int:
        return int(self._read("SELECT count(*) FROM labels")[0][0])

    # ------------------------------------------------------------------ queries

    def labelled(self, *, since: float | None = None, until: float | None = None, method: str | None = None,
                 model: str | None = None) -> LabelledPairs:
        """Labelled answers served in ``[since, until)`` (optionally of one method/model), oldest first."""
        where, params = ["1"], []
        for clause, value in (("a.created >= ?", since), ("a.created < ?", until), ("a.method = ?", method),
                              ("a.model = ?", model)):
            if value is not None:
                where.append(clause)
                params.append(value)
        rows = self._read(
            "SELECT a.confidence, COALESCE(a.raw_confidence, a.confidence), l.correct, a.created, l.labelled_at "
            "FROM labels AS l JOIN answers AS a USING (completion_id, choice) "
            f"WHERE {' AND '.join(where)} ORDER BY a.created, l.labelled_at, a.completion_id, a.choice", params)
        return LabelledPairs.from_rows(rows)

    def labelled_methods(self, *, model: str | None = None) -> list[str]:
        """The methods (sorted) whose answers carry at least one label (optionally of one model)."""
        where, params = ("WHERE a.model = ?", (model,)) if model is not None else ("", ())
        rows = self._read("SELECT DISTINCT a.method FROM labels AS l JOIN answers AS a USING (completion_id, choice) "
                          f"{where} ORDER BY a.method", params)
        return [r[0] for r in rows]

    def windows(self, width: float, *, origin: float = 0.0, since: float | None = None, until: float | None = None,
                method: str | None = None, model: str | None = None) -> list[Window]:
        """The labelled answers cut into time windows ``[origin + k·width, origin + (k+1)·width)`` by
        the time they were served; only non-empty windows, oldest first. With the default origin a
        width of 86400 gives UTC days."""
        if not isinstance(width, numbers.Real) or not width > 0 or not math.isfinite(width):
            raise InputError(f"window width must be a positive number of seconds, got {width!r}")
        pairs = self.labelled(since=since, until=until, method=method, model=model)
        if not len(pairs):
            return []
        index = np.floor((pairs.created - origin) / width).astype(np.int64)
        out = []
        for k in np.unique(index):
            sel = index == k
            part = LabelledPairs(*(getattr(pairs, f)[sel] for f in
                                   ("confidence", "raw_confidence", "correct", "created", "labelled_at")))
            out.append(Window(origin + float(k) * width, origin + float(k + 1) * width, part))
        return out
