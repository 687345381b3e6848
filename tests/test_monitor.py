"""``certa monitor``: the report of stored traffic equals ``evaluate`` on the same numbers, overall and per window."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli import run_cli

from certa.errors import InputError
from certa.metrics import brier, ece
from certa.serving.feedback import FeedbackStore
from certa.serving.monitor import monitor, parse_window

DAY = 86400.0


@pytest.fixture
def traffic(tmp_path):
    """Three UTC days of labelled answers; recalibrated (served != raw) from the second day on, drifting on the third."""
    rng = np.random.default_rng(0)
    db = tmp_path / "feedback.db"
    rows = []
    with FeedbackStore(db) as store:
        for day in range(3):
            for i in range(80):
                raw = float(rng.random())
                served = raw if day == 0 else raw**2
                p_right = raw**2 if day < 2 else raw**4                      # day 3: the model got worse
                correct = float(rng.random() < p_right)
                cid = f"chatcmpl-{day}-{i}"
                created = day * DAY + 60 * i + 1
                store.record_answer(cid, 0, served, raw_confidence=raw, method="grace", model="m", created=created)
                if i % 5:                                                      # one answer in five is never labelled
                    store.record_label(cid, 0, correct)
                    rows.append((day, served, raw, correct))
        store.record_answer("other-0", 0, 0.3, method="p_true", model="m", created=5.0)
    return db, np.array(rows)


def test_the_report_is_evaluate_on_the_stored_traffic(traffic, tmp_path):
    db, rows = traffic
    out = tmp_path / "monitor"
    found = monitor(db, out, window="1d", n_bootstrap=50)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == len(rows) == 192
    served, raw, correct = rows[:, 1], rows[:, 2], rows[:, 3]
    assert metrics["methods"]["grace"]["ece"]["value"] == pytest.approx(ece(served, correct))
    assert metrics["methods"]["grace:raw"]["ece"]["value"] == pytest.approx(ece(raw, correct))
    assert metrics["methods"]["grace"]["brier"]["value"] == pytest.approx(brier(served, correct))
    assert metrics["extra"]["method"] == "grace" and (out / "report.html").stat().st_size > 10_000
    summary = json.loads((out / "windows.json").read_text())
    assert summary["window_seconds"] == DAY
    assert [w["start"] for w in summary["windows"]] == ["1970-01-01T00:00:00Z", "1970-01-02T00:00:00Z",
                                                        "1970-01-03T00:00:00Z"]
    for day, window in enumerate(summary["windows"]):
        part = rows[rows[:, 0] == day]
        assert window["n"] == len(part) == 64
        assert window["methods"]["grace"]["ece"]["value"] == pytest.approx(ece(part[:, 1], part[:, 3]))
        assert window["accuracy"]["value"] == pytest.approx(part[:, 3].mean())
        assert (out / window["report"]).is_file()
        assert json.loads((out / window["report"]).with_name("metrics.json").read_text())["n"] == 64
    assert "grace:raw" not in summary["windows"][0]["methods"]        # day one was served raw
    assert (out / "drift.png").read_bytes()[:4] == b"\x89PNG"
    assert len(found.windows) == 3


def test_cli_monitor(traffic, tmp_path, capsys):
    db, _ = traffic
    code, out, err = run_cli(capsys, "monitor", "--db", str(db), "-o", str(tmp_path / "m"), "--window", "12h",
                             "--n-bootstrap", "20")
    assert code == 0, err
    assert "1970-01-03T00-00-00Z" in out and (tmp_path / "m" / "windows.json").is_file()
    assert len(json.loads((tmp_path / "m" / "windows.json").read_text())["windows"]) == 3   # half days: 3 busy
    code, _, err = run_cli(capsys, "monitor", "--db", str(tmp_path / "none.db"), "-o", str(tmp_path / "x"))
    assert code == 2 and "no such feedback database" in err


def test_monitor_reads_the_database_without_changing_it(traffic, tmp_path, capsys):
    """It opened read-write: an empty file became a 28 KB database, another SQLite file was switched to WAL."""
    import sqlite3

    db, _ = traffic
    before = db.read_bytes()
    assert run_cli(capsys, "monitor", "--db", str(db), "-o", str(tmp_path / "m"), "--n-bootstrap", "20")[0] == 0
    assert db.read_bytes() == before
    empty, other = tmp_path / "empty.db", tmp_path / "other.db"
    empty.write_bytes(b"")
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    for path in (empty, other):
        code, _, err = run_cli(capsys, "monitor", "--db", str(path), "-o", str(tmp_path / "x"))
        assert code == 2 and f"{path}: not a feedback database at schema" in err and len(err.strip().splitlines()) == 1
    assert empty.read_bytes() == b""
    with sqlite3.connect(other) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_several_methods_or_none_labelled(traffic, tmp_path):
    db, _ = traffic
    with FeedbackStore(db) as store:
        store.record_label("other-0", 0, True)
    with pytest.raises(InputError, match="2 methods \\(grace, p_true\\); pass --method"):
        monitor(db, tmp_path / "a")
    assert monitor(db, tmp_path / "b", method="p_true", n_bootstrap=0).overall.n == 1
    empty = tmp_path / "empty.db"
    FeedbackStore(empty).close()
    with pytest.raises(InputError, match="no labelled answers yet"):
        monitor(empty, tmp_path / "c")


@pytest.mark.parametrize(("text", "seconds"), [("1d", DAY), ("6h", 21600), ("30m", 1800), ("90", 90), ("2w", 14 * DAY),
                                               (" 1.5h ", 5400), (60, 60)])
def test_parse_window(text, seconds):
    assert parse_window(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "-1d", "0", "1y", "1 d x"])
def test_parse_window_errors(text):
    with pytest.raises(InputError):
        parse_window(text)
