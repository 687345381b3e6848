"""One encoding per answer shared by the suffix read-outs of a scoring pass (GrACE, ConfTuner, verbalized)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from certa.methods.conftuner import ConfTunerConfig, train_conftuner
from certa.methods.conftuner import level_probabilities as conftuner_levels
from certa.methods.conftuner.method import readout_settings
from certa.methods.grace import GraceConfig, offline_confidence, train_grace
from certa.methods.prompting.verbalized import confidence_tokens
from certa.methods.prompting.verbalized import level_probabilities as verbal_levels
from certa.methods.runner import score_methods
from certa.methods.shared_encodings import shared_answer_encodings
from certa.records import Example, Record

torch.set_num_threads(1)

WORDS = "the answer is surely seven or maybe eight but I think it is seven after all".split()
METHODS = ["grace", "conftuner", "verbalized"]


def scoring_records() -> list[Record]:
    """20 answers of 1 to 16 words to questions of varied length (more than one encoding group)."""
    return [Record(id=f"r{i}", prompt="", response=" ".join(WORDS[:1 + (i * 5) % 16]),
                   question=f"What is {i} + {i % 4}?" + " Please answer." * (i % 3), answers=["7"],
                   answer_type="short", correct=float(i % 3 == 0)) for i in range(20)]


def _load(path):
    from certa.models import load_model

    return load_model(str(path), device="cpu")


@pytest.fixture(scope="module")
def artifacts(tiny_lm, tmp_path_factory):
    """A GrACE and a ConfTuner (suffix mode) artifact trained for a few steps on the tiny model."""
    from certa.generation import generate

    examples = [Example(id=f"t{i}", question=f"What is {i} + 1?", answers=[str(i + 1)]) for i in range(8)]
    gens = generate(tiny_lm, examples, max_new_tokens=6, hidden_states=True, progress=False)
    graded = [Record.from_generation(g, e, float(i % 2)) for i, (g, e) in enumerate(zip(gens, examples, strict=True))]
    grace = train_grace(tiny_lm, graded, GraceConfig(epochs=1, batch_size=4, save_every=100, seed=1),
                        tmp_path_factory.mktemp("grace"), progress=False)
    tuned = train_conftuner(tiny_lm, scoring_records()[:8],
                            ConfTunerConfig(max_steps=2, batch_size=4, lr=3e-2, lora_r=4, lora_alpha=8,
                                            lora_dropout=0.0, save_every=100),
                            tmp_path_factory.mktemp("conftuner"), progress=False)
    return grace, tuned


@pytest.fixture(scope="module")
def study(tiny_model_dir, artifacts):
    """One base model with both artifacts attached as named adapters, as a study holds them: (base, views)."""
    from certa.models import attach_artifacts

    base = _load(tiny_model_dir)
    views = attach_artifacts(base, {"grace": artifacts[0], "conftuner": artifacts[1]})
    return base, views


@contextlib.contextmanager
def counting_encodings(lm):
    """Rows the model encodes (forward calls over a prompt, with no KV cache or an empty one) in the block."""
    rows: list[int] = []

    def count(_module, _args, kwargs):
        ids = kwargs.get("input_ids")
        cache = kwargs.get("cache") if kwargs.get("cache") is not None else kwargs.get("past_key_values")
        if ids is not None and ids.shape[1] > 1 and (cache is None or cache.get_seq_length() == 0):
            rows.append(int(ids.shape[0]))

    handle = lm.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()


def read_all(base, views, records, order=("grace", "conftuner", "verbalized"), batches=(3, 5, 7)):
    """Each read-out's confidences (or level probabilities) and the rows each one encoded, in ``order``."""
    tokens = confidence_tokens(base.tokenizer)
    run = {
        "grace": lambda b: offline_confidence(views["grace"], records, batch_size=b),
        "conftuner": lambda b: conftuner_levels(views["conftuner"], records, batch_size=b)[0],
        "verbalized": lambda b: verbal_levels(base, records, tokens, adapter_enabled=False, batch_size=b),
    }
    out, encoded = {}, {}
    for name, batch in zip(order, batches, strict=True):
        with counting_encodings(base) as rows:
            out[name] = run[name](batch)
        encoded[name] = sum(rows)
    return out, encoded


def test_shared_encodings_give_the_same_read_outs_and_encode_each_answer_once(study):
    base, views = study
    records = scoring_records()
    alone, alone_rows = read_all(base, views, records)
    assert alone_rows == dict.fromkeys(METHODS, len(records))  # without a store each read-out encodes every answer
    with shared_answer_encodings([base, *views.values()], records, max_gb=1.0) as shared:
        together, rows = read_all(base, views, records)
    for name in METHODS:
        np.testing.assert_allclose(together[name], alone[name], atol=1e-5, rtol=0)
    # The first read-out encodes every answer (plus a one-token probe that sizes a KV slot); the others none.
    assert rows == {"grace": len(records), "conftuner": 0, "verbalized": 0}
    assert shared.encoded == len(records) and shared.reused >= 2 * len(records) and shared.used > 0


