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


@pytest.mark.parametrize(("row", "message"), [
    ({"response": 5}, r"g\.jsonl:1: field 'response' must be a string, got a number"),
    ({"response": None}, "field 'response' must be a string, got null"),
    ({"samples": [4, 5]}, "field 'samples' must be a list of strings"),
    ({"token_ids": [1, "2"]}, "field 'token_ids' must be a list of integers"),
    ({"token_logprobs": "abc"}, "field 'token_logprobs' must be a list of numbers, got a string"),
    ({"token_logprobs": [-0.5, True]}, r"field 'token_logprobs\[1\]' must be a number"),
    ({"hidden_state": [0.1, "x"]}, r"field 'hidden_state\[1\]' must be a finite number"),
    ({"confidence": {"grace": "high"}}, "field 'confidence.grace' must be a finite number"),
    ({"id": None}, "field 'id' must be a string or an integer, got null"),
])
def test_generation_fields_of_the_wrong_type_are_one_line_errors(tmp_path, row, message):
    """They crashed later with a traceback (grading a number, scoring a string of log-probs)."""
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "p", "response": "r", **row}) + "\n")
    with pytest.raises(InputError, match=message):
        read_jsonl(path, Generation)


def test_a_record_needs_its_grade_in_range(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [{"id": "a", "prompt": "p", "response": "r", "correct": 1}, {"id": "b", "prompt": "p", "response": "r"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match=r"r\.jsonl:2: missing field 'correct'"):   # was silently graded wrong
        read_jsonl(path, Record)
    for bad, message in (({"correct": 5}, "'correct' must be in \\[0, 1\\], got 5"),
                         ({"correct": 1, "sample_correct": [7]}, r"'sample_correct\[0\]' must be in \[0, 1\]")):
        path.write_text(json.dumps({"id": "a", "prompt": "p", "response": "r", **bad}) + "\n")
        with pytest.raises(InputError, match=message):
            read_jsonl(path, Record)
    path.write_text(json.dumps({"id": 3, "prompt": "p", "response": "r", "correct": True}) + "\n")
    (rec,) = read_jsonl(path, Record)
    assert rec.id == "3" and rec.correct == 1.0 and isinstance(rec.correct, float)


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


def test_writing_over_a_directory_names_it_not_a_temp_file(tmp_path):
    # the rename failed with "[Errno 21] Is a directory: '.out.jsonl.x1y2.tmp' -> ..."
    (tmp_path / "out.jsonl").mkdir()
    with pytest.raises(InputError, match=r"out\.jsonl is a directory; cannot write a file there"):
        write_jsonl(tmp_path / "out.jsonl", [_example(0)])
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


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
