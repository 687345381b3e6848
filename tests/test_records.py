import json

import pytest

from certa.errors import InputError
from certa.records import Example, Generation, JsonlAppender, Record, read_jsonl, write_jsonl


def _example(i: int = 0) -> Example:
    return Example(id=f"q{i}", question="What is 2 + 2?", answers=["4"], answer_type="numeric")


def test_roundtrip_keeps_every_field(tmp_path):
    gen = Generation(id="q0", prompt="p", response="4", token_ids=[1, 2], token_logprobs=[-0.1, -0.2],
                     token_entropies=[0.3, 0.4], hidden_state=[0.5, -0.5], samples=["4", "5"],
                     confidence={"grace": 0.7}, sample_confidence={"grace": [0.6, 0.2]})
    rec = Record.from_generation(gen, _example(), correct=1.0, sample_correct=[1, 0])
    path = write_jsonl(tmp_path / "r.jsonl", [rec])
    (back,) = read_jsonl(path, Record)
    assert back == rec
    assert back.example().answers == ["4"]


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "q", "answers": ["x"]}) + "\n\n{oops\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:3: malformed JSON"):
        read_jsonl(path, Example)


def test_missing_field_is_named(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"id": "a", "answers": ["x"]}) + "\n")
    with pytest.raises(InputError, match=r"e\.jsonl:1: missing field 'question'"):
        read_jsonl(path, Example)


def test_wrong_answer_type_and_nan_correct(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "q", "answers": ["x"], "answer_type": "essay"}) + "\n")
    with pytest.raises(InputError, match="answer_type"):
        read_jsonl(path, Example)
    path.write_text('{"id": "a", "prompt": "p", "response": "r", "correct": NaN}\n')
    with pytest.raises(InputError, match="'correct' must be a finite number"):
        read_jsonl(path, Record)


def test_unknown_keys_are_kept_in_meta(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"id": 7, "question": "q", "answers": ["x"], "difficulty": 3}) + "\n")
    (ex,) = read_jsonl(path, Example)
    assert ex.id == "7" and ex.meta == {"difficulty": 3}


def test_write_is_atomic_on_failure(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [_example(0)])

    def broken():
        yield _example(1)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert [e.id for e in read_jsonl(path, Example)] == ["q0"]  # the old file is intact
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_appender_resumes_after_interruption(tmp_path):
    path = tmp_path / "g.jsonl"
    with pytest.raises(KeyboardInterrupt), JsonlAppender(path) as app:
        app.append(Generation(id="a", prompt="p", response="r"))
        raise KeyboardInterrupt
    assert not path.exists()  # only the .partial file holds unfinished work
    with JsonlAppender(path) as app:
        assert app.done_ids == {"a"}
        app.append(Generation(id="b", prompt="p", response="r"))
    assert [g.id for g in read_jsonl(path, Generation)] == ["a", "b"]


def test_appender_drops_a_line_torn_by_a_kill(tmp_path):
    path = tmp_path / "g.jsonl"
    partial = tmp_path / "g.jsonl.partial"
    partial.write_text('{"id": "a", "prompt": "p", "response": "r"}\n{"id": "b", "prom')
    with JsonlAppender(path) as app:
        assert app.done_ids == {"a"}
    assert [g.id for g in read_jsonl(path, Generation)] == ["a"]
