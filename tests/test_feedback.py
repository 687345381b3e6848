"""The feedback store (certa.serving.feedback): answers and labels, errors an HTTP layer maps to
400/404/409, time windows, schema migration from v1, concurrent writers and kill -9 durability."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import certa
from certa.errors import InputError
from certa.serving.feedback import (
    MIGRATIONS,
    SCHEMA_VERSION,
    DuplicateAnswerError,
    DuplicateLabelError,
    FeedbackDatabaseError,
    FeedbackStore,
    InvalidLabelError,
    ServedAnswer,
    UnknownAnswerError,
    migrate,
    parse_label,
)


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "feedback.db") as s:
        yield s


def _serve(store, n, *, prefix="chatcmpl-", created=1000.0, step=1.0, **kw):
    for i in range(n):
        store.record_answer(f"{prefix}{i}", 0, (i % 10) / 10, method=kw.get("method", "grace"),
                            model=kw.get("model", "smollm2"), created=created + i * step)


# --------------------------------------------------------------------------- answers and labels


def test_an_answer_and_its_label_round_trip(store):
    served = store.record_answer("chatcmpl-a", 1, 0.8, method="grace", model="smollm2", created=123.5,
                                 question="2+2?", answer="4")
    assert served.raw_confidence == 0.8                       # no recalibration: raw = served
    assert store.answer("chatcmpl-a", 1) == served
    assert store.label("chatcmpl-a", 1) is None
    label = store.record_label("chatcmpl-a", 1, True, labelled_at=200.0)
    assert (label.correct, label.labelled_at) == (1.0, 200.0)
    assert store.label("chatcmpl-a", 1) == label
    assert (store.answer_count(), store.label_count()) == (1, 1)
    pairs = store.labelled()
    assert len(pairs) == 1
    assert (pairs.confidence[0], pairs.raw_confidence[0], pairs.correct[0], pairs.created[0]) == (0.8, 0.8, 1.0, 123.5)


def test_several_choices_in_one_transaction_and_recalibrated_confidence(store):
    store.record_answers([ServedAnswer("c", i, 0.6 + i / 10, "m", "x", 10.0, raw_confidence=0.3) for i in range(3)])
    assert [store.answer("c", i).confidence for i in range(3)] == [0.6, 0.7, 0.8]
    for i, value in enumerate((False, 0.5, 1)):
        store.record_label("c", i, value)
    pairs = store.labelled()
    np.testing.assert_allclose(pairs.raw_confidence, [0.3, 0.3, 0.3])
    np.testing.assert_allclose(pairs.correct, [0.0, 0.5, 1.0])


@pytest.mark.parametrize("value, expected", [(True, 1.0), (False, 0.0), (1, 1.0), (0, 0.0), (0.25, 0.25),
                                             (np.float32(0.5), 0.5)])
def test_parse_label_accepts(value, expected):
    assert parse_label(value) == expected


@pytest.mark.parametrize("value", ["true", "1", None, 1.5, -0.1, math.nan, math.inf, [1], {"c": 1}])
def test_parse_label_refuses(value):
    with pytest.raises(InvalidLabelError, match="correct must be true, false or a number in"):
        parse_label(value)


def test_unknown_duplicate_and_bad_labels_raise_distinct_errors_and_change_nothing(store):
    _serve(store, 2)
    store.record_label("chatcmpl-0", 0, 1)
    cases = [
        (("chatcmpl-9", 0, True), UnknownAnswerError, 404, "no served answer with id 'chatcmpl-9'"),
        (("chatcmpl-1", 3, True), UnknownAnswerError, 404, "choice 3"),
        (("chatcmpl-0", 0, False), DuplicateLabelError, 409, r"already labelled \(correct=1\)"),
        (("chatcmpl-1", 0, "yes"), InvalidLabelError, 400, "correct must be"),
        (("chatcmpl-1", 0, 2), InvalidLabelError, 400, "correct must be"),
        (("", 0, True), InvalidLabelError, 400, "id must be a non-empty string"),
        ((17, 0, True), InvalidLabelError, 400, "id must be"),
        (("chatcmpl-1", -1, True), InvalidLabelError, 400, "choice must be a non-negative integer"),
        (("chatcmpl-1", True, True), InvalidLabelError, 400, "choice must be"),
        (("chatcmpl-1", "0", True), InvalidLabelError, 400, "choice must be"),
    ]
    for args, error, status, message in cases:
        with pytest.raises(error, match=message) as info:
            store.record_label(*args)
        assert info.value.http_status == status
    assert store.label_count() == 1 and store.label("chatcmpl-0").correct == 1.0
    assert store.label("chatcmpl-1") is None


def test_duplicate_answers_are_refused_atomically(store):
    store.record_answer("a", 0, 0.5, method="m", model="x")
    with pytest.raises(DuplicateAnswerError, match="'a' choice 0 is already recorded") as info:
        store.record_answers([ServedAnswer("b", 0, 0.5, "m", "x", 1.0), ServedAnswer("a", 0, 0.9, "m", "x", 1.0)])
    assert info.value.http_status == 409
    assert store.answer_count() == 1                      # "b" was rolled back with the duplicate
    with pytest.raises(UnknownAnswerError):
        store.answer("b")
    assert store.answer("a").confidence == 0.5


def test_bad_answers_are_input_errors(store):
    for kwargs, message in [({"confidence": 1.2}, "confidence must be a number in"),
                            ({"raw_confidence": -1}, "raw_confidence must be"),
                            ({"created": math.nan}, "created must be a time"),
                            ({"completion_id": ""}, "id must be")]:
        args = {"completion_id": "x", "choice": 0, "confidence": 0.5, "method": "m", "model": "x", **kwargs}
        with pytest.raises(InputError, match=message):
            store.record_answer(args.pop("completion_id"), args.pop("choice"), args.pop("confidence"), **args)
    assert store.answer_count() == 0


# --------------------------------------------------------------------------- queries


def test_labelled_pairs_filter_by_time_method_and_model(store):
    _serve(store, 10, prefix="g", created=100.0, step=10.0, method="grace")          # 100 .. 190
    _serve(store, 5, prefix="c", created=150.0, step=10.0, method="conftuner", model="other")
    for i in range(10):
        store.record_label(f"g{i}", 0, i % 2 == 0)
    for i in range(5):
        store.record_label(f"c{i}", 0, 0.5)
    assert len(store.labelled()) == 15
    assert np.all(np.diff(store.labelled().created) >= 0)                                # oldest first
    window = store.labelled(since=120.0, until=160.0)
    np.testing.assert_allclose(window.created, [120, 130, 140, 150, 150])
    assert len(store.labelled(method="conftuner")) == 5 and len(store.labelled(model="smollm2")) == 10
    np.testing.assert_allclose(store.labelled(method="grace", since=180).correct, [1.0, 0.0])  # g8, g9


def test_windows_cut_by_serving_time(store):
    _serve(store, 6, created=0.0, step=25.0)             # served at 0, 25, 50, 75, 100, 125
    for i in (0, 1, 2, 4, 5):
        store.record_label(f"chatcmpl-{i}", 0, 1)        # 75 stays unlabelled
    windows = store.windows(50.0)
    assert [(w.start, w.end, len(w.pairs)) for w in windows] == [(0.0, 50.0, 2), (50.0, 100.0, 1),
                                                                 (100.0, 150.0, 2)]
    np.testing.assert_allclose(windows[2].pairs.created, [100, 125])
    assert [(w.start, len(w.pairs)) for w in store.windows(100.0, origin=10.0)] == [(-90.0, 1), (10.0, 3),
                                                                               (110.0, 1)]
    assert store.windows(50.0, since=1000.0) == []
    with pytest.raises(InputError, match="window width must be a positive number"):
        store.windows(0)


# --------------------------------------------------------------------------- schema and migrations

V1_SCHEMA = """
CREATE TABLE answers (
    completion_id TEXT NOT NULL, choice INTEGER NOT NULL CHECK (choice >= 0),
    confidence REAL NOT NULL CHECK (confidence BETWEEN 0 AND 1), method TEXT NOT NULL, model TEXT NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (completion_id, choice));
