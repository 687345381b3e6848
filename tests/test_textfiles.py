"""Users' text files: UTF-8 with or without a BOM, and one-line errors naming file:line for anything else."""

import json

import pytest

from certa.data.loaders import read_examples
from certa.errors import InputError
from certa.records import Example, iter_jsonl, read_jsonl
from certa.study.config import RunConfig, load_yaml_mapping
from certa.textfiles import iter_lines, read_json_object, read_text

ROW = {"id": "q1", "question": "Qu'est-ce que 2 + 2 ?", "answers": ["4"], "answer_type": "numeric"}


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROW, ensure_ascii=False).encode() + b"\r\n")
    (ex,) = read_examples(path)
    assert ex.id == "q1" and ex.question == ROW["question"]
    config = tmp_path / "run.yaml"
    config.write_bytes(b"\xef\xbb\xbfmodel: tiny\nseed: 3\n")
    assert load_yaml_mapping(config) == {"model": "tiny", "seed": 3}
    assert RunConfig.from_yaml(config).seed == 3


def test_bytes_that_are_not_utf8_name_file_line_and_column(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(ROW).encode()
    path.write_bytes(good + b"\n" + '{"id": "q2", "question": "caf\u00e9?"}\n'.encode("latin-1"))
    with pytest.raises(InputError) as err:
        read_examples(path)
    assert str(err.value) == (f"{path}:2: not UTF-8 text (byte 0xe9 at column 30); save the file as UTF-8")
    config = tmp_path / "run.yaml"
    config.write_bytes(b"model: tiny\n# caf\xe9\n")
    with pytest.raises(InputError, match=r"run\.yaml:2: not UTF-8 text \(byte 0xe9 at column 6\)"):
        load_yaml_mapping(config)


def test_utf16_and_binary_files_are_refused_in_one_line(tmp_path):
    path = tmp_path / "utf16.jsonl"
    path.write_bytes(json.dumps(ROW).encode("utf-16"))       # with its BOM, as Notepad writes it
    with pytest.raises(InputError, match=r"utf16\.jsonl: the file is UTF-16 text; save it as UTF-8"):
        read_jsonl(path, Example)
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x00\x01" + bytes(range(128, 256)))
    with pytest.raises(InputError, match=r"model\.bin:1: not UTF-8 text \(byte 0x80 at column 3\)"):
        list(iter_jsonl(path))


def test_line_numbers_follow_lf_crlf_and_lone_cr(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"a": 1}\r\n\r\n{"a": 2}\r{"a": 3}\n{oops\n')
    lines = list(iter_lines(path))
    assert [n for n, _ in lines] == [1, 2, 3, 4, 5]
    with pytest.raises(InputError, match=r"mixed\.jsonl:5: malformed JSON"):
        list(iter_jsonl(path))


def test_non_object_lines_and_deep_nesting_are_input_errors(tmp_path):
    path = tmp_path / "rows.jsonl"
    for line, message in [("[1, 2]", "expected a JSON object, got an array"),
                          ('"text"', "expected a JSON object, got a string"),
                          ("null", "expected a JSON object, got null"),
                          ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
                          ("1" * 5000, "malformed JSON")]:
        path.write_text('{"id": "x"}\n' + line + "\n")
        with pytest.raises(InputError, match=rf"rows\.jsonl:2: {message}"):
            list(iter_jsonl(path))


def test_read_text_and_read_json_object(tmp_path):
    path = tmp_path / "certa.json"
    path.write_bytes(b'\xef\xbb\xbf{\n  "method": "grace",\n  "x": [1,]\n}\n')
    assert read_text(path).startswith("{\n")
    with pytest.raises(InputError, match=r"certa\.json:3: malformed JSON"):
        read_json_object(path)
    path.write_text("[1]")
    with pytest.raises(InputError, match=r"certa\.json: expected a JSON object, got an array"):
        read_json_object(path)
    with pytest.raises(InputError, match=r"nope\.md: discussion file not found"):
        read_text(tmp_path / "nope.md", what="discussion file")
    with pytest.raises(InputError, match="cannot read"):
        read_text(tmp_path)  # a directory
