"""GrACE end to end on a tiny model: training, artifact, read-outs, the generation hook."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch

from certa.errors import CertaError, InputError
from certa.methods import get_method
from certa.methods.grace import CNF_TOKEN, GraceConfig, GraceHook, offline_confidence, train_grace
from certa.methods.grace.objective import GraceObjective
from certa.records import Example, Record

QUESTIONS = ["What is the capital of France?", "What is 3 + 4?", "who wrote Hamlet?", "Answer: 42",
             "abc xyz?", "Is it True or False?", "Paris 0123", "system user", "What is 7 + 1?",
             "Who wrote Confidence?", "ABC DEF", "What is the answer?"]
MAX_NEW = 10
CONFIG = GraceConfig(epochs=1, batch_size=4, lr=1e-2, token_lr=5e-2, save_every=100, seed=1)


def _load(path):
    from certa.models import load_model

    return load_model(str(path), device="cpu")


def _generate(lm, examples, **kwargs):
    from certa.generation import generate

    # No adapter switching here: generate() itself answers with the base model (LoadedModel.answering).
    return generate(lm, examples, max_new_tokens=MAX_NEW, progress=False, **kwargs)


@pytest.fixture(scope="module")
def lively_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with larger weights, so answers differ and some end early on a stop token.

    The random tiny model repeats one token forever; scaled up, it writes varied
    text. One frequent token is declared an extra end-of-turn id, so a batch
    mixes rows that stopped early with rows that hit the length limit — the
    case the generation hook must handle.
    """
    from certa.generation import generate

    lm = _load(tiny_model_dir)
    with torch.no_grad():
        for param in lm.model.parameters():
            if param.dim() == 2:
                param.mul_(8)
    gens = generate(lm, _examples(), max_new_tokens=MAX_NEW, progress=False)
    rows_with = Counter(t for g in gens for t in set(g.token_ids[1:]))
    stop = min(rows_with, key=lambda t: (abs(rows_with[t] - len(gens) / 2), t))
    lm.model.generation_config.eos_token_id = [lm.tokenizer.eos_token_id, stop]
    path = tmp_path_factory.mktemp("lively")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def _examples():
    return [Example(id=f"q{i}", question=q, answers=["x"]) for i, q in enumerate(QUESTIONS)]


@pytest.fixture(scope="module")
def train_records(lively_dir):
    lm = _load(lively_dir)
    gens = _generate(lm, _examples(), hidden_states=True)
    lengths = {len(g.token_ids) for g in gens}
    assert len(lengths) > 2 and MAX_NEW in lengths, "the fixture must mix early-stopped and cut-off rows"
    return [Record.from_generation(g, e, float(i % 3 == 0)) for i, (g, e) in enumerate(zip(gens, _examples(), strict=True))]


@pytest.fixture(scope="module")
def trained(lively_dir, train_records, tmp_path_factory):
    """(the in-process model right after training, the artifact path)."""
    lm = _load(lively_dir)
    out = train_grace(lm, train_records, CONFIG, tmp_path_factory.mktemp("grace"), in_place=True, progress=False)
    return lm, out


@pytest.fixture(scope="module")
def artifact(trained):
    return _load(trained[1])


def _initial_row(lively_dir, records, config):
    """The <CNF> row after the objective placed it, before any optimiser step (and the model it sits in)."""
    lm = _load(lively_dir)
    objective = GraceObjective(config)
    objective.prepare(lm, config)
    objective.build_items(lm, records, config)
    cnf = lm.tokenizer.convert_tokens_to_ids(CNF_TOKEN)
    return lm.model.get_input_embeddings().weight[cnf].detach().clone(), lm, objective


def test_initial_cnf_row_starts_near_the_base_rate(lively_dir, train_records):
    config = CONFIG.model_copy(update={"targets": "binary"})
    _, lm, objective = _initial_row(lively_dir, train_records, config)
    conf = offline_confidence(lm, train_records)
    base_rate = np.mean([r.correct for r in train_records])
    assert objective.init_rate == pytest.approx(base_rate)
    assert conf.mean() == pytest.approx(base_rate, abs=0.02)  # not ~1e-8: the MSE gradient is alive


