"""The training log survives a kill mid-write: a torn last line is dropped on resume, not a crash."""

from __future__ import annotations

import json

import pytest

from certa.errors import InputError
from certa.training.trainer import TRAIN_LOG, _truncate_log, training_seconds


def _log(tmp_path, tail: str):
    path = tmp_path / TRAIN_LOG
    rows = [{"step": s, "loss": 0.5, "seconds": 1.5} for s in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")
    return path


def test_a_line_torn_by_a_kill_is_dropped_when_resuming(tmp_path):
    path = _log(tmp_path, '{"step": 4, "loss": 0.')
    assert training_seconds(tmp_path) == pytest.approx(4.5)
    _truncate_log(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text(encoding="utf-8").splitlines()] == [1, 2]


def test_a_broken_line_before_the_end_names_its_line(tmp_path):
    path = _log(tmp_path, "")
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"{TRAIN_LOG}:2: "):
        _truncate_log(path, 3)
