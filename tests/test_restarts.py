"""Restarts: several runs from other seeds on one held-out split, the lowest held-out Brier score kept."""

from __future__ import annotations

import json

import pytest
import torch

from certa.errors import InputError
from certa.methods.conftuner import ConfTuner, ConfTunerConfig
from certa.records import Record
from certa.training.config import TrainConfig
from certa.training.restarts import (
    RESTARTS_DIR,
    brier_skill,
    keep_best,
    restart_configs,
    train_runs,
    wants_another_run,
)
from certa.training.trainer import training_seconds
from certa.training.validation import split_validation

torch.set_num_threads(1)


def make_records(n: int = 80) -> list[Record]:
    """Enough answers that a fifth held out (16) can choose: sums, right when the index is a multiple of 3."""
    records = []
    for i in range(n):
        a, b = i % 9, i % 7
        right = i % 3 == 0
        records.append(Record(id=f"q{i}", prompt="", question=f"What is {a} + {b}?", answers=[str(a + b)],
                              response=str(a + b if right else a + b + 1), answer_type="numeric",
                              correct=float(right)))
    return records


def fake_run(path, seed: int, brier: float | None, accuracy: float = 0.5, **files: str):
    path.mkdir(parents=True)
    validation = {} if brier is None else {"validation": {"brier": brier, "best_step": 3, "accuracy": accuracy}}
    info = {"method": "conftuner", "base_model": "tiny", "train_config": {"seed": seed}, **validation}
    (path / "certa.json").write_text(json.dumps(info))
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_restarts_use_spaced_seeds_and_all_hold_out_the_first_runs_answers():
    config = TrainConfig(seed=5, restarts=3)
    runs = restart_configs(config)
    assert [c.seed for c in runs] == [5, 1005, 2005]
    assert [c.validation_seed for c in runs] == [None, 5, 5] and {c.restarts for c in runs} == {1}
    assert runs[0] == TrainConfig(seed=5)  # the first run is the plain training of the seed
    records = make_records()
    held = [{r.id for r in split_validation(records, c)[1]} for c in runs]
    assert held[0] == held[1] == held[2] and len(held[0]) == 16
    assert {r.id for r in split_validation(records, TrainConfig(seed=1005))[1]} != held[0]


def test_keep_best_copies_the_lowest_held_out_brier_run_and_records_every_score(tmp_path):
    runs = [fake_run(tmp_path / "r0", 0, 0.22, **{"adapter.bin": "zero", "stamp.txt": "0"}),
            fake_run(tmp_path / "r1", 1000, 0.19, **{"adapter.bin": "one", "stamp.txt": "1"}),
            fake_run(tmp_path / "r2", 2000, 0.19, **{"adapter.bin": "two"})]
    out = keep_best(runs, tmp_path / "out", skip=("stamp.txt",))
    assert (out / "adapter.bin").read_text() == "one"  # the lowest score; the earlier run on a tie
    assert not (out / "stamp.txt").exists()
    info = json.loads((out / "certa.json").read_text())
    assert info["train_config"]["seed"] == 1000 and info["restarts"]["kept_seed"] == 1000
    assert [(r["seed"], r["held_out_brier"]) for r in info["restarts"]["runs"]] == [(0, .22), (1000, .19), (2000, .19)]
    assert "kept seed 1000" in (out / "README.md").read_text()


def test_keep_best_refuses_runs_without_held_out_answers(tmp_path):
    runs = [fake_run(tmp_path / "r0", 0, 0.2), fake_run(tmp_path / "r1", 1000, None)]
    with pytest.raises(InputError, match=r"r1: no held-out Brier score.*validation_fraction"):
        keep_best(runs, tmp_path / "out")
    assert not (tmp_path / "out" / "certa.json").exists()


