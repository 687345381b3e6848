"""The study's own cache files, damaged by hand or by another version, are a cache miss, never a crash."""

from __future__ import annotations

import json

import numpy as np

from certa.records import Record
from certa.study.cache import _meta_path, cached_scores
from certa.study.stages import stamp_is

METHODS = ["sequence_likelihood", "token_entropy"]


def _records():
    rng = np.random.default_rng(0)
    return [Record(id=f"q{i}", prompt="p", response="a b", token_ids=[1, 2], correct=float(i % 2),
                   token_logprobs=list(-rng.random(2)), token_entropies=list(rng.random(2)),
                   meta={"vocab_size": 100}) for i in range(6)]


def test_a_damaged_score_cache_is_rescored_not_a_crash(tmp_path, caplog):
    records, path = _records(), tmp_path / "scores.jsonl"
    first = cached_scores(METHODS, records, path)
    meta = json.loads(_meta_path(path).read_text(encoding="utf-8"))
    meta["sequence_likelihood"] = "not an entry"
    del meta["token_entropy"]["key"]
    for damaged in (meta, ["not", "a", "mapping"]):
        _meta_path(path).write_text(json.dumps(damaged), encoding="utf-8")
        again = cached_scores(METHODS, records, path)
        for m in METHODS:
            np.testing.assert_allclose(again[m].scores, first[m].scores)
    assert "ignoring the cached scores of sequence_likelihood" in caplog.text


def test_a_stamp_that_is_not_utf8_counts_as_changed(tmp_path):
    stamp = tmp_path / "stamp.json"
    stamp.write_bytes(b'{"a": \xff\xfe}')
    assert not stamp_is(stamp, '{"a": 1}')
    stamp.write_text('{"a": 1}\n', encoding="utf-8")
    assert stamp_is(stamp, '{"a": 1}')