def test_training_moves_only_the_cnf_row(lively_dir, artifact, train_records):
    base = _load(lively_dir)
    cnf = artifact.tokenizer.convert_tokens_to_ids(CNF_TOKEN)
    assert cnf == len(base.tokenizer)  # appended at the end of the vocabulary
    with torch.no_grad(), artifact.adapter_enabled():
        trained_rows = artifact.model.get_input_embeddings()(torch.arange(cnf + 1))
        head_row = artifact.model.get_output_embeddings()(torch.eye(trained_rows.shape[1]))[:, cnf]
    original = base.model.get_input_embeddings().weight
    assert torch.equal(trained_rows[:cnf], original)
    # Compared with the row as placed before the first step (not the mean row): training moved it.
    placed, _, _ = _initial_row(lively_dir, train_records, CONFIG)
    assert (trained_rows[cnf] - placed).norm() > 1e-4
    torch.testing.assert_close(head_row, trained_rows[cnf])  # tied: one row for embedding and head


def test_save_then_load_gives_identical_confidences(trained, artifact, train_records):
    in_process, _ = trained
    np.testing.assert_allclose(offline_confidence(artifact, train_records),
                               offline_confidence(in_process, train_records), atol=1e-6)
    assert artifact.artifact["method"] == "grace"
    assert artifact.artifact["method_info"]["mode"] == "suffix"


def test_hook_readout_equals_offline_readout(artifact):
    gens = _generate(artifact, _examples(), hooks=[GraceHook()], batch_size=6)
    assert len({len(g.token_ids) for g in gens}) > 2
    records = [Record.from_generation(g, e, 0.0) for g, e in zip(gens, _examples(), strict=True)]
    hooked = np.array([g.confidence["grace"] for g in gens])
    np.testing.assert_allclose(hooked, offline_confidence(artifact, records), atol=1e-5)
    # the registered method uses what generation read, and reads the rest itself
    method = get_method("grace", model=artifact)
    for r in records[::2]:
        r.confidence.clear()
    np.testing.assert_allclose(method(records), hooked, atol=1e-5)


def test_suffix_mode_leaves_greedy_answers_unchanged(lively_dir, artifact, train_records):
    again = _generate(artifact, _examples())
    assert [g.token_ids for g in again] == [r.token_ids for r in train_records]
    assert [g.response for g in again] == [r.response for r in train_records]


def test_free_readout_trains_the_row_only_and_reads_generation_state(lively_dir, train_records, tmp_path):
    lm = _load(lively_dir)
    config = CONFIG.model_copy(update={"readout": "free"})
    config = GraceConfig.model_validate(config.model_dump())
    out = train_grace(lm, train_records, config, tmp_path / "free", progress=False)
    free = _load(out)
    assert free.artifact["method_info"]["readout"] == "free"
    assert not any("lora" in name for name, _ in free.model.named_parameters())
    head = free.model.get_output_embeddings()
    with torch.no_grad(), free.adapter_enabled():
        trained_row = head(torch.eye(head.weight.shape[1]))[:, -1]
    placed, _, _ = _initial_row(lively_dir, train_records, config)
    assert (trained_row - placed).norm() > 1e-4  # training moved the row the LM head reads
    gens = _generate(free, _examples(), hooks=[GraceHook()], hidden_states=True)
    hooked = np.array([g.confidence["grace"] for g in gens])
    records = [Record.from_generation(g, e, 0.0) for g, e in zip(gens, _examples(), strict=True)]
    from_state = offline_confidence(free, records, readout="free")
    for r in records:
        r.hidden_state = None  # forces a forward pass to recompute the end-predicting state
    recomputed = offline_confidence(free, records, readout="free")
    np.testing.assert_allclose(hooked, from_state, atol=1e-6)
    np.testing.assert_allclose(hooked, recomputed, atol=1e-5)


def test_full_mode_trains_with_lm_loss(lively_dir, train_records, tmp_path):
    lm = _load(lively_dir)
    config = CONFIG.model_copy(update={"mode": "full", "max_steps": 2})
    out = train_grace(lm, train_records, config, tmp_path / "full", progress=False)
    import json

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(row["loss"] == pytest.approx(row["calibration"] + row["lm_loss"], rel=1e-5) for row in log)
    full = _load(out)
    assert full.artifact["method_info"]["answers_use_adapter"] is True
    conf = get_method("grace", model=full)(train_records)
    assert ((conf > 0) & (conf < 1)).all()


def test_errors(lively_dir, train_records, tmp_path):
    lm = _load(lively_dir)
    bare = [Record(id="r1", prompt="p", response="a", correct=1.0)]
    with pytest.raises(InputError, match="'r1' has no hidden_state"):
        train_grace(lm, bare, CONFIG, tmp_path)
    with pytest.raises(CertaError, match="needs a trained GrACE artifact"):
        get_method("grace", model=lm)(train_records)