def test_what_is_kept_does_not_depend_on_which_read_out_ran_first(study):
    base, views = study
    records = scoring_records()
    with shared_answer_encodings([base, *views.values()], records, max_gb=1.0):
        first, _ = read_all(base, views, records)
    with shared_answer_encodings([base, *views.values()], records, max_gb=1.0):
        last, rows = read_all(base, views, records, order=("verbalized", "conftuner", "grace"), batches=(7, 5, 3))
    assert rows == {"verbalized": len(records), "conftuner": 0, "grace": 0}
    for name in METHODS:  # encoded in the same plan-decided groups: identical caches, whatever read them first
        assert np.array_equal(first[name], last[name])


def test_score_methods_shares_one_encoding_and_a_zero_bound_turns_sharing_off(study):
    base, views = study
    records = scoring_records()
    with counting_encodings(base) as off_rows:
        off = score_methods(METHODS, records, models=views, default_model=base, shared_encodings_gb=0)
    with counting_encodings(base) as on_rows:
        on = score_methods(METHODS, records, models=views, default_model=base)
    assert sum(off_rows) == 3 * len(records) and sum(on_rows) == len(records)
    for name in METHODS:
        np.testing.assert_allclose(on[name].scores, off[name].scores, atol=1e-5, rtol=0)
    with shared_answer_encodings([base], records, max_gb=0) as shared:
        assert shared is None


def test_scoring_never_encodes_the_answers_a_method_only_fits_on(study):
    """With a fitted method in the list the fit records are planned too, but in groups of their own: scoring
    the test answers encodes those alone (mixed groups had encoded 2.6x the answers in the quick demo)."""
    base, views = study
    records, fit_records = scoring_records()[:10], scoring_records()[10:]
    with counting_encodings(base) as rows:
        scored = score_methods([*METHODS, "base_rate"], records, fit_records=fit_records, models=views,
                               default_model=base)
    assert sum(rows) == len(records) and set(scored) == {*METHODS, "base_rate"}


def test_a_bound_that_holds_some_answers_keeps_those_and_encodes_the_rest_with_their_batch(study):
    base, views = study
    records = scoring_records()
    alone, _ = read_all(base, views, records)
    per_answer_gb = 2e-4  # the tiny model's encodings take roughly 10-60 KB each
    with shared_answer_encodings([base, *views.values()], records, max_gb=per_answer_gb) as shared:
        together, rows = read_all(base, views, records)
    assert 0 < shared.used <= per_answer_gb * 1024 ** 3
    assert 0 < rows["conftuner"] == rows["verbalized"] < len(records)  # the unkept rest, each time
    for name in METHODS:
        np.testing.assert_allclose(together[name], alone[name], atol=1e-5, rtol=0)


def test_the_free_read_out_reads_the_kept_hidden_state(study):
    base, views = study
    records = scoring_records()
    alone = offline_confidence(views["grace"], records, readout="free", batch_size=6)
    with shared_answer_encodings([base, *views.values()], records, max_gb=1.0):
        verbal_levels(base, records, confidence_tokens(base.tokenizer), adapter_enabled=False)  # fills the store
        with counting_encodings(base) as rows:
            shared = offline_confidence(views["grace"], records, readout="free", batch_size=6)
    assert sum(rows) == 0
    np.testing.assert_allclose(shared, alone, atol=1e-5, rtol=0)


def test_an_encoding_with_an_adapter_on_is_never_reused_for_a_base_read_out(tiny_lm, tmp_path):
    """A full-mode artifact encodes its answers with its adapter on: those encodings stay apart."""
    out = train_conftuner(tiny_lm, scoring_records()[:8],
                          ConfTunerConfig(mode="full", max_steps=2, batch_size=4, lr=3e-2, lora_r=4, lora_alpha=8,
                                          lora_dropout=0.0, save_every=100), tmp_path / "full", progress=False)
    tuned = _load(out)
    assert tuned.artifact["method_info"]["answers_use_adapter"] is True
    base = tuned.view(None)
    records = scoring_records()
    tokens = confidence_tokens(base.tokenizer)
    alone_tuned = conftuner_levels(tuned, records)[0]
    alone_base = verbal_levels(base, records, tokens, adapter_enabled=False)
    with shared_answer_encodings([tuned, base], records, max_gb=1.0) as shared:
        with counting_encodings(base) as tuned_rows:
            got_tuned = conftuner_levels(tuned, records, batch_size=3)[0]
        with counting_encodings(base) as base_rows:
            got_base = verbal_levels(base, records, tokens, adapter_enabled=False, batch_size=5)
        with counting_encodings(base) as again_rows:  # the same artifact again: its own encodings are reused
            again = conftuner_levels(tuned, records, batch_size=4)[0]
    assert sum(tuned_rows) == sum(base_rows) == len(records) and sum(again_rows) == 0
    assert shared.encoded == 2 * len(records)
    np.testing.assert_allclose(got_tuned, alone_tuned, atol=1e-5, rtol=0)
    np.testing.assert_allclose(again, alone_tuned, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_base, alone_base, atol=1e-5, rtol=0)
    # Read over a base encoding instead, the artifact's read-out would differ: mixing the two would show.
    levels, style = readout_settings(tuned)
    over_base = verbal_levels(tuned, records, levels, adapter_enabled=True, adapter_for_answer=False, style=style)
    assert np.max(np.abs(over_base - alone_tuned)) > 1e-4
