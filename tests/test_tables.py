"""Examples from pandas / datasets tables, and pandas views of records and results."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from certa.data.loaders import read_examples
from certa.data.tables import examples_from_table
from certa.errors import InputError, MissingDependencyError
from certa.evaluation import METRICS, evaluate
from certa.evaluation.frames import metrics_to_pandas, records_to_pandas, scores_to_pandas
from certa.records import Example, Record, write_jsonl

pd = pytest.importorskip("pandas")

ROWS = [
    {"id": "a", "question": "What is 3 + 4?", "answers": ["7"], "answer_type": "numeric", "choices": None},
    {"id": "b", "question": "Capital of France?", "answers": ["Paris", "paris"], "answer_type": "short",
     "choices": None},
    {"id": "c", "question": "Which is red?", "answers": ["B"], "answer_type": "choice",
     "choices": ["grass", "blood", "sky"]},
]


def test_dataframe_rows_become_the_same_examples_as_the_jsonl_file(tmp_path):
    frame = pd.DataFrame(ROWS)
    examples = examples_from_table(frame)
    write_jsonl(tmp_path / "ex.jsonl", [{k: v for k, v in r.items() if v is not None} for r in ROWS])
    assert examples == read_examples(tmp_path / "ex.jsonl")
    assert examples[2].choices == ["grass", "blood", "sky"] and examples[2].answer_type == "choice"


def test_table_cells_are_converted_from_what_pandas_holds():
    frame = pd.DataFrame({
        "id": [1, 2],                                           # numbers become ids "1", "2"
        "question": ["What is 2 + 2?", "Pick one"],
        "answers": [np.array(["4"]), "A"],                      # an array, or one answer on its own
        "answer_type": ["numeric", "choice"],
        "choices": [np.nan, np.array(["x", "y"])],              # NaN where a row has none
        "level": [np.int64(3), np.nan],                         # other columns go to meta
    })
    first, second = examples_from_table(frame, where="DataFrame")
    assert (first.id, first.answers, first.choices, first.meta) == ("1", ["4"], None, {"level": 3.0})
    assert (second.id, second.answers, second.choices, second.meta) == ("2", ["A"], ["x", "y"], {"level": None})
    assert type(first.meta["level"]) is float  # a plain Python number, so records stay JSON-writable


def test_datasets_dataset_and_list_of_dicts():
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_list([{**r, "choices": r["choices"] or []} for r in ROWS])
    from_ds = examples_from_table(table)
    assert [e.id for e in from_ds] == ["a", "b", "c"]
    assert from_ds[0].choices is None and from_ds[2].choices == ["grass", "blood", "sky"]
    assert examples_from_table(ROWS) == examples_from_table(pd.DataFrame(ROWS))
    with pytest.raises(InputError, match="DatasetDict.*table\\['test'\\]"):
        examples_from_table(datasets.DatasetDict({"test": table}))


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.drop(columns=["answers"]), r"DataFrame: no column 'answers' \(it has id, question, "),
    (lambda f: f.assign(question=["q", "", "q"]), r"DataFrame row 1: column 'question' is empty"),
    (lambda f: f.assign(id=["a", "b", "a"]), r"DataFrame row 2: id 'a' already used in row 0"),
    (lambda f: f.assign(answer_type=["numeric", "text", "choice"]), r"row 1: column 'answer_type' is 'text'"),
    (lambda f: f.assign(answers=[["seven"], ["Paris"], ["B"]]), r"row 0: answer 'seven' is not a number"),
    (lambda f: f.assign(answers=[["7"], ["Paris"], ["D"]]), r"row 2: example 'c': answers \['D'\] name none of its 3"),
    (lambda f: f.assign(choices=[None, None, "grass, blood"]), r"row 2: column 'choices' must hold a list"),
    (lambda f: f.assign(answers=[["7"], None, ["B"]]), r"row 1: column 'answers' is empty"),
    (lambda f: f.assign(id=[None, "b", "c"]), r"row 0: column 'id' must be a non-empty"),
    (lambda f: f.iloc[0:0], r"DataFrame: no rows"),
])
def test_errors_name_the_row_and_column(change, message):
    with pytest.raises(InputError, match=message):
        examples_from_table(change(pd.DataFrame(ROWS)), where="DataFrame")


def test_rejects_what_is_not_a_table():
    with pytest.raises(InputError, match="expected a pandas DataFrame, a datasets.Dataset or a list of dicts"):
        examples_from_table("examples.jsonl")
    with pytest.raises(InputError, match="table row 1: expected a mapping"):
        examples_from_table([ROWS[0], "b"])


def _records() -> list[Record]:
    return [
        Record(id="a", prompt="p", response="7", token_ids=[1, 2], token_logprobs=[-0.1, -0.2],
               confidence={"grace": 0.9}, question="q", answers=["7"], correct=1.0),
        Record(id="b", prompt="p", response="Lyon", token_ids=[3], token_logprobs=[-1.5],
               question="q2", answers=["Paris"], correct=0.0, meta={"level": 2}),
    ]


def test_records_to_pandas():
    frame = records_to_pandas(_records())
    assert list(frame["id"]) == ["a", "b"] and list(frame["correct"]) == [1.0, 0.0]
    assert list(frame["n_tokens"]) == [2, 1]
    assert frame["confidence.grace"].iloc[0] == 0.9 and math.isnan(frame["confidence.grace"].iloc[1])
    assert "token_logprobs" not in frame.columns and "hidden_state" not in frame.columns
    assert frame["meta"].iloc[1] == {"level": 2}
    full = records_to_pandas(_records(), per_token=True)
    assert full["token_logprobs"].iloc[0] == [-0.1, -0.2]


def test_metrics_and_scores_to_pandas_match_the_result():
    rng = np.random.default_rng(0)
    correct = rng.integers(0, 2, 40).astype(float)
    scores = {"good": np.clip(correct * 0.6 + rng.uniform(0, 0.4, 40), 0, 1), "flat": np.full(40, 0.5)}
    result = evaluate(correct, scores, n_bootstrap=100)
    wide = metrics_to_pandas(result)
    assert list(wide.index) == ["good", "flat"]
    for method in scores:
        for metric in METRICS:
            est = result.methods[method][metric]
            got = wide.loc[method, [metric, f"{metric}_low", f"{metric}_high"]].tolist()
            assert np.allclose(got, [est.value, est.low, est.high], equal_nan=True)
    assert wide.loc["flat", "mean_confidence"] == 0.5 and wide.loc["good", "n"] == 40
    assert wide.loc["flat", "brier"] == pytest.approx(np.mean((0.5 - correct) ** 2))
    long = metrics_to_pandas(result, long=True)
    assert len(long) == 1 + 2 * len(METRICS)
    assert long.iloc[0]["metric"] == "accuracy" and long.iloc[0]["value"] == pytest.approx(correct.mean())
    assert bool(long.set_index(["method", "metric"]).loc[("good", "auroc"), "higher_is_better"]) is True
    per_answer = scores_to_pandas(result)
    assert list(per_answer.columns) == ["correct", "good", "flat"]
    assert np.array_equal(per_answer["good"].to_numpy(), result.scores["good"])


def test_without_pandas_the_error_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'certa\[pandas\]'"):
        records_to_pandas(_records())
    # Reading tables never imports pandas itself: a list of dicts still works.
    assert examples_from_table(ROWS)[0] == Example(id="a", question="What is 3 + 4?", answers=["7"],
                                                   answer_type="numeric")