# ── what training does, in the settings the papers use ──────────────────────────────────────


def _yes_no_records(lm, n: int = 48) -> list[Record]:
    """Answers whose correctness is written in them ("yes" right, "no" wrong): linearly decodable by design."""
    from certa.generation import generate

    examples = [Example(id=f"yn{i}", question=f"Is {i} a number?", answers=["yes"]) for i in range(n)]
    gens = generate(lm, examples, max_new_tokens=2, hidden_states=True, progress=False)
    records = []
    for i, (gen, example) in enumerate(zip(gens, examples, strict=True)):
        answer = "yes" if i % 2 else "no"
        ids = lm.tokenizer(answer, add_special_tokens=False)["input_ids"] + [lm.tokenizer.eos_token_id]
        gen.token_ids, gen.response = ids, answer
        records.append(Record.from_generation(gen, example, float(answer == "yes")))
    # The hidden state must describe the answer the read-out sees: recompute it from the edited answers.
    cache_states = offline_states(lm, records)
    for record, state in zip(records, cache_states, strict=True):
        record.hidden_state = state
    return records


def offline_states(lm, records):
    from certa.methods.answer_cache import answer_ids, encode_answers

    cache = encode_answers(lm.model, [answer_ids(lm, r) for r in records], lm.tokenizer.pad_token_id, hidden=True)
    return cache.last_hidden.tolist()


def _brier(conf, records) -> float:
    return float(np.mean((np.asarray(conf) - np.array([r.correct for r in records])) ** 2))


def test_each_training_answer_is_encoded_once_start_row_included(lively_dir, tmp_path, monkeypatch):
    """The answers that place the starting <CNF> row are encoded into the training store, not twice."""
    from certa.methods import answer_cache
    from certa.methods.grace import token

    encoded = []

    def counting(model, pairs, pad_id, **kwargs):
        encoded.extend(pairs)
        return real(model, pairs, pad_id, **kwargs)

    real = answer_cache.encode_answers
    monkeypatch.setattr(answer_cache, "encode_answers", counting)
    monkeypatch.setattr(token, "encode_answers", counting)
    lm = _load(lively_dir)
    records = _yes_no_records(lm, 24)
    encoded.clear()
    config = GraceConfig(epochs=2, batch_size=8, init_sample=24, validation_fraction=0, save_every=1000)
    train_grace(lm, records, config, tmp_path / "once", progress=False)
    answers = [(tuple(p), tuple(r)) for p, r in encoded if len(p) + len(r) > 2]   # not the store's 1-token probe
    assert len(answers) == len(set(answers)) == 24


def test_training_measurably_improves_calibration_when_correctness_is_decodable(lively_dir, tmp_path):
    lm = _load(lively_dir)
    records = _yes_no_records(lm)
    config = GraceConfig(epochs=12, batch_size=8, lr=2e-2, token_lr=5e-2, targets="binary", save_every=1000,
                         validation_fraction=0, seed=3)
    out = train_grace(lm, records, config, tmp_path / "yn", progress=False)
    trained = _load(out)
    before = _brier(np.full(len(records), np.mean([r.correct for r in records])), records)  # where c starts
    after = _brier(get_method("grace", model=trained)(records), records)
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_untied_embeddings_train_both_rows_and_score_end_to_end(tmp_path, loss):
    from tiny import build_tiny_model

    path = build_tiny_model(tmp_path / "untied", tie_embeddings=False)
    lm = _load(path)
    assert lm.model.get_output_embeddings().weight is not lm.model.get_input_embeddings().weight
    records = _yes_no_records(lm, 24)
    config = GraceConfig(epochs=2, batch_size=8, token_lr=5e-2, calibration_loss=loss, validation_fraction=0)
    out = train_grace(lm, records, config, tmp_path / "artifact", in_place=True, progress=False)
    loaded = _load(out)
    cnf = loaded.tokenizer.convert_tokens_to_ids(CNF_TOKEN)
    base = _load(path)
    with torch.no_grad(), loaded.adapter_enabled():
        head = loaded.model.get_output_embeddings()(torch.eye(head_dim := base.model.config.hidden_size))[:, cnf]
        row = loaded.model.get_input_embeddings()(torch.tensor([cnf]))[0]
    assert head.shape == (head_dim,) and not torch.allclose(head, row)  # two rows, each its own
    np.testing.assert_allclose(get_method("grace", model=loaded, raw=True)(records),
                               offline_confidence(lm, records), atol=1e-5)
    assert loaded.artifact["train_config"]["calibration_loss"] == loss


