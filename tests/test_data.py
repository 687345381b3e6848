"""Dataset loading: bundled and generated sets, JSONL files, splits, subsets, hf: references."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from collections import Counter

import pytest

from certa.data import dataset_names, describe_dataset, load_dataset, split_of, take_subset
from certa.data.arithmetic import arithmetic_examples
from certa.data.capitals import COUNTRIES, capitals_examples
from certa.data.grading import get_grader, gold_letter
from certa.data.hf import parse_hf_reference, row_to_example
from certa.data.make_bundled import BUNDLED_DIR, SUBSETS, Subset, select
from certa.errors import InputError, MissingDependencyError, UnknownNameError
from certa.records import Example

BUNDLED = ["gsm8k", "triviaqa", "truthfulqa", "mmlu", "strategyqa"]


def write_lines(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def row(i, **extra):
    return {"id": f"q{i}", "question": f"What is {i} + 1?", "answers": [str(i + 1)], "answer_type": "numeric", **extra}


# --- registry and bundled files --------------------------------------------------------------

def test_dataset_names_cover_bundled_and_generated():
    assert set(dataset_names()) == {"arithmetic", "arithmetic-easy", "capitals", "capitals-phrased", "continents",
                                    *BUNDLED}


def test_continents_cover_every_country_and_credit_only_continents():
    from certa.data.capitals import COUNTRIES
    from certa.data.continents import CONTINENT_OF, continent_answers

    assert set(CONTINENT_OF) == {names[0] for names, _ in COUNTRIES}
    examples = load_dataset("continents", split="all")
    by_country = {}
    for ex in examples:
        by_country.setdefault(ex.meta["subject"], []).append(ex)
    # names that give the continent away are left out; every other country is asked six ways
    assert {"South Africa", "Australia", "the Central African Republic"}.isdisjoint(by_country)
    assert all(len(v) == 6 for v in by_country.values()) and len(by_country) == len(COUNTRIES) - 3
    assert continent_answers("France") == ["Europe", "European"]
    assert set(continent_answers("Russia")) == {"Europe", "Asia", "European", "Asian", "Eurasia"}
    assert "Central America" in continent_answers("Honduras") and "Central America" not in continent_answers("Cuba")
    kenya = next(ex for ex in by_country["Kenya"] if ex.meta["phrasing"] == 0)
    assert kenya.question == "Which continent is Kenya in?"
    assert by_country["the Bahamas"][3].question == "The Bahamas lies on which continent?"
    grade = get_grader("short")
    graded = [grade(reply, kenya) for reply in
              ("Kenya is in East Africa.", "It is on the African continent.", "Kenya is in Asia.", "America")]
    assert graded == [1.0, 1.0, 0.0, 0.0]
    peru = next(ex for ex in by_country["Peru"])
    assert grade("Peru is in North America.", peru) == 0.0 and grade("South America", peru) == 1.0


@pytest.mark.parametrize("name", ["capitals-phrased", "arithmetic-easy", "continents"])
def test_phrasings_of_one_fact_share_a_split_and_test_has_300_answers(name):
    from certa.data.loaders import split_key

    examples = load_dataset(name, split="all")
    splits: dict[str, set[str]] = {}
    for ex in examples:
        splits.setdefault(split_key(ex), set()).add(split_of(split_key(ex)))
    assert all(len(s) == 1 for s in splits.values())
    assert sum(len(members) > 1 for members in _groups(examples).values()) > 50  # several phrasings per fact
    test = load_dataset(name, split="test")
    assert len(test) >= 300 and {split_key(ex) for ex in test}.isdisjoint(
        {split_key(ex) for ex in load_dataset(name, split="train")})


def _groups(examples):
    from certa.data.loaders import split_key

    groups: dict[str, list] = {}
    for ex in examples:
        groups.setdefault(split_key(ex), []).append(ex)
    return groups


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_datasets_load_with_valid_gold_answers(name):
    examples = load_dataset(name, split="all")
    assert len(examples) >= 290
    assert len({ex.id for ex in examples}) == len(examples)
    for ex in examples:
        if ex.answer_type == "choice":
            gold_letter(ex)   # raises if the gold names no option
    assert str(len(examples)) in describe_dataset(name)


def test_bundled_subsets_match_their_recipe():
    sizes = {name: len(load_dataset(name, split="all")) for name in BUNDLED}
    assert sizes == {"gsm8k": 500, "triviaqa": 600, "truthfulqa": 790, "mmlu": 570, "strategyqa": 290}
    subjects = Counter(ex.meta["subject"] for ex in load_dataset("mmlu", split="all"))
    assert len(subjects) == 57 and set(subjects.values()) == {10}
    assert Counter(ex.answers[1] for ex in load_dataset("strategyqa", split="all")) == {"Yes": 145, "No": 145}


def test_bundled_folder_has_licenses_and_no_unlicensed_data():
    names = {p.name for p in BUNDLED_DIR.iterdir()}
    assert {"NOTICE.md", "LICENSES"} <= names
    assert not any("conftuner_train" in n for n in names)
    assert {s.name for s in SUBSETS} == set(BUNDLED)


def test_make_bundled_selection_is_deterministic_and_grouped():
    examples = [Example(id=f"x{i}", question="q?", answers=["a"], meta={"g": i % 3}) for i in range(30)]
    subset = Subset("t", "unused", rows=2, group_by="g")
    chosen = select(examples, subset)
    assert chosen == select(list(reversed(examples)), subset)[::-1]     # independent of input order
    assert Counter(ex.meta["g"] for ex in chosen) == {0: 2, 1: 2, 2: 2}
    assert [int(ex.id[1:]) for ex in chosen] == sorted(int(ex.id[1:]) for ex in chosen)


def test_truthfulqa_is_graded_by_contrast_f1():
    ex = load_dataset("truthfulqa", split="all")[0]
    assert ex.meta["grader"] == "contrast_f1" and ex.meta["incorrect_answers"]


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(UnknownNameError, match="Did you mean 'gsm8k'"):
        load_dataset("gsm8")


# --- generated datasets ---------------------------------------------------------------------

def test_arithmetic_is_deterministic_with_correct_answers():
    examples = arithmetic_examples()
    assert [ex.id for ex in examples] == [ex.id for ex in arithmetic_examples()]
    assert 1200 <= len(examples) <= 1700 and len({ex.id for ex in examples}) == len(examples)
    add, sub, mul = (lambda a, b: a + b), (lambda a, b: a - b), (lambda a, b: a * b)
    ops = {"+": add, "plus": add, "-": sub, "minus": sub, "×": mul, "times": mul}
    for ex in examples:
        a, op, b = ex.question.removeprefix("What is ").removesuffix("?").split()
        a, b = int(a), int(b)
        assert ex.answers == [str(ops[op](a, b))] and int(ex.answers[0]) >= 0
        assert op.isalpha() == ex.meta["level"].endswith("-words")
        both_tens = a % 10 == 0 and b % 10 == 0 and min(a, b) >= 10
        assert both_tens == ex.meta["level"].endswith("-tens")   # round numbers form their own level
    levels = Counter(ex.meta["level"] for ex in examples)
    # one-digit levels hold every pair: 10·10 sums, 55 non-negative differences, 8·8 products of 2..9
    assert (levels["add-1x1"], levels["sub-1x1"], levels["mul-1x1"]) == (100, 55, 64)
    assert (levels["add-2x2-tens"], levels["sub-2x2-tens"]) == (81, 45)


def test_capitals_have_aliases_and_skip_ambiguous_questions():
    examples = {ex.id: ex for ex in capitals_examples()}
    assert len(COUNTRIES) >= 150 and len(examples) >= 300
    assert examples["capitals-ukraine-capital"].answers == ["Kyiv", "Kiev"]
    assert examples["capitals-france-capital"].question == "What is the capital of France?"
    assert "Czechia" in examples["capitals-czech-republic-country"].answers
    # "Guinea" is inside "Equatorial Guinea" and "Kuwait" inside "Which country has Kuwait City ...":
    assert "capitals-guinea-country" not in examples and "capitals-kuwait-country" not in examples
    assert "capitals-guinea-capital" in examples
    grader = get_grader("short")
    ex = examples["capitals-ukraine-capital"]
    assert grader("The capital of Ukraine is Kiev.", ex) == 1.0
    assert grader("Lviv", ex) == 0.0


# --- splits and subsets ---------------------------------------------------------------------

def test_split_of_is_stable_and_roughly_60_10_30():
    ids = [f"item-{i}" for i in range(20000)]
    counts = Counter(split_of(i) for i in ids)
    assert abs(counts["train"] / 20000 - 0.6) < 0.02
    assert abs(counts["calibration"] / 20000 - 0.1) < 0.01
    assert abs(counts["test"] / 20000 - 0.3) < 0.02


def test_split_of_follows_sha1_of_the_id():
    # Recomputed independently, so a change of hash (or of the fractions) would show here.
    for example_id in ("q1", "capitals-france-capital", "ünïcode"):
        u = int(hashlib.sha1(example_id.encode()).hexdigest()[:16], 16) / 2**64
        assert split_of(example_id) == ("train" if u < 0.6 else "calibration" if u < 0.7 else "test")


def test_splits_are_disjoint_and_cover_all():
    parts = {s: load_dataset("arithmetic", split=s) for s in ("train", "calibration", "test")}
    ids = [ex.id for part in parts.values() for ex in part]
    assert len(ids) == len(set(ids)) == len(load_dataset("arithmetic", split="all"))
    assert all(split_of(ex.id) == s for s, part in parts.items() for ex in part)


def test_unknown_split_and_bad_limit():
    with pytest.raises(UnknownNameError, match="unknown split 'tset'"):
        load_dataset("arithmetic", split="tset")
    with pytest.raises(InputError, match="limit must be a positive"):
        load_dataset("arithmetic", limit=0)


def test_limit_is_stable_seeded_and_keeps_order():
    full = load_dataset("arithmetic", split="test")
    first = load_dataset("arithmetic", split="test", limit=100)
    assert [ex.id for ex in first] == [ex.id for ex in load_dataset("arithmetic", split="test", limit=100)]
    assert len(first) == 100
    positions = [next(i for i, ex in enumerate(full) if ex.id == f.id) for f in first]
    assert positions == sorted(positions)
    other_seed = load_dataset("arithmetic", split="test", limit=100, seed=1)
    assert {ex.id for ex in other_seed} != {ex.id for ex in first}
    assert len(load_dataset("capitals", split="test", limit=10**6)) == len(load_dataset("capitals", split="test"))


def test_take_subset_survives_added_examples():
    base = [Example(id=f"e{i}", question="q?", answers=["a"]) for i in range(200)]
    extra = [Example(id=f"new{i}", question="q?", answers=["a"]) for i in range(20)]
    before = {ex.id for ex in take_subset(base, 50)}
    after = {ex.id for ex in take_subset(base + extra, 50)}
    assert len(before & after) >= 40   # only items displaced by new ones with smaller hashes change


# --- JSONL files ----------------------------------------------------------------------------

def test_jsonl_good_file(tmp_path):
    path = write_lines(tmp_path / "mine.jsonl", [row(i) for i in range(10)] + [
        {"id": 99, "question": "Pick", "answers": ["B", "no"], "answer_type": "choice", "choices": ["yes", "no"],
         "difficulty": "easy"}])
    examples = load_dataset(str(path), split="all")
    assert len(examples) == 11
    assert examples[-1].id == "99" and examples[-1].meta == {"difficulty": "easy"}
    assert load_dataset(path, split="test", limit=2) == load_dataset(str(path), split="test", limit=2)


@pytest.mark.parametrize(("lines", "message"), [
    ([row(1), "{not json"], r"bad\.jsonl:2: malformed JSON"),
    ([row(1), {"id": "x", "answers": ["1"]}], r"bad\.jsonl:2: missing field 'question'"),
    ([row(1), row(2), row(1)], r"bad\.jsonl:3: id 'q1' already used on line 1"),
    ([row(1), {**row(2), "answers": ["two"]}], r"bad\.jsonl:2: answer 'two' is not a number"),
    ([{**row(1), "answers": []}], r"bad\.jsonl:1: field 'answers' is empty"),
    ([{**row(1), "answer_type": "essay"}], r"bad\.jsonl:1: .*'answer_type' is 'essay'"),
    ([{**row(1), "answer_type": "choice", "choices": ["a", "b"], "answers": ["C"]}],
     r"bad\.jsonl:1: .*name none of its 2 choices"),
    (["", "   "], r"bad\.jsonl: no examples"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, lines, message):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(InputError, match=message):
        load_dataset(str(path), split="all")


def test_missing_file_and_empty_split(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_dataset(str(tmp_path / "absent.jsonl"))
    path = write_lines(tmp_path / "one.jsonl", [row(1)])
    wrong = next(s for s in ("train", "calibration", "test") if s != split_of("q1"))
    with pytest.raises(InputError, match=f"split '{wrong}' has no examples"):
        load_dataset(str(path), split=wrong)


# --- Hugging Face references ----------------------------------------------------------------

def test_parse_hf_reference():
    assert parse_hf_reference("openai/gsm8k:main@train") == ("openai/gsm8k", "main", "train")
    assert parse_hf_reference("mandarjoshi/trivia_qa") == ("mandarjoshi/trivia_qa", None, "test")


@pytest.mark.parametrize(("raw", "expected"), [
    ({"question": "Q", "answer": "Work: 2 + 2 = 4\n#### 1,004"}, (["1004"], "numeric", None)),
    ({"question": "Q", "answer": {"value": "Paris", "aliases": ["Paris", "Paree"]}}, (["Paris", "Paree"], "short", None)),
    ({"query": "Q", "answers": {"text": ["a", "b"], "answer_start": [0, 3]}}, (["a", "b"], "short", None)),
    ({"problem": "Q", "answer": 7}, (["7"], "numeric", None)),
    ({"question": "Q", "answer": True}, (["A", "Yes"], "choice", ["Yes", "No"])),
    ({"question": "Q", "choices": ["x", "y", "z"], "answer": 2}, (["C", "z"], "choice", ["x", "y", "z"])),
    ({"question": "Q", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "B"},
     (["B", "y"], "choice", ["x", "y"])),
    ({"question": "Q", "options": ["x", "y"], "answer": "x"}, (["A", "x"], "choice", ["x", "y"])),
])
def test_hf_rows_map_onto_examples(raw, expected):
    ex = row_to_example(raw, 3, "hf:me/set")
    assert (ex.answers, ex.answer_type, ex.choices) == expected
    assert ex.id == "me/set-3" and ex.question == "Q"


def test_hf_row_without_question_column_names_the_columns():
    with pytest.raises(InputError, match="row 0: no question column .*columns are text, answer"):
        row_to_example({"text": "Q", "answer": "a"}, 0, "hf:me/set")


def test_hf_loading_goes_through_the_datasets_library(monkeypatch):
    calls = []

    def fake_load(name, config, split):
        calls.append((name, config, split))
        return [{"id": "a1", "question": "What is 2 + 2?", "answer": "#### 4"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load))
    [ex] = load_dataset("hf:openai/gsm8k:main@train", split="all")
    assert calls == [("openai/gsm8k", "main", "train")]
    assert (ex.id, ex.answers, ex.source) == ("a1", ["4"], "hf:openai/gsm8k:main")


def test_hf_loading_failure_is_one_line(monkeypatch):
    def offline(name, config, split):
        raise ConnectionError("Couldn't reach the Hub\nlong traceback text")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(InputError, match=r"could not load Hugging Face dataset 'x/y' \(split 'test'\): "
                                         r"Couldn't reach the Hub$"):
        load_dataset("hf:x/y", split="all")


def test_hf_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)   # makes `import datasets` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'certa\[hf\]'"):
        load_dataset("hf:x/y")
