"""certa.evaluation and certa.report: evaluate() on records, metrics.json, the table and the HTML report."""

from __future__ import annotations

import base64
import json
import math
import re

import numpy as np
import pytest
from rich.console import Console

from certa import metrics
from certa.errors import InputError, UnknownNameError
from certa.evaluation import METRICS, EvaluationResult, evaluate
from certa.records import Record
from certa.versions import package_versions

N = 120


@pytest.fixture(scope="module")
def graded() -> tuple[list[Record], dict[str, np.ndarray]]:
    """Graded records and three methods: informative, weakly informative, constant."""
    rng = np.random.default_rng(0)
    correct = (rng.random(N) < 0.45).astype(float)
    records = [Record(id=str(i), prompt=f"q{i}", response="a", correct=float(c)) for i, c in enumerate(correct)]
    scores = {
        "good": np.clip(0.25 + 0.5 * correct + 0.15 * rng.standard_normal(N), 0, 1),
        "weak": np.clip(0.7 + 0.1 * correct + 0.2 * rng.standard_normal(N), 0, 1),
        "constant": np.full(N, 0.5),
    }
    return records, scores


@pytest.fixture(scope="module")
def result(graded) -> EvaluationResult:
    records, scores = graded
    return evaluate(records, scores, n_bootstrap=200, seed=1,
                    extra={"dataset": "toy", "limit": np.int64(N)},
                    extra_per_method={"weak": {"parse_failures": 3}})


def test_evaluate_on_records_writes_every_metric_in_range(result, graded, tmp_path):
    records, scores = graded
    path = result.save(tmp_path / "run")
    assert path == tmp_path / "run" / "metrics.json"
    data = json.loads(path.read_text())
    assert data["n"] == N and data["n_bins"] == 10
    assert data["accuracy"]["value"] == pytest.approx(np.mean([r.correct for r in records]))
    assert data["ci"] == {"method": "percentile bootstrap", "level": 0.95, "n_resamples": 200, "seed": 1}
    assert set(data["methods"]) == set(scores)
    for name, entry in data["methods"].items():
        for metric in METRICS:
            value, (low, high) = entry[metric]["value"], entry[metric]["ci"]
            upper = math.inf if metric == "nll" else 1.0
            assert 0.0 <= low <= high <= upper, (name, metric)
            assert 0.0 <= value <= upper, (name, metric)
        assert sum(entry["reliability"]["count"]) == N
    assert data["methods"]["weak"]["extra"] == {"parse_failures": 3}
    assert data["extra"] == {"dataset": "toy", "limit": N}
    assert data["versions"]["numpy"] == np.__version__


def test_point_estimates_are_the_metric_functions(result, graded):
    _, scores = graded
    correct = result.correct
    conf = scores["good"]
    expected = {
        "ece": metrics.ece(conf, correct, 10, "uniform"),
        "ace": metrics.ece(conf, correct, 10, "quantile"),
        "mce": metrics.mce(conf, correct, 10),
        "brier": metrics.brier(conf, correct),
        "nll": metrics.nll(conf, correct),
        "auroc": metrics.auroc(conf, correct),
        "auprc": metrics.auprc(conf, correct),
        "aurc": metrics.aurc(conf, correct),
    }
    assert {m: est.value for m, est in result.methods["good"].items()} == pytest.approx(expected)
    assert result.methods["constant"]["auroc"].value == pytest.approx(0.5)


def test_records_and_a_correctness_array_give_the_same_result(result, graded):
    records, scores = graded
    from_array = evaluate(np.array([r.correct for r in records]), scores, n_bootstrap=200, seed=1)
    assert from_array.methods == result.methods
    assert from_array.accuracy == result.accuracy


def test_best_and_ranking_follow_the_metric_direction(result):
    assert result.best("auroc") == "good"
    assert result.best("brier") == "good"
    assert result.ranked("auroc")[-1] == "constant"
    assert result.winners()["auroc"] == "good"
    with pytest.raises(UnknownNameError, match="metric 'aurco'"):
        result.best("aurco")