def test_full_mode_weighs_the_lm_loss_by_lambda(lively_dir, train_records, tmp_path):
    lm = _load(lively_dir)
    config = CONFIG.model_copy(update={"mode": "full", "max_steps": 2, "lm_loss_weight": 0.25})
    out = train_grace(lm, train_records, config, tmp_path / "lambda", progress=False)
    import json

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(row["loss"] == pytest.approx(row["calibration"] + 0.25 * row["lm_loss"], rel=1e-5) for row in log)
    assert all(row["loss"] != pytest.approx(row["calibration"] + row["lm_loss"], rel=1e-3) for row in log)


@pytest.mark.parametrize("recalibrate", ["auto", "none", "platt", "beta"])
def test_held_out_answers_choose_the_stopping_step_and_the_final_map(lively_dir, tmp_path, recalibrate):
    from certa.recalibration import IDENTITY, choose_map, fit_map
    from certa.training.validation import split_validation

    lm = _load(lively_dir)
    records = _yes_no_records(lm, 80)
    for i, record in enumerate(records):     # a noisy label: the answer says it 3 times in 4
        if i % 8 in (0, 3):
            record.correct = 1.0 - record.correct
    config = GraceConfig(epochs=6, batch_size=8, lr=2e-2, token_lr=5e-2, targets="binary", save_every=1000,
                         validation_fraction=0.25, eval_every=2, patience=3, recalibrate=recalibrate, seed=1)
    trained = _load(train_grace(lm, records, config, tmp_path / recalibrate, progress=False))
    _, held = split_validation(records, config)
    summary = trained.artifact["validation"]
    history = {step: brier for step, brier in summary["history"]}
    raw_held = get_method("grace", model=trained, raw=True)(held)
    assert summary["answers"] == len(held) == 20 and len(history) >= 3
    assert summary["best_step"] == min(history, key=history.get)          # the kept state is the best measured
    assert _brier(raw_held, held) == pytest.approx(history[summary["best_step"]], abs=1e-5)
    correct = np.array([r.correct for r in held])
    base_rate = np.mean([r.correct for r in records])          # a constant falls back to every answer's accuracy
    expected = {"none": IDENTITY, "auto": choose_map(raw_held, correct, base_rate=base_rate)[0]}.get(recalibrate) or \
        fit_map(raw_held, correct, recalibrate, strength=1.0, nonnegative=True)
    assert trained.artifact["recalibration"]["kind"] == expected.kind
    np.testing.assert_allclose(get_method("grace", model=trained)(records),
                               expected(get_method("grace", model=trained, raw=True)(records)), atol=1e-6)


def test_training_that_never_beats_the_start_keeps_the_start(lively_dir, tmp_path):
    """Correctness unrelated to the answers (a chance-level multiple-choice set): the start, at the base rate,
    is the best held-out state, and early stopping must keep it rather than the least bad trained one."""
    from certa.training.validation import split_validation

    lm = _load(lively_dir)
    records = _yes_no_records(lm, 80)
    rng = np.random.default_rng(0)
    for record in records:
        record.correct = float(rng.random() < 0.3)
    config = GraceConfig(epochs=4, batch_size=8, lr=5e-2, token_lr=0.5, targets="binary", save_every=1000,
                         validation_fraction=0.25, eval_every=2, patience=3, recalibrate="none", seed=1)
    trained = _load(train_grace(lm, records, config, tmp_path / "noise", progress=False))
    summary = trained.artifact["validation"]
    history = dict(summary["history"])
    assert 0 in history and summary["best_step"] == 0 and min(history.values()) == history[0]
    _, held = split_validation(records, config)
    assert _brier(get_method("grace", model=trained)(held), held) == pytest.approx(history[0], abs=1e-5)