CREATE TABLE labels (
    completion_id TEXT NOT NULL, choice INTEGER NOT NULL, correct REAL NOT NULL CHECK (correct BETWEEN 0 AND 1),
    labelled_at REAL NOT NULL, PRIMARY KEY (completion_id, choice),
    FOREIGN KEY (completion_id, choice) REFERENCES answers (completion_id, choice));
INSERT INTO answers VALUES ('old-1', 0, 0.9, 'grace', 'smollm2', 50.0), ('old-2', 0, 0.2, 'grace', 'smollm2', 60.0);
INSERT INTO labels VALUES ('old-1', 0, 1.0, 70.0);
PRAGMA user_version = 1;
"""


def _v1_file(path: Path) -> Path:
    """A database file exactly as schema version 1 wrote it (the schema frozen here, not taken from the code)."""
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.commit()
    conn.close()
    return path


def test_a_new_store_has_the_current_schema(tmp_path):
    with FeedbackStore(tmp_path / "sub" / "new.db") as s:
        assert s.schema_version == SCHEMA_VERSION == 2 and s.migrated_from == 0
    conn = sqlite3.connect(tmp_path / "sub" / "new.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_v1_database_file_migrates_to_the_current_version_keeping_its_data(tmp_path):
    path = _v1_file(tmp_path / "v1.db")
    with FeedbackStore(path) as s:
        assert (s.migrated_from, s.schema_version) == (1, SCHEMA_VERSION)
        old = s.answer("old-1")
        assert (old.confidence, old.raw_confidence, old.question, old.abstained, old.created) == \
            (0.9, 0.9, None, False, 50.0)
        assert s.label("old-1").correct == 1.0
        s.record_label("old-2", 0, False)                                          # old answers take labels
        s.record_answer("new", 0, 0.7, method="grace", model="smollm2", raw_confidence=0.4, question="q",
                        answer="a", abstained=True, created=80.0)
        s.record_label("new", 0, 0.5)
        pairs = s.labelled()
        np.testing.assert_allclose(pairs.raw_confidence, [0.9, 0.2, 0.4])
        np.testing.assert_allclose(pairs.correct, [1.0, 0.0, 0.5])
    with FeedbackStore(path) as again:                                             # migrates only once
        assert again.migrated_from == SCHEMA_VERSION and again.label_count() == 3


def test_a_failing_migration_leaves_the_file_as_it_was(tmp_path):
    path = _v1_file(tmp_path / "v1.db")
    conn = sqlite3.connect(path, isolation_level=None)

    def broken(c):
        c.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("step 3 failed")

    with pytest.raises(RuntimeError, match="step 3 failed"):
        migrate(conn, migrations=(*MIGRATIONS, broken))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    columns = [r[1] for r in conn.execute("PRAGMA table_info(answers)")]
    assert "raw_confidence" not in columns                                     # step 2 was rolled back too
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'half_done'").fetchone()
    conn.close()


def test_newer_foreign_and_broken_files_are_refused(tmp_path):
    newer = tmp_path / "newer.db"
    sqlite3.connect(newer).execute("PRAGMA user_version = 99").connection.close()
    with pytest.raises(FeedbackDatabaseError, match="schema version 99 is newer than this certa understands"):
        FeedbackStore(newer)
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    conn.close()
    with pytest.raises(FeedbackDatabaseError, match="not a certa feedback store"):
        FeedbackStore(foreign)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(FeedbackDatabaseError, match="junk.db: not a usable feedback database"):
        FeedbackStore(junk)


# --------------------------------------------------------------------------- concurrency


def test_concurrent_writers_lose_nothing(tmp_path):
    """8 threads on one store plus 4 threads on a second store (its own connection, as another process
    would have) label 600 answers at once; every label is counted."""
    path = tmp_path / "busy.db"
    first, second = FeedbackStore(path), FeedbackStore(path)
    _serve(first, 600, prefix="q")
    errors = []

    def label(s, ids):
        try:
            for i in ids:
                s.record_label(f"q{i}", 0, i % 3 == 0)
        except Exception as e:   # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=label, args=(first if w < 8 else second, range(w, 600, 12)))
               for w in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert first.label_count() == second.label_count() == 600
    np.testing.assert_allclose(sorted(first.labelled().correct), sorted((np.arange(600) % 3 == 0).astype(float)))
    first.close()
    second.close()


def test_racing_labels_for_one_answer_store_exactly_one(store):
    store.record_answer("contested", 0, 0.5, method="m", model="x")
    outcomes = []
    barrier = threading.Barrier(16)

    def attempt(value):
        barrier.wait()
        try:
            store.record_label("contested", 0, value)
            outcomes.append(("ok", value))
        except DuplicateLabelError:
            outcomes.append(("duplicate", value))

    threads = [threading.Thread(target=attempt, args=(i % 2 == 0,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [v for kind, v in outcomes if kind == "ok"]
    assert len(winners) == 1 and len(outcomes) == 16
    assert store.label("contested").correct == float(winners[0])


# --------------------------------------------------------------------------- durability

CHILD = """
import sys, threading
from certa.serving.feedback import FeedbackStore