def test_restarts_without_held_out_answers_are_refused_before_anything_trains(tiny_lm, tmp_path, monkeypatch):
    from certa.methods import trained

    monkeypatch.setattr(trained, "train", lambda *a, **k: pytest.fail("a run trained that could never be chosen"))
    for config in (ConfTunerConfig(restarts=3, validation_fraction=0.0), ConfTunerConfig(restarts=3)):
        records = make_records() if config.validation_fraction == 0 else make_records(40)   # 8 held out: too few
        with pytest.raises(InputError, match="restarts: 3 runs but no held-out answers"):
            ConfTuner.train(tiny_lm, records, config, tmp_path / "artifact", progress=False)
    assert not (tmp_path / "artifact").exists()


def test_split_never_holds_out_a_whole_class():
    records = make_records(30)
    for r in records:
        r.correct = 1.0
    records[4].correct = 0.0                  # one wrong answer among 30, 60% held out: nothing to hold out
    assert split_validation(records, TrainConfig(validation_fraction=0.6)) == (records, [])
    records[9].correct = 0.0                  # two: one each side
    train_part, held = split_validation(records, TrainConfig(validation_fraction=0.6))
    assert [r.correct for r in train_part].count(0.0) == 1 and [r.correct for r in held].count(0.0) == 1
    records[14].correct = 0.0                 # three, 90% held out: the share is all three; one stays
    train_part, held = split_validation(records, TrainConfig(validation_fraction=0.9))
    assert [r.correct for r in train_part].count(0.0) == 1 and len(held) == 26


