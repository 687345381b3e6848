"""GrACE end to end on a tiny model: training, artifact, read-outs, the generation hook."""

from __future__ import annotations

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