store = FeedbackStore(sys.argv[1])
out = threading.Lock()

def worker(w):
    i = 0
    while True:
        cid = f"w{w}-{i}"
        store.record_answer(cid, 0, 0.5, method="m", model="x")
        store.record_label(cid, 0, i % 2 == 0)
        with out:                                  # acknowledged: record_label has returned
            sys.stdout.write(cid + "\\n")
            sys.stdout.flush()
        i += 1

threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_every_acknowledged_label_survives_kill_9(tmp_path):
    path = tmp_path / "durable.db"
    env = {**os.environ, "PYTHONPATH": str(Path(certa.__file__).parents[1])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    acked = []
    try:
        while len(acked) < 150:
            line = child.stdout.readline()
            if not line:
                pytest.fail(f"the writer died early: {child.stderr.read()}")
            acked.append(line.strip())
        os.kill(child.pid, signal.SIGKILL)          # mid-stream: the four threads are still writing
        rest, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    acked += [line for line in rest.split("\n")[:-1]]   # complete lines only: printed after the ack
    assert child.returncode == -signal.SIGKILL
    with FeedbackStore(path) as s:
        assert s._read("PRAGMA integrity_check")[0][0] == "ok"
        for cid in acked:
            label = s.label(cid)
            assert label is not None, f"acknowledged label {cid} was lost"
            assert label.correct == float(int(cid.split("-")[1]) % 2 == 0)
        assert s.label_count() >= len(acked)
