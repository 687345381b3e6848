"""Reading ``lm_eval --log_samples`` files into graded records.

The fast tests read ``tests/fixtures/lm_eval/``: samples files that
lm-evaluation-harness 0.4.13 wrote (``python tests/lm_eval_run.py
tests/fixtures/lm_eval``: the tiny random-weight model of ``tests/tiny.py`` on
three offline custom tasks over local JSONL). The slow test runs lm_eval itself
and reads what it just wrote.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from certa.data.lm_eval import is_lm_eval_samples, read_lm_eval_samples, task_of
from certa.errors import CertaError, InputError
from certa.evaluation import evaluate
from certa.methods import get_method
from certa.records import Record, read_jsonl, write_jsonl

FIXTURES = Path(__file__).parent / "fixtures" / "lm_eval"


def fixture(task: str) -> Path:
    (path,) = FIXTURES.glob(f"samples_{task}_20*.jsonl")
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_detects_samples_files_and_nothing_else(tmp_path):
    for task in ("certa_gen", "certa_gen_aliases", "certa_mc"):
        assert is_lm_eval_samples(fixture(task))
    records = tmp_path / "records.jsonl"
    write_jsonl(records, [Record(id="a", prompt="p", response="r", correct=1.0)])
    assert not is_lm_eval_samples(records)
    assert not is_lm_eval_samples(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    assert not is_lm_eval_samples(tmp_path / "bad.jsonl")


def test_task_name_comes_from_the_file_name():
    assert task_of(fixture("certa_gen_aliases")) == "certa_gen_aliases"
    assert task_of("samples_mmlu_high_school_physics_2025-01-02T03-04-05.678901.jsonl") == "mmlu_high_school_physics"
    assert task_of("my_samples.jsonl") == "my_samples"


def test_generated_answers_carry_lm_evals_own_grade():
    path = fixture("certa_gen")
    records = read_lm_eval_samples(path)
    logged = rows(path)
    assert [r.id for r in records] == [f"certa_gen/{row['doc_id']}" for row in logged]
    for record, row in zip(records, logged, strict=True):
        assert record.response == row["filtered_resps"][0]
        assert record.answers == [row["target"]]
        assert record.correct == row["exact_match"]
        assert record.question == row["doc"]["question"]
        assert record.prompt == row["arguments"]["gen_args_0"]["arg_0"]
        assert record.meta["lm_eval"]["correct_metric"] == "exact_match"
    # lm_eval's exact_match with ignore_punctuation: the gold "?" and the tiny model's "::::::::"
    # both normalise to "", so that one is graded correct, the others not.
    assert [r.correct for r in records] == [0.0, 0.0, 0.0, 1.0, 0.0]


def test_list_targets_become_aliases_and_filters_are_chosen(caplog):
    path = fixture("certa_gen_aliases")
    with caplog.at_level(logging.WARNING, logger="certa.data.lm_eval"):
        raw = read_lm_eval_samples(path)
    assert "'first-word'" in caplog.text  # the filter not read is named
    assert [r.answers for r in raw] == [["Paris", "paris, France"], ["7", "seven"], ["?", "a question mark"]]
    assert {r.meta["lm_eval"]["filter"] for r in raw} == {"raw"}
    assert [r.correct for r in raw] == [0.0, 0.0, 1.0]
    first_word = read_lm_eval_samples(path, filter="first-word")
    assert [r.response for r in first_word] == ["[invalid]"] * 3  # the regex filter found no word
    assert [r.correct for r in first_word] == [0.0, 0.0, 0.0]
    with pytest.raises(InputError, match="no rows with filter 'strict'.*raw, first-word"):
        read_lm_eval_samples(path, filter="strict")
    with pytest.raises(InputError, match="no metric 'f1'.*exact_match"):
        read_lm_eval_samples(path, metric="f1")


def test_multiple_choice_picks_the_argmax_and_its_softmax_probability():
    path = fixture("certa_mc")
    records = read_lm_eval_samples(path)
    logged = rows(path)
    for record, row in zip(records, logged, strict=True):
        lls = np.array([float(ll) for ll, _ in row["filtered_resps"]])
        options = row["doc"]["choices"]
        assert record.choices == options
        assert record.response == options[int(np.argmax(lls))]
        assert record.correct == row["acc"]  # lm_eval's own grade of the same choice
        assert record.meta["choice_probability"] == pytest.approx(softmax(lls).max())
        lengths = np.array([len(o) for o in options], dtype=float)
        assert record.meta["choice_probability_norm"] == pytest.approx(softmax(lls / lengths)[np.argmax(lls)])
    # The first question by hand: log-likelihoods of " 7", " 8", " 12"; gold is "7".
    first = records[0]
    l7, l8, l12 = (float(ll) for ll, _ in logged[0]["filtered_resps"])
    assert (first.response, first.correct, first.answers) == ("8", 0.0, ["A", "7"])
    assert first.meta["choice_probability"] == pytest.approx(math.exp(l8) / (math.exp(l7) + math.exp(l8) + math.exp(l12)))
    n7, n8, n12 = l7 / 1, l8 / 1, l12 / 2  # per character of "7", "8", "12"
    assert first.meta["choice_probability_norm"] == pytest.approx(
        math.exp(n8) / (math.exp(n7) + math.exp(n8) + math.exp(n12)))


def test_length_normalised_selection_reproduces_acc_norm():
    path = fixture("certa_mc")
    records = read_lm_eval_samples(path, selection="norm")
    assert [r.correct for r in records] == [row["acc_norm"] for row in rows(path)]
    # "2 + 2": "4" has the highest log-likelihood, "five" the highest per character.
    fifth = records[4]
    assert (fifth.response, fifth.correct, fifth.meta["lm_eval"]["correct_metric"]) == ("five", 0.0, "acc_norm")
    assert read_lm_eval_samples(path)[4].response == "4"


def test_choice_probability_methods_read_the_meta_and_feed_evaluate(tmp_path):
    records = read_lm_eval_samples(fixture("certa_mc"))
    raw = get_method("choice_probability")(records)
    norm = get_method("choice_probability_norm")(records)
    assert raw == pytest.approx([r.meta["choice_probability"] for r in records])
    assert norm == pytest.approx([r.meta["choice_probability_norm"] for r in records])
    # A graded-records file written and read back keeps the meta the methods read.
    write_jsonl(tmp_path / "records.jsonl", records)
    again = read_jsonl(tmp_path / "records.jsonl", Record)
    assert get_method("choice_probability")(again) == pytest.approx(raw)
    result = evaluate(records, {"choice_probability": raw, "choice_probability_norm": norm}, n_bootstrap=50)
    assert result.n == 6 and result.accuracy.value == pytest.approx(4 / 6)
    brier = np.mean((raw - np.array([r.correct for r in records])) ** 2)
    assert result.methods["choice_probability"]["brier"].value == pytest.approx(brier)


def test_choice_probability_names_what_is_missing():
    generated = read_lm_eval_samples(fixture("certa_gen"))
    with pytest.raises(CertaError, match="certa_gen/0.*choice_probability.*multiple_choice"):
        get_method("choice_probability")(generated)


def test_generated_answers_can_be_scored_by_a_method_that_asks_the_model(tiny_lm):
    records = read_lm_eval_samples(fixture("certa_gen"))
    scores = get_method("p_true", model=tiny_lm)(records)  # builds its prompt from question + response
    assert scores.shape == (5,) and np.all((scores >= 0) & (scores <= 1))


def test_errors_name_file_and_line(tmp_path):
    logged = rows(fixture("certa_mc"))
    broken = tmp_path / "samples_x_2025-01-01T00-00-00.000000.jsonl"
    bad = dict(logged[1])
    del bad["resps"]
    broken.write_text(json.dumps(logged[0]) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(InputError, match=r"samples_x_.*:2: not an lm_eval --log_samples row"):
        read_lm_eval_samples(broken)
    # A loglikelihood task (one continuation per document) has no chosen answer.
    single = dict(logged[0], arguments={"gen_args_0": logged[0]["arguments"]["gen_args_0"]},
                  filtered_resps=logged[0]["filtered_resps"][:1], resps=logged[0]["resps"][:1])
    broken.write_text(json.dumps(single) + "\n")
    with pytest.raises(InputError, match=r":1: output type 'loglikelihood' has no chosen answer"):
        read_lm_eval_samples(broken)
    # An edited log-likelihood that no longer matches lm_eval's acc is caught.
    edited = dict(logged[0], filtered_resps=[["0.0", "False"]] + logged[0]["filtered_resps"][1:])
    broken.write_text(json.dumps(edited) + "\n")
    with pytest.raises(InputError, match=r":1: lm_eval's acc=0 disagrees"):
        read_lm_eval_samples(broken)
    with pytest.raises(InputError, match="selection"):
        read_lm_eval_samples(fixture("certa_mc"), selection="bytes")


@pytest.mark.slow
def test_round_trip_on_a_file_lm_eval_writes(tmp_path, tiny_model_dir):
    """lm_eval runs offline on the tiny model over local JSONL tasks; certa reads its samples files."""
    if importlib.util.find_spec("lm_eval") is None:
        pytest.skip("lm_eval is not installed (pip install 'lm_eval[hf]') — the round trip needs it")
    from lm_eval_run import MC, QA, run_lm_eval

    files = run_lm_eval(tmp_path, tiny_model_dir)
    gen = read_lm_eval_samples(files["certa_gen"])
    assert [r.answers[0] for r in gen] == [row["answer"] for row in QA]
    for record, row in zip(gen, rows(files["certa_gen"]), strict=True):
        assert record.correct == row["exact_match"]
        assert record.response == row["filtered_resps"][0]
    mc = read_lm_eval_samples(files["certa_mc"])
    assert [r.choices for r in mc] == [row["choices"] for row in MC]
    assert [r.correct for r in mc] == [row["acc"] for row in rows(files["certa_mc"])]
    assert [r.correct for r in read_lm_eval_samples(files["certa_mc"], selection="norm")] == \
        [row["acc_norm"] for row in rows(files["certa_mc"])]
    scores = get_method("choice_probability")(mc)
    assert np.all((scores > 0) & (scores <= 1))
    assert len(read_lm_eval_samples(files["certa_gen_aliases"], filter="first-word")) == 3
