"""The whole study on the tiny model: every stage, cross-domain, scaling, costs, the write-up, and its cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from certa.data.grading import register_grader
from certa.study import cache, run_study, stages, training, tune
from certa.study.config import RunConfig

METHODS = ["sequence_likelihood", "consistency", "linear_probe", "apricot", "grace", "conftuner"]


@register_grader("test-parity")
def _parity(response: str, example) -> float:
    # A random-weight model is never right; this grader calls a third of the questions' answers correct.
    return float(int(example.id[1:]) % 3 == 0)


def _dataset(path, prefix: str, n: int = 40):
    rows = [{"id": f"{prefix}{i}", "question": f"Question {prefix} number {i}?", "answers": ["x"],
             "answer_type": "short", "meta": {"grader": "test-parity"}} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def study_config(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("study")
    a, b = _dataset(root / "a.jsonl", "a"), _dataset(root / "b.jsonl", "b")
    discussion = root / "discussion.md"
    discussion.write_text("## Discussion\n\nHand-written words.\n")
    train = {"epochs": 1, "batch_size": 8, "max_steps": 2}
    return RunConfig.from_dict({
        "model": str(tiny_model_dir), "out": str(root / "run"),
        "datasets": [{"name": a, "train_limit": 20, "test_limit": 12, "calibration_limit": 6},
                     {"name": b, "train_limit": 20, "test_limit": 12, "calibration_limit": 6}],
        "methods": METHODS,
        "generation": {"max_new_tokens": 4, "batch_size": 8, "samples": 2, "temperature": 1.0},
        "training": {"grace": train, "conftuner": train},
        "evaluation": {"n_bins": 5, "n_bootstrap": 50},
        "cross_domain": {"datasets": [a, b]},
        "scaling": {"dataset": a, "test_limit": 8, "calibration_limit": 6, "budget": 3, "tau_sweep": [0.2, 0.8]},
        "tuning": {"grids": {"grace": {"token_lr": [0.05, 0.01]}}},
        "seeds": [1],
        "learning_curve": {"sizes": [16, 1000]},
        "publish": {"markdown": str(root / "docs" / "RESULTS.md"), "discussion": str(discussion)},
    })


@pytest.fixture(scope="module")
def study(study_config):
    return run_study(study_config)


def test_study_evaluates_every_method_pooled_and_per_dataset(study, study_config):
    assert set(study.evaluation.methods) == set(METHODS)
    assert study.evaluation.n == sum(res.n for res in study.by_dataset.values())
    metrics = json.loads((study.out / "metrics.json").read_text())
    assert set(metrics["extra"]["by_dataset"]) == {"a", "b"}  # a file's stem names its outputs
    # The write-up's figures directory holds the same metrics, for the docs' method pages.
    published = Path(study_config.publish.markdown).parent / "results" / "metrics.json"
    assert json.loads(published.read_text()) == metrics


def test_cross_domain_covers_every_learned_method_and_pair(study, study_config):
    learned = {"linear_probe", "apricot", "grace", "conftuner"}
    names = ["a", "b"]
    assert set(study.cross_domain["methods"]) == learned
    pairs = {(r["method"], r["train"], r["test"]) for r in study.cross_domain["results"]}
    assert pairs == {(m, s, t) for m in learned for s in names for t in names}
    # Trained on one dataset alone: the artifact's data summary says so.
    info = json.loads((study.out / "cross_domain" / f"trained-on-{names[0]}" / "grace" / "certa.json").read_text())
    assert info["data"]["records"] == 20


def test_scaling_reads_grace_confidence_of_every_sample(study):
    s = study.scaling
    assert set(s["curves"]) == {"sc", "adaptive_sc", "early_stop_sc", "grace_sc", "grace_es"}
    assert [p["budget"] for p in s["curves"]["sc"]] == [1, 2, 3]
    records = stages.load_records(study.out / "scaling" / "test.records.jsonl")
    assert all(len(r.sample_confidence["grace"]) == 3 for r in records)
    for point in s["tau_sweep"]:
        assert 1 <= point["mean_samples"] <= 3


def test_costs_charge_samples_to_the_methods_that_read_them(study):
    costs = study.costs
    assert all(np.isfinite(c["relative_to_generation"]) and c["relative_to_generation"] >= 0 for c in costs.values())
    assert costs["consistency"]["relative_to_generation"] > costs["sequence_likelihood"]["relative_to_generation"]
    assert costs["grace"]["training_seconds"] > 0 and "realtime_relative_to_generation" in costs["grace"]


def test_write_up_has_every_section_and_figure(study, study_config):
    text = study.markdown.read_text()
    for heading in ("# Results", "## Datasets", "## Calibration, all test answers pooled", "## Calibration per dataset",
                    "## Cross-domain", "## Cost", "## Test-time scaling", "## The papers' claims", "## Discussion",
                    "## What a confidence is worth"):
        assert heading in text, heading
    figures = study.markdown.parent / "results"
    assert (figures / "reliability.png").stat().st_size > 1000
    assert (figures / "scaling.png").stat().st_size > 1000
    assert "](results/reliability.png)" in text
    ece = study.evaluation.methods["grace"]["ece"]
    assert f"{ece.value:.3f} [{ece.low:.3f}, {ece.high:.3f}]" in text
    cost = text.split("## Cost", 1)[1].split("\n## ", 1)[0]
    fitted = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in cost.splitlines()
              if line.startswith("| ") and line.split("|")[1].strip() in ("linear_probe", "apricot", "sequence_likelihood")}
    assert fitted["sequence_likelihood"] == "–" and "–" not in (fitted["linear_probe"], fitted["apricot"])


def test_a_rerun_reuses_every_stage_and_redoes_only_what_changed(study, study_config, monkeypatch):
    calls: list[list[str]] = []
    real = cache.score_methods

    def counting(methods, *args, **kwargs):
        calls.append(list(methods))
        return real(methods, *args, **kwargs)

    monkeypatch.setattr(cache, "score_methods", counting)
    monkeypatch.setattr(training, "load_base_model", lambda *a, **k: pytest.fail("retrained a cached artifact"))
    monkeypatch.setattr(tune, "load_model", lambda *a, **k: pytest.fail("rescored a tuning grid point"))
    again = run_study(study_config)
    assert calls == []
    assert again.evaluation.methods["grace"]["ece"].value == study.evaluation.methods["grace"]["ece"].value

    more = study_config.model_copy(update={"methods": [*METHODS, "token_entropy"]})
    run_study(more)
    assert calls and all(c == ["token_entropy"] for c in calls)


def test_refresh_stamp_redoes_outputs_only_when_settings_change(tmp_path):
    out, partial, stamp = tmp_path / "g.jsonl", tmp_path / "g.jsonl.partial", tmp_path / "settings.json"
    out.write_text("{}\n")
    stages.refresh_stamp(stamp, {"max_new_tokens": 8}, [out])
    stages.refresh_stamp(stamp, {"max_new_tokens": 8}, [out])
    assert out.exists()
    partial.write_text("{}\n")
    stages.refresh_stamp(stamp, {"max_new_tokens": 16}, [out])
    assert not out.exists() and not partial.exists()


def test_run_time_section_adds_up_the_stages(study):
    stages = study.evaluation.extra["compute_seconds"]
    assert {"training: grace", "training: conftuner", "cross-domain: training", "further seeds: training",
            "further seeds: scoring", "learning curve: training", "learning curve: scoring",
            "tuning: calibration answers", "tuning: training the other combinations",
            "tuning: scoring calibration answers"} <= set(stages)
    assert all(seconds > 0 for seconds in stages.values())
    seed_logs = list((study.out / "artifacts" / "seed-1").glob("*/train_log.jsonl"))
    assert len(seed_logs) == 2 and stages["further seeds: training"] == pytest.approx(
        sum(json.loads(line)["seconds"] for log in seed_logs for line in log.read_text().splitlines()), rel=1e-6)
    loser = next(row for row in study.tuning["grace"]["rows"] if row["values"] != study.tuning["grace"]["chosen"])
    loser_log = Path(loser["artifact"]) / "train_log.jsonl"  # the chosen one is "training: grace"
    assert stages["tuning: training the other combinations"] == pytest.approx(
        sum(json.loads(line)["seconds"] for line in loser_log.read_text().splitlines()), rel=1e-6)
    assert "## Run time" in study.markdown.read_text()


def test_changed_training_config_trains_afresh_instead_of_resuming(study, study_config, monkeypatch):
    plain = study_config.model_copy(update={"tuning": None, "seeds": [], "learning_curve": None, "cross_domain": None, "scaling": None,
                                            "publish": None})
    run_study(plain)  # trains artifacts/grace with the config as it is
    calls: list[list[str]] = []
    real = cache.score_methods
    monkeypatch.setattr(cache, "score_methods", lambda methods, *a, **k: calls.append(list(methods)) or
                        real(methods, *a, **k))
    grace = study.out / "artifacts" / "grace"
    before = (grace / "trained-from.txt").read_text()
    settings = {**study_config.training, "grace": {**study_config.training["grace"], "calibration_loss": "bce"}}
    run_study(plain.model_copy(update={"training": settings}))
    log = [json.loads(line) for line in (grace / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2]  # trained from step 1, not resumed from the old run's end
    assert (grace / "trained-from.txt").read_text() != before
    assert all(c == ["grace"] for c in calls) and len(calls) == 2  # the new artifact is rescored, nothing else


def test_tuning_judges_every_combination_on_calibration_answers_and_the_study_uses_the_winner(study):
    t = study.tuning["grace"]
    assert [row["values"] for row in t["rows"]] == [{"token_lr": 0.05}, {"token_lr": 0.01}]
    calibration = [r for name in ("a", "b") for r in stages.load_records(study.out / name / "calibration.records.jsonl")]
    test_ids = {r.id for name in ("a", "b") for r in stages.load_records(study.out / name / "test.records.jsonl")}
    assert t["calibration_answers"] == len(calibration) > 0 and not {r.id for r in calibration} & test_ids
    by_name = {name: stages.load_records(study.out / name / "calibration.records.jsonl") for name in ("a", "b")}
    for row in t["rows"]:  # each dataset judged on its own answers too
        assert {name: v["answers"] for name, v in row["by_dataset"].items()} == {n: len(r) for n, r in by_name.items()}
        for name, judged in row["by_dataset"].items():
            both_kinds = len({r.correct >= 0.5 for r in by_name[name]}) == 2  # else AUROC is undefined
            assert (0 <= judged["auroc"] <= 1) if both_kinds else np.isnan(judged["auroc"])
            assert judged["sd"] >= 0 and 0 <= judged["brier"] <= 1
    best = min(t["rows"], key=lambda row: row["brier"])
    assert t["chosen"] == best["values"]
    info = json.loads((study.artifacts["grace"] / "certa.json").read_text())
    assert info["train_config"]["token_lr"] == best["values"]["token_lr"] and info["tuning"]["chosen"] == t["chosen"]
    text = study.markdown.read_text()
    assert "## How the trained methods' settings were chosen" in text and "calibration-split" in text
    assert "AUROC a (sd of confidences)" in text and "AUROC b (sd of confidences)" in text


def test_seed_replicates_retrain_only_the_trained_methods(study):
    seeds = study.seeds
    assert seeds["seeds"] == [0, 1] and set(seeds["values"]) == {"grace", "conftuner"}
    pooled = seeds["values"]["grace"]["pooled"]
    assert len(pooled["ece"]) == 2
    assert pooled["ece"][0] == pytest.approx(study.evaluation.methods["grace"]["ece"].value)
    assert (study.out / "artifacts" / "seed-1" / "grace" / "certa.json").exists()
    assert "## Over training seeds" in study.markdown.read_text()


def test_learning_curve_trains_on_subsets_and_reuses_the_full_artifact(study):
    curve = study.learning_curve
    assert curve["sizes"] == [16, 40]  # 1000 is capped at the 40 pooled train answers
    rows = {(r["method"], r["train_answers"]): r for r in curve["results"]}
    assert set(rows) == {(m, n) for m in ("grace", "conftuner") for n in (16, 40)}
    info = json.loads((study.out / "learning_curve" / "16" / "grace" / "certa.json").read_text())
    assert info["data"]["records"] == 16
    assert not (study.out / "learning_curve" / "40").exists() or not (study.out / "learning_curve" / "40" / "grace").exists()
    full = study.evaluation.methods["grace"]["auroc"].value
    assert rows[("grace", 40)]["auroc"]["value"] == pytest.approx(full)
    assert "## With more training answers" in study.markdown.read_text()


def test_the_artifact_fingerprint_covers_every_setting_defaults_included(study, study_config, monkeypatch):
    seen: list[tuple] = []
    real = training.fingerprint
    monkeypatch.setattr(training, "fingerprint", lambda *parts: seen.append(parts) or real(*parts))
    run_study(study_config.model_copy(update={"tuning": None, "seeds": [], "learning_curve": None,
                                              "cross_domain": None, "scaling": None, "publish": None}))
    settings = next(parts[2] for parts in seen if parts[1] == "grace")
    assert settings == study_config.train_config("grace").model_dump()
    assert {"token_lr", "readout", "recalibrate"} <= set(settings)  # defaults are in: a new default retrains


def test_grace_es_threshold_is_chosen_on_calibration_questions(study):
    from certa.study.scaling import choose_tau

    s = study.scaling
    calibration = stages.load_records(study.out / "scaling" / "calibration.records.jsonl")
    test = stages.load_records(study.out / "scaling" / "test.records.jsonl")
    assert calibration and not {r.id for r in calibration} & {r.id for r in test}
    settings = study.evaluation.extra["config"]["scaling"]
    from certa.study.config import ScalingSettings

    tau, _ = choose_tau(calibration, ScalingSettings(**settings))
    assert s["tau"] == tau and len(s["calibration_tau_sweep"]) == len(settings["tau_sweep"])


def test_grace_ece_target_sets_the_measured_ece_beside_what_chance_alone_gives(tmp_path):
    from certa.evaluation import evaluate
    from certa.metrics import ece, ece_by_chance
    from certa.study.claims import claims_section
    from certa.study.result import StudyResult

    rng = np.random.default_rng(0)
    conf = rng.uniform(0.05, 0.75, 300)
    correct = (rng.random(300) < np.clip(conf + 0.12, 0, 1)).astype(float)  # under-confident by .12
    probe = np.clip(conf + rng.normal(0, 0.1, 300), 0, 1)
    res = evaluate(correct, {"grace": conf, "linear_probe": probe}, n_bootstrap=50)
    config = RunConfig.model_validate({"methods": ["grace", "linear_probe"], "evaluation": {"n_bootstrap": 50}})
    text = claims_section(StudyResult(tmp_path, res, {"toy": res}, {}, {}), config)

    row = next(line for line in text.splitlines() if "toy: GrACE's ECE ≤ 0.05" in line)
    floor = ece_by_chance(conf, n_bins=10, seed=0)
    offset = correct.mean() - conf.mean()
    shifted = ece_by_chance(conf, np.clip(conf + offset, 0, 1), n_bins=10, seed=0)
    assert f"{ece(conf, correct):.3f} (" in row and row.rstrip(" |").endswith("missed")
    assert f"{floor[0]:.3f} ± {floor[1]:.3f} by chance on 300 answers" in row
    assert f"({offset:+.3f}): {shifted[0]:.3f}" in row
    assert 0.03 < floor[0] < 0.07 < shifted[0]  # the offset, not chance, is what this reader misses by


def test_the_cross_domain_ece_claim_needs_another_learned_method():
    from types import SimpleNamespace

    from certa.study.claims import _cross_domain_ece_target

    rows = [{"method": m, "train": "a", "test": "b", "ece": {"value": v}} for m, v in (("grace", .1), ("base_rate", .05))]
    alone = SimpleNamespace(cross_domain={"methods": ["grace", "base_rate"], "results": rows})
    assert _cross_domain_ece_target(alone, None) == []                 # was a ValueError from min() of nothing
    rival = {"method": "linear_probe", "train": "a", "test": "b", "ece": {"value": .2}}
    paired = SimpleNamespace(cross_domain={"methods": ["grace", "base_rate", "linear_probe"], "results": [*rows, rival]})
    [claim] = _cross_domain_ece_target(paired, None)
    assert "linear_probe 0.200" in claim.measured and "GrACE 0.100" in claim.measured


def test_an_artifacts_id_ignores_the_note_of_how_its_settings_were_chosen(tmp_path):
    from certa.models.artifact import artifact_id

    (tmp_path / "certa.json").write_text(json.dumps({"method": "grace", "steps": 3}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    plain = artifact_id(tmp_path)
    noted = lambda grid: json.dumps({"method": "grace", "tuning": {"grid": grid}, "steps": 3}, indent=2)  # noqa: E731
    (tmp_path / "certa.json").write_text(noted([1, 2]))
    first = artifact_id(tmp_path)
    (tmp_path / "certa.json").write_text(noted([1, 2, 3]))        # a grid extended, the same point still won
    assert artifact_id(tmp_path) == first
    (tmp_path / "certa.json").write_text(json.dumps({"method": "grace", "tuning": {"grid": [1]}, "steps": 4}))
    assert artifact_id(tmp_path) not in (first, plain)
    (tmp_path / "certa.json").write_text(json.dumps({"steps": 3, "method": "grace"}, indent=4))
    assert artifact_id(tmp_path) == plain == first                 # the content counts, not its layout