def test_a_run_killed_after_its_stopping_checkpoint_resumes_already_stopped(lively_dir, tmp_path, monkeypatch):
    """Killed between the checkpoint of the step early stopping ended at and the artifact: the resume
    trains nothing more and saves the artifact the uninterrupted run saved."""
    import json

    from certa.training import trainer

    records = _yes_no_records(_load(lively_dir), 80)
    rng = np.random.default_rng(0)
    for record in records:
        record.correct = float(rng.random() < 0.3)
    config = GraceConfig(epochs=4, batch_size=8, lr=5e-2, token_lr=0.5, targets="binary", save_every=1000,
                         validation_fraction=0.25, eval_every=2, patience=3, recalibrate="none", seed=1)
    straight = train_grace(_load(lively_dir), records, config, tmp_path / "straight", progress=False)

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "save_artifact", killed)
        with pytest.raises(Killed):
            train_grace(_load(lively_dir), records, config, tmp_path / "resumed", progress=False)
    resumed = train_grace(_load(lively_dir), records, config, tmp_path / "resumed", resume=True, progress=False)

    def steps(out):
        return [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]

    info, again = _load(straight).artifact, _load(resumed).artifact
    assert info["steps"] < 4 * 8 and steps(resumed) == steps(straight)        # stopped early, and no step more
    assert again["steps"] == info["steps"] and again["validation"]["history"] == info["validation"]["history"]


# ── defects fixed in issue 12 (each test fails on the code before its fix) ──────────────────


def test_the_initial_row_is_placed_from_all_training_answers_not_the_first_ones(lively_dir, train_records):
    lm = _load(lively_dir)
    records = sorted(_yes_no_records(lm, 96), key=lambda r: -r.correct)  # every "yes" first, as a pooled study lists
    config = GraceConfig(targets="binary", init_sample=16, validation_fraction=0)
    objective = GraceObjective(config)
    objective.prepare(lm, config)
    objective.build_items(lm, records, config)
    conf = offline_confidence(lm, records)
    assert objective.init_rate == pytest.approx(0.5)
    # From the first 16 answers alone (all "yes") the level would sit at 0.5 for them and far off for the rest.
    assert conf.mean() == pytest.approx(0.5, abs=0.05)


def test_stored_confidences_are_reused_only_from_the_same_artifact(artifact, train_records):
    records = [dataclasses.replace(r, confidence={"grace": 0.123}, meta={**r.meta,
               "confidence_source": {"grace": "another-artifact"}}) for r in train_records[:4]]
    fresh = get_method("grace", model=artifact)(records)
    assert not np.allclose(fresh, 0.123)
    np.testing.assert_allclose(fresh, get_method("grace", model=artifact)(train_records[:4]), atol=1e-6)
    mine = [dataclasses.replace(r, meta={**r.meta, "confidence_source": {"grace": artifact.artifact_id}})
            for r in records]
    np.testing.assert_allclose(get_method("grace", model=artifact)(mine), 0.123)


def test_answers_never_contain_the_cnf_token(trained):
    artifact = _load(trained[1])  # a private copy: this test edits its weights
    cnf = artifact.tokenizer.convert_tokens_to_ids(CNF_TOKEN)
    with torch.no_grad():
        for matrix in (artifact.model.get_base_model().get_input_embeddings().weight,):
            matrix[cnf] = matrix[cnf] * 50  # make <CNF> the likeliest next token everywhere
    gens = _generate(artifact, _examples()[:4], hooks=())
    assert all(cnf not in g.token_ids for g in gens)


def test_a_cross_validated_probe_strength_shapes_the_targets_and_is_recorded(lively_dir, monkeypatch):
    import certa.methods.grace.objective as objective_module
    from certa.training.targets import soft_targets

    lm = _load(lively_dir)
    records = _yes_no_records(lm, 48)
    hidden = np.asarray([r.hidden_state for r in records])
    correct = np.asarray([r.correct for r in records])
    asked = []
    # What "cv" chooses is tested in test_targets.py; here, that the choice is the one used and recorded.
    monkeypatch.setattr(objective_module, "choose_probe_c", lambda h, c, **kw: asked.append(len(c)) or 0.003)
    assert not np.array_equal(soft_targets(hidden, correct, seed=0, C=0.003), soft_targets(hidden, correct, seed=0))
    for probe_c, expected_c in (("cv", 0.003), (0.01, 0.01), (1.0, 1.0)):
        config = GraceConfig(probe_c=probe_c, validation_fraction=0)
        objective = GraceObjective(config)
        objective.prepare(lm, config)
        items = objective.build_items(lm, records, config)
        assert objective.artifact_info()["probe_c"] == expected_c
        np.testing.assert_array_equal([it["target"] for it in items],
                                      soft_targets(hidden, correct, seed=0, C=expected_c))
    assert asked == [48]  # chosen once, for "cv" only, on every training answer
    for bad in ("auto", True, float("inf")):
        with pytest.raises(ValueError, match="probe_c"):
            GraceConfig(probe_c=bad)
    assert GraceConfig(probe_c="1e-2").probe_c == 0.01  # YAML reads 1e-2 as a string