def test_table_lists_methods_best_brier_first(result):
    table = result.table()
    assert len(table.rows) == 3 and len(table.columns) == 1 + len(METRICS)
    console = Console(record=True, width=220)
    console.print(table)
    text = console.export_text()
    order = [text.index(name) for name in result.ranked("brier")]
    assert order == sorted(order) and result.ranked("brier")[0] == "good"
    assert "n=120" in text


def test_save_with_a_report_writes_the_report_first(result, tmp_path, monkeypatch):
    import certa.evaluation.result as result_module

    path = result.save(tmp_path / "run", report_title="toy")
    assert (tmp_path / "run" / "report.html").read_text().count("toy") >= 1 and path.exists()

    def failing_report(*args, **kwargs):
        raise OSError("disk full")

    # metrics.json marks a finished evaluation; it was written before a report that then failed
    monkeypatch.setattr(result_module, "write_report", failing_report)
    with pytest.raises(OSError, match="disk full"):
        result.save(tmp_path / "again", report_title="toy")
    assert not (tmp_path / "again" / "metrics.json").exists()


def test_to_html_embeds_one_figure_per_method_plus_the_overview(result, tmp_path):
    path = result.to_html(tmp_path / "report.html", title="toy <run>")
    page = path.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(result.methods) + 1
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    for name in result.methods:
        assert f"<h2>{name}</h2>" in page
    assert "toy &lt;run&gt;" in page                       # the title is escaped
    assert "parse_failures: 3" in page                     # per-method extra is shown
    assert "<script" not in page and "<link" not in page   # nothing external to fetch


def test_one_method_on_single_class_correctness(tmp_path):
    # AUROC is undefined (null / n/a), and with one method nothing is marked best.
    res = evaluate(np.ones(20), {"m": np.linspace(0.1, 0.9, 20)}, n_bootstrap=20)
    assert math.isnan(res.methods["m"]["auroc"].value)
    data = json.loads(res.save(tmp_path).read_text())
    assert data["methods"]["m"]["auroc"] == {"value": None, "ci": [None, None]}
    assert res.winners() == {}
    page = res.to_html(tmp_path / "r.html").read_text()
    assert "n/a" in page and "class=best" not in page


def test_without_bootstrap_intervals_are_null(graded, tmp_path):
    records, scores = graded
    res = evaluate(records, scores, n_bootstrap=0)
    data = json.loads(res.save(tmp_path).read_text())
    assert data["methods"]["good"]["brier"]["ci"] == [None, None]
    assert data["methods"]["good"]["brier"]["value"] == pytest.approx(metrics.brier(scores["good"], res.correct))


def test_bad_inputs_name_the_method(graded, tmp_path):
    records, scores = graded
    with pytest.raises(InputError, match=r"method 'short': confidence has 3 values but correct has 120"):
        evaluate(records, {"short": np.array([0.1, 0.2, 0.3])})
    with pytest.raises(InputError, match=r"method 'bad': confidence\[0\] is nan"):
        evaluate(records, {"bad": np.full(N, np.nan)})
    with pytest.raises(InputError, match="no scores"):
        evaluate(records, {})
    with pytest.raises(InputError, match="no records"):
        evaluate([], {"m": []})
    with pytest.raises(InputError, match="n_bootstrap"):
        evaluate(records, scores, n_bootstrap=-1)
    with pytest.raises(InputError, match="extra value of type object is not JSON serialisable"):
        evaluate(records, scores, n_bootstrap=0, extra={"bad": object()}).save(tmp_path)
    with pytest.raises(UnknownNameError, match="'gooood'"):
        evaluate(records, scores, extra_per_method={"gooood": {}})


def test_package_versions_come_from_metadata():
    versions = package_versions()
    assert set(versions) == {"python", "certa", "torch", "transformers", "peft", "accelerate", "numpy", "sklearn"}
    assert versions["numpy"] == np.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", versions["python"])