def test_training_with_restarts_keeps_the_best_run_and_a_resume_trains_nothing_again(tiny_lm, tmp_path, monkeypatch):
    config = ConfTunerConfig(restarts=2, stall_retries=0, epochs=2, batch_size=16, lr=3e-2, lora_r=4, lora_alpha=8,
                             lora_dropout=0.0, save_every=100, eval_every=2)
    out = ConfTuner.train(tiny_lm, make_records(), config, tmp_path / "artifact", progress=False)
    runs = sorted((out / RESTARTS_DIR).iterdir())
    assert [r.name for r in runs] == ["seed-0", "seed-1000"]
    scores = {json.loads((r / "certa.json").read_text())["train_config"]["seed"]:
              json.loads((r / "certa.json").read_text())["validation"]["brier"] for r in runs}
    info = json.loads((out / "certa.json").read_text())
    assert info["restarts"]["kept_seed"] == min(scores, key=lambda s: (scores[s], s))
    kept = out / RESTARTS_DIR / f"seed-{info['restarts']['kept_seed']}"
    assert (out / "adapter_model.safetensors").read_bytes() == (kept / "adapter_model.safetensors").read_bytes()
    assert training_seconds(out) == pytest.approx(sum(training_seconds(r) for r in runs))
    assert not tiny_lm.has_adapters  # each run trained a copy

    from certa.methods import trained

    monkeypatch.setattr(trained, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = ConfTuner.train(tiny_lm, make_records(), config, tmp_path / "artifact", resume=True, progress=False)
    assert json.loads((again / "certa.json").read_text())["restarts"] == info["restarts"]


def test_the_study_trains_each_restart_as_an_artifact_of_its_own(tiny_model_dir, tmp_path, monkeypatch):
    from certa.study import training
    from certa.study.config import RunConfig

    config = RunConfig(model=str(tiny_model_dir), out=str(tmp_path), methods=["conftuner"])
    single = ConfTunerConfig(epochs=1, batch_size=16, lr=3e-2, lora_r=4, lora_alpha=8, save_every=100, stall_retries=0)
    records = make_records()
    plain = training.train_artifact(config, "conftuner", single, records, tmp_path / "seed-0-alone")
    out = training.train_artifact(config, "conftuner", single.model_copy(update={"restarts": 2}), records,
                                  tmp_path / "restarted")
    first = out / RESTARTS_DIR / "seed-0"
    # The first run is the single training of the seed: same fingerprint, same weights.
    assert (first / training.TRAINED_FROM).read_text() == (plain / training.TRAINED_FROM).read_text()
    assert (first / "adapter_model.safetensors").read_bytes() == (plain / "adapter_model.safetensors").read_bytes()
    assert (out / training.TRAINED_FROM).read_text() != (plain / training.TRAINED_FROM).read_text()
    assert json.loads((out / "certa.json").read_text())["restarts"]["kept_seed"] in (0, 1000)
    monkeypatch.setattr(training, "load_base_model", lambda *a: pytest.fail("a finished restart was trained again"))
    training.train_artifact(config, "conftuner", single.model_copy(update={"restarts": 2}), records,
                            tmp_path / "restarted")


def test_brier_skill_is_one_minus_the_runs_brier_over_the_held_out_constants(tmp_path):
    # The stalled and the learned seed of the CPU study: accuracy .464 held out, constant Brier .464 * .536.
    assert brier_skill(fake_run(tmp_path / "stalled", 1, 0.232, accuracy=0.464)) == pytest.approx(1 - 0.232 / 0.248704)
    assert brier_skill(fake_run(tmp_path / "learned", 0, 0.106, accuracy=0.464)) == pytest.approx(0.573791, abs=1e-6)
    assert brier_skill(fake_run(tmp_path / "worse", 2, 0.30)) == pytest.approx(1 - 0.30 / 0.25)


def test_stall_retries_follow_the_restarts_and_stop_once_a_run_has_skill(tmp_path):
    config = TrainConfig(restarts=2, stall_retries=2, stall_skill=0.25)
    assert [c.seed for c in restart_configs(config)] == [0, 1000, 2000, 3000]
    assert {(c.restarts, c.stall_retries) for c in restart_configs(config)} == {(1, 0)}
    stalled, learned = fake_run(tmp_path / "a", 0, 0.22), fake_run(tmp_path / "b", 1000, 0.15)  # skill .12, .40
    assert wants_another_run([learned], config)                      # the restarts always run
    assert wants_another_run([stalled, stalled], config)
    assert not wants_another_run([stalled, learned], config)
    assert not wants_another_run([stalled, stalled], config.model_copy(update={"stall_skill": 0.1}))


def test_train_runs_trains_a_retry_only_after_a_stalled_run(tmp_path):
    config = TrainConfig(stall_retries=2)
    briers = iter([0.24, 0.12, 0.24])     # stalled, then learned: the third is never trained

    def train_run(k, run_config):
        return fake_run(tmp_path / f"seed-{run_config.seed}", run_config.seed, next(briers))

    runs = train_runs(config, restart_configs(config), train_run)
    assert [r.name for r in runs] == ["seed-0", "seed-1000"]
    all_stalled = train_runs(config, restart_configs(config),
                             lambda k, c: fake_run(tmp_path / f"stalled-{c.seed}", c.seed, 0.24))
    assert len(all_stalled) == 3          # one run and both retries, the best of them kept by keep_best


def test_without_held_out_answers_stall_retries_train_once_instead_of_failing():
    assert len(restart_configs(ConfTunerConfig(), make_records())) == 3                  # ConfTuner's default: 2
    assert len(restart_configs(ConfTunerConfig(), make_records(40))) == 1                # 8 held out: too few
    assert len(restart_configs(ConfTunerConfig(validation_fraction=0.0), make_records())) == 1


def test_conftuner_retries_a_run_below_the_stall_skill_and_keeps_the_best(tiny_lm, tmp_path):
    # stall_skill 1 counts every run as stalled, so both retries train; each run's skill is in the artifact.
    config = ConfTunerConfig(stall_retries=1, stall_skill=1.0, epochs=1, batch_size=16, lr=3e-2, lora_r=4,
                             lora_alpha=8, lora_dropout=0.0, save_every=100)
    out = ConfTuner.train(tiny_lm, make_records(), config, tmp_path / "artifact", progress=False)
    assert sorted(r.name for r in (out / RESTARTS_DIR).iterdir()) == ["seed-0", "seed-1000"]
    runs = json.loads((out / "certa.json").read_text())["restarts"]["runs"]
    assert [r["seed"] for r in runs] == [0, 1000]
    for run in runs:
        assert run["held_out_brier_skill"] == pytest.approx(brier_skill(out / run["path"]))
    assert "skill" in (out / "README.md").read_text()
