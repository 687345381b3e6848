"""The CLI end to end on the tiny model, and its handling of bad input (one line, exit code 2)."""

from __future__ import annotations

import json
import re
import typing

import numpy as np
import pytest
from cli_run import run_cli  # tests/cli_run.py

from certa.records import Generation, Record, read_jsonl, write_jsonl


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "questions.jsonl"
    rows = [{"id": f"q{i}", "question": f"What is {i} + {i}?", "answers": [str(2 * i)], "answer_type": "numeric"}
            for i in range(6)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def graded_records(tmp_path):
    """Records with mixed correctness and a signal in the log-probs, as a real run would give."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(60):
        correct = float(i % 3 != 0)
        n = int(rng.integers(2, 6))
        logprobs = list(rng.normal(-0.3 if correct else -1.5, 0.3, size=n).clip(max=0))
        records.append(Record(id=f"r{i}", prompt="p", response=str(i), token_ids=list(range(n)),
                              token_logprobs=logprobs, token_entropies=list(rng.uniform(0, 2, n)),
                              hidden_state=list(rng.normal(correct, 1.0, size=8)),
                              question=f"q{i}", answers=[str(i)], answer_type="numeric", correct=correct,
                              meta={"vocab_size": 100}))
    path = tmp_path / "records.jsonl"
    write_jsonl(path, records)
    return path


def test_generate_grade_score_evaluate_on_tiny_model(capsys, tmp_path, tiny_model_dir, questions):
    gens, records, scores, evaldir = (tmp_path / n for n in ("g.jsonl", "r.jsonl", "s.jsonl", "eval"))
    code, _, err = run_cli(capsys, "generate", "-m", str(tiny_model_dir), "-d", str(questions), "--split", "all",
                           "--max-new-tokens", "6", "--batch-size", "4", "-o", str(gens))
    assert code == 0, err
    assert len(read_jsonl(gens, Generation)) == 6
    code, _, err = run_cli(capsys, "grade", "--in", str(gens), "-d", str(questions), "-o", str(records))
    assert code == 0, err
    code, _, err = run_cli(capsys, "score", "--in", str(records), "-m", str(tiny_model_dir), "-o", str(scores),
                           "--method", "sequence_likelihood,token_entropy,p_true,verbalized")
    assert code == 0, err
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert len(rows) == 6 and set(rows[0]["scores"]) == {"sequence_likelihood", "token_entropy", "p_true", "verbalized"}
    assert all(0 <= v <= 1 for row in rows for v in row["scores"].values())


def test_score_fit_and_evaluate_write_metrics_and_report(capsys, tmp_path, graded_records):
    scores, evaldir = tmp_path / "s.jsonl", tmp_path / "eval"
    code, _, err = run_cli(capsys, "score", "--in", str(graded_records), "--fit", str(graded_records),
                           "--method", "sequence_likelihood,token_entropy,linear_probe,sequence_likelihood+platt",
                           "-o", str(scores))
    assert code == 0, err
    code, _, err = run_cli(capsys, "evaluate", "--in", str(scores), "-o", str(evaldir), "--n-bootstrap", "50")
    assert code == 0, err
    metrics = json.loads((evaldir / "metrics.json").read_text())
    html = (evaldir / "report.html").read_text()
    assert "data:image/png;base64" in html
    text = json.dumps(metrics)
    for name in ("sequence_likelihood", "linear_probe", "sequence_likelihood+platt"):
        assert name in text and name in html


def test_evaluate_explains_an_interval_that_excludes_its_point_estimate(capsys, tmp_path):
    # Five confidence levels, each right exactly as often as it says: ECE 0. A resample's accuracy per level
    # drifts from its confidence, so every resample reads an ECE above 0 (the binned ECE's small-sample bias).
    levels = [0.1, 0.3, 0.5, 0.7, 0.9]
    rows = [{"id": f"r{level}-{i}", "correct": float(i < round(level * 20)), "scores": {"levels": level}}
            for level in levels for i in range(20)]
    scores = tmp_path / "s.jsonl"
    scores.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, out, err = run_cli(capsys, "evaluate", "--in", str(scores), "-o", str(tmp_path / "eval"),
                             "--n-bootstrap", "50")
    assert code == 0, err
    assert "excludes its point estimate (ECE)" in " ".join(out.split())
    ece = json.loads((tmp_path / "eval" / "metrics.json").read_text())["methods"]["levels"]["ece"]
    assert ece["value"] < 1e-12 and ece["ci"][0] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["score", "--in", "{records}", "--method", "sequence_likelihod"], "Did you mean 'sequence_likelihood'"),
        (["generate", "-d", "arithmetc", "-o", "{tmp}/g.jsonl"], "unknown dataset 'arithmetc'"),
        (["score", "--in", "{bad}"], "bad.jsonl:2: malformed JSON"),
        (["evaluate", "--in", "{tmp}/missing.jsonl"], "missing.jsonl: file not found"),
        (["run", "{config}"], "unknown key 'modle'"),
        (["score", "--in", "{records}", "-o", "{records}/x/scores.jsonl"], "error:"),
        (["generate", "-m", "{tmp}/no-such-model", "-o", "{tmp}/g.jsonl"], "no-such-model"),
        (["run", "{empty}"], "empty.yaml: the config is empty"),                 # ran the whole default study
        (["evaluate", "--in", "{outside}"], "outside.jsonl:2: field 'scores.m' = 1.7 is outside [0, 1]"),
        (["serve", "--max-batch", "0"], "--max-batch: Input should be greater than or equal to 1"),  # a traceback
        # refused before the model loads (the path below does not exist: loading it would be the error)
        (["train", "grace", "-m", "{tmp}/no-such-model", "-o", "{tmp}/a", "--records", "{tmp}/missing.jsonl"],
         "missing.jsonl: file not found"),
        (["train", "grace", "-m", "{tmp}/no-such-model", "-o", "{tmp}/a", "--records", "{empty}"],
         "empty.yaml: no records"),
        # an unwritable --out is refused before any model is loaded or asked (they failed after the work)
        (["cascade", "--in", "{records}", "--scores", "{outside}", "--strong", "{tmp}/no-such-model", "-o", "{records}"],
         "records.jsonl: exists and is not a directory"),
        (["self-correct", "--in", "{records}", "--scores", "{outside}", "-m", "{tmp}/no-such-model", "-o", "{records}"],
         "records.jsonl: exists and is not a directory"),
        (["scale", "--in", "{records}", "-o", "{records}"], "records.jsonl: exists and is not a directory"),
        (["generate", "-m", "{tmp}/no-such-model", "-o", "{tmp}"], "is a directory; name a file to write"),
        (["evaluate", "--in", "{outside}", "-o", "{records}"], "records.jsonl: exists and is not a directory"),
        (["report", "--in", "{outside}", "-o", "{tmp}"], "is a directory; name a file to write"),
        (["demo", "-o", "{records}/demo"], "records.jsonl is a file, not a directory"),
        (["score", "--in", "{records}", "--method", ","], "--method ',': name at least one method"),  # wrote no scores
        (["score", "--in", "{records}", "--dataset", "arithmetic"], "drop --dataset arithmetic"),  # was ignored
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(capsys, tmp_path, graded_records, args, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "p", "response": "r", "correct": 1}\n{"id": \n')
    config = tmp_path / "c.yaml"
    config.write_text("modle: default\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    outside = tmp_path / "outside.jsonl"                  # said "confidence[1] = 1.7", no file, no line
    outside.write_text('{"correct": 1, "scores": {"m": 0.5}}\n{"correct": 0, "scores": {"m": 1.7}}\n')
    fmt = {"records": graded_records, "bad": bad, "tmp": tmp_path, "config": config, "empty": empty,
           "outside": outside}
    code, out, err = run_cli(capsys, *[a.format(**fmt) for a in args])
    assert code == 2, (out, err)
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g.jsonl").exists()  # nothing half-written


def test_training_options_show_their_defaults_and_take_a_union_fields_words(capsys, monkeypatch):
    from certa.cli.fields import field_options, given_values
    from certa.methods.grace import GraceConfig

    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = run_cli(capsys, "train", "grace", "--help")
    assert code == 0 and "[default: 12.0]" in out                     # Rich markup had swallowed it
    probe_c = next(p for p in field_options(GraceConfig) if p.name == "probe_c")
    assert str in typing.get_args(typing.get_args(probe_c.annotation)[0])   # parsed as text, not as a float
    assert GraceConfig(**given_values(GraceConfig, {"probe_c": "cv"})).probe_c == "cv"
    assert GraceConfig(**given_values(GraceConfig, {"probe_c": "0.01"})).probe_c == 0.01


def test_a_usage_error_is_clicks_message_not_a_traceback(capsys, tmp_path):
    code, out, err = run_cli(capsys, "grade", "--in", "x.jsonl", "--no-such-flag")
    assert code == 2
    assert "No such option" in err and "Traceback" not in err + out
    # out-of-range generation options are refused as usage errors, before any model loads
    code, out, err = run_cli(capsys, "generate", "-m", str(tmp_path / "no-such-model"), "-o", str(tmp_path / "g.jsonl"),
                             "--batch-size", "0")
    assert code == 2 and "Invalid value for '--batch-size'" in err and "no-such-model" not in err


def test_methods_lists_every_registered_method(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    from certa.methods import method_names

    names = method_names()
    assert len(names) >= 7
    for name in names:
        assert name in out


@pytest.fixture
def sampled_records(tmp_path):
    """Arithmetic-like records with 4 samples each and a per-sample GrACE confidence."""
    records = []
    for i in range(8):
        gold = str(i + 2)
        samples = [gold, gold, str(i + 9), gold] if i % 2 else [str(i + 9), gold, str(i + 9), str(i + 9)]
        conf = [0.9 if s == gold else 0.2 for s in samples]
        records.append(Record(id=f"s{i}", prompt="p", response=samples[0], question=f"What is {i} + 2?",
                              answers=[gold], answer_type="numeric", correct=float(samples[0] == gold),
                              samples=samples, sample_correct=[float(s == gold) for s in samples],
                              sample_confidence={"grace": conf}))
    path = tmp_path / "sampled.jsonl"
    write_jsonl(path, records)
    return path


def test_scale_writes_strategies_and_plot(capsys, tmp_path, sampled_records):
    out = tmp_path / "scale"
    code, stdout, err = run_cli(capsys, "scale", "--in", str(sampled_records), "--budget", "4", "-o", str(out))
    assert code == 0, err
    result = json.loads((out / "scaling.json").read_text())["results"]
    # Odd questions: majority is right; even ones: majority is wrong but confidence picks the gold answer.
    assert result["sc"]["accuracy"] == 0.5 and result["grace_sc"]["accuracy"] == 1.0
    assert result["grace_es"]["mean_samples"] < 4
    assert (out / "scaling.png").stat().st_size > 0 and "grace_es" in stdout
    # a typo'd confidence name silently dropped GrACE-SC and GrACE-ES; a threshold of 2 was accepted
    for flag, value, message in (("--confidence", "grase", "confidence .grase.: the records carry per-sample "
                                  "confidences of grace"), ("--tau", "2", "--tau is a confidence threshold")):
        code, _, err = run_cli(capsys, "scale", "--in", str(sampled_records), flag, value, "-o", str(tmp_path / "x"))
        assert code == 2 and re.search(message, err) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cascade_and_self_correct_run_from_the_cli(capsys, tmp_path, tiny_model_dir, graded_records):
    scores = tmp_path / "s.jsonl"
    code, _, err = run_cli(capsys, "score", "--in", str(graded_records), "--method", "sequence_likelihood",
                           "-o", str(scores))
    assert code == 0, err
    code, stdout, err = run_cli(capsys, "cascade", "--in", str(graded_records), "--scores", str(scores),
                                "--method", "sequence_likelihood", "--strong", str(tiny_model_dir),
                                "--max-new-tokens", "4", "-o", str(tmp_path / "cascade"))
    assert code == 0, err
    cascade = json.loads((tmp_path / "cascade" / "cascade.json").read_text())
    first = cascade["curve"][0]
    assert first["k"] == 0 and first["accuracy"] == pytest.approx(40 / 60)  # k=0: the small model alone
    code, _, err = run_cli(capsys, "self-correct", "--in", str(graded_records), "--scores", str(scores),
                           "--method", "sequence_likelihood", "-m", str(tiny_model_dir), "--max-new-tokens", "4",
                           "-o", str(tmp_path / "sc"))
    assert code == 0, err
    result = json.loads((tmp_path / "sc" / "self_correct.json").read_text())
    assert result["accuracy_before"] == pytest.approx(40 / 60)


def _scores_file(path, conf, correct):
    write_jsonl(path, [{"id": f"q{i}", "correct": float(y), "scores": {"m": float(c)}}
                       for i, (c, y) in enumerate(zip(conf, correct, strict=True))])
    return path


def test_abstain_certifies_a_threshold_and_reports_the_test_outcome(capsys, tmp_path):
    from certa.uses.selective import apply_threshold, select_threshold

    rng = np.random.default_rng(0)
    cal_conf, test_conf = rng.random(400), rng.random(400)
    cal_y = (rng.random(400) < cal_conf).astype(float)      # P(correct | c) = c
    test_y = (rng.random(400) < test_conf).astype(float)
    cal = _scores_file(tmp_path / "cal.jsonl", cal_conf, cal_y)
    test = _scores_file(tmp_path / "test.jsonl", test_conf, test_y)
    code, out, err = run_cli(capsys, "abstain", "--in", str(cal), "--method", "m", "--target-error", "0.2",
                             "--test", str(test), "--out", str(tmp_path / "t.json"))
    assert code == 0, err
    report = json.loads((tmp_path / "t.json").read_text())
    expected = select_threshold(cal_conf, cal_y, 0.2, 0.05)
    assert report["threshold"] == pytest.approx(expected.threshold)
    assert report["coverage"] == pytest.approx(expected.coverage)
    assert report["test"]["coverage"] == pytest.approx(apply_threshold(expected, test_conf, test_y).coverage)
    assert 0.5 < expected.threshold < 1 and "test" in out


def test_abstain_with_an_unreachable_target_names_the_lowest_certifiable_one(capsys, tmp_path):
    rng = np.random.default_rng(1)
    cal = _scores_file(tmp_path / "cal.jsonl", rng.random(100), rng.random(100) < 0.5)   # confidence says nothing
    code, out, err = run_cli(capsys, "abstain", "--in", str(cal), "--method", "m", "--target-error", "0.05")
    assert code == 2
    assert "lowest error this calibration set certifies" in err and len(err.strip().splitlines()) == 1
