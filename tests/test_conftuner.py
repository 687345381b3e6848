"""ConfTuner on the tiny model: the objective, training through the shared trainer, the read-out."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from certa.errors import InputError
from certa.methods import get_method
from certa.methods.conftuner import (
    ConfTuner,
    ConfTunerConfig,
    ConfTunerObjective,
    generate_confidence_text,
    level_diagnostics,
    level_probabilities,
    read_answers,
    score_answers,
    train_conftuner,
)
from certa.methods.prompting.verbalized import (
    ConfidenceTokens,
    confidence_tokens,
    verbal_inputs,
    verbal_prompt,
)
from certa.methods.readouts import restricted_log_softmax
from certa.models.tensors import left_pad, positions_from_mask
from certa.records import Example, Record
from certa.training.losses import IGNORE_INDEX, tokenized_brier

torch.set_num_threads(1)

QUESTIONS = [("What is 3 + 4?", "7", "7"), ("What is 2 + 2?", "5", "4"), ("What is 5 + 1?", "6", "6"),
             ("What is 9 - 3?", "5", "6"), ("What is 1 + 1?", "2", "2"), ("What is 8 - 1?", "6", "7"),
             ("What is 4 + 4?", "8", "8"), ("What is 2 + 5?", "9", "7")]


def make_records() -> list[Record]:
    return [Record(id=f"q{i}", prompt="", response=response, question=question, answers=[gold],
                   answer_type="numeric", correct=float(response == gold))
            for i, (question, response, gold) in enumerate(QUESTIONS)]


def config(**overrides) -> ConfTunerConfig:
    base = dict(epochs=6, max_steps=12, batch_size=4, lr=3e-2, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                save_every=100)
    return ConfTunerConfig(**{**base, **overrides})


def fresh(tiny_lm):
    """A private copy of the tiny model, so adapters attached here do not leak into other tests."""
    return dataclasses.replace(tiny_lm, model=copy.deepcopy(tiny_lm.model))


def brier_of(lm, records) -> float:
    probs, tokens = level_probabilities(lm, records)
    y = torch.tensor([r.correct for r in records])
    return float(tokenized_brier(torch.tensor(probs), y, torch.tensor(tokens.scores)))


def expected_confidence_brier_of(lm, records) -> float:
    """The Brier score of the expected confidence (what certa reports): the loss at spread weight 0."""
    probs, tokens = level_probabilities(lm, records)
    expected = np.asarray(probs) @ np.asarray(tokens.scores)
    return float(np.mean((expected - np.array([r.correct for r in records])) ** 2))


@pytest.fixture(scope="module")
def trained(tiny_lm, tmp_path_factory):
    """A ConfTuner artifact trained for a few steps on the tiny model, and the model loaded from it."""
    from certa.models import load_model

    out = tmp_path_factory.mktemp("conftuner")
    # 30 steps at lr 1e-2: enough for the expected confidence to separate the 8 answers (12 steps at 3e-2 did not)
    train_conftuner(tiny_lm, make_records(), config(epochs=15, max_steps=30, lr=1e-2), out, progress=False)
    return out, load_model(str(out), device="cpu")


# ── the objective ────────────────────────────────────────────────────────────────────────────


def test_items_are_the_answer_and_its_verbal_suffix_and_carry_the_label(tiny_lm):
    objective = ConfTunerObjective(config())
    objective.prepare(tiny_lm, config())
    records = make_records()
    items = objective.build_items(tiny_lm, records, config())
    assert [it["correct"] for it in items] == [r.correct for r in records]
    first = items[0]
    text = tiny_lm.tokenizer.decode(first["prompt"] + first["response"] + first["suffix"])
    assert text == verbal_prompt(tiny_lm, records[0], objective.tokens, "cue")
    assert text.endswith("7<|im_end|>\nConfidence: ")  # the tuned read-out needs only the cue
    assert text.endswith(objective.tokens.cue.lstrip("\n")) and "What is 3 + 4?" in text
    assert tiny_lm.tokenizer.decode(first["response"], skip_special_tokens=True) == "7"


def test_full_mode_labels_cover_exactly_the_response(tiny_lm):
    cfg = config(mode="full")
    objective = ConfTunerObjective(cfg)
    objective.prepare(tiny_lm, cfg)
    record = dataclasses.replace(make_records()[0], response="The answer is 7.")
    batch = objective.collate(tiny_lm, objective.build_items(tiny_lm, [record], cfg))
    learned = [t for t in batch["labels"][0].tolist() if t != IGNORE_INDEX]
    assert tiny_lm.tokenizer.decode(learned, skip_special_tokens=True) == "The answer is 7."


def test_collate_keeps_the_answer_apart_from_the_suffix(tiny_lm):
    objective = ConfTunerObjective(config())
    items = [{"id": "a", "prompt": [5, 6], "response": [7, 8], "suffix": [9, 10, 11], "correct": 1.0},
             {"id": "b", "prompt": [12], "response": [13], "suffix": [9], "correct": 0.0}]
    batch = objective.collate(tiny_lm, items)
    assert batch["keys"] == ["a", "b"] and batch["pairs"] == [([5, 6], [7, 8]), ([12], [13])]
    assert batch["suffixes"] == [[9, 10, 11], [9]] and batch["correct"].tolist() == [1.0, 0.0]


def test_the_prefix_store_gives_the_same_cache_as_encoding_again(tiny_lm):
    from certa.methods.answer_cache import PrefixStore, encode_answers, extend, read_logits

    pairs = [([5, 6, 7, 8], [9, 10]), ([12], [13, 14, 15]), ([16, 17], [18])]
    store = PrefixStore(max_gb=1.0)
    store.plan(["a", "b", "c"], pairs)
    first = store.cache(tiny_lm.model, ["a", "b", "c"], pairs, tiny_lm.tokenizer.pad_token_id)  # encodes
    again = store.cache(tiny_lm.model, ["c", "a", "b"], [pairs[2], pairs[0], pairs[1]], tiny_lm.tokenizer.pad_token_id)
    assert store.used > 0
    direct = encode_answers(tiny_lm.model, [pairs[2], pairs[0], pairs[1]], tiny_lm.tokenizer.pad_token_id)
    suffixes = [[20, 21], [22], [23, 24, 25]]
    with torch.no_grad():
        got = read_logits(extend(tiny_lm.model, again, suffixes), suffixes)
        want = read_logits(extend(tiny_lm.model, direct, suffixes), suffixes)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert first.mask.shape[0] == 3
    empty = PrefixStore(max_gb=0)  # no memory: every batch is encoded again, same result
    torch.testing.assert_close(read_logits(extend(tiny_lm.model, empty.cache(
        tiny_lm.model, ["c", "a", "b"], [pairs[2], pairs[0], pairs[1]], tiny_lm.tokenizer.pad_token_id), suffixes),
        suffixes).detach(), want, atol=1e-5, rtol=1e-5)
    assert empty.used == 0


def test_scoring_runs_the_head_at_the_read_position_only_with_the_same_logits(tiny_lm):
    """Scoring keeps one position's logits when the suffixes are equally long; logits and gradients do not change."""
    from certa.methods.answer_cache import encode_answers, extend, read_logits, readout_logits

    lm = fresh(tiny_lm)
    pairs = [([5, 6, 7, 8], [9, 10]), ([12], [13, 14, 15]), ([16, 17], [18])]

    def cache():  # a fresh base encoding for each read-out with gradients, as training's prefix store gives
        with torch.no_grad():
            return encode_answers(lm.model, pairs, lm.tokenizer.pad_token_id)

    calls = []
    hook = lm.model.lm_head.register_forward_hook(lambda module, args, out: calls.append(out.shape[1]))
    try:
        for suffixes in ([[20, 21], [22, 23], [24, 25]], [[20, 21], [22], [23, 24, 25]]):
            weights = [p for p in lm.model.parameters() if p.requires_grad]
            want = read_logits(extend(lm.model, cache(), suffixes), suffixes)
            want_grads = torch.autograd.grad(want[:, :40].logsumexp(-1).sum(), weights, allow_unused=True)
            fresh_cache = cache()
            calls.clear()
            with torch.no_grad():
                scoring = readout_logits(lm.model, fresh_cache, suffixes)
            assert calls == [1 if len({len(s) for s in suffixes}) == 1 else 1 + max(map(len, suffixes))]
            torch.testing.assert_close(scoring, want.detach(), atol=1e-5, rtol=1e-5)
            got = readout_logits(lm.model, cache(), suffixes)
            got_grads = torch.autograd.grad(got[:, :40].logsumexp(-1).sum(), weights, allow_unused=True)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            for g, w in zip(got_grads, want_grads, strict=True):
                if w is None:
                    assert g is None or not g.any()
                else:
                    torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    finally:
        hook.remove()


def test_the_prefix_store_keeps_the_same_answers_and_slots_whatever_the_order_of_use(tiny_lm):
    """What is kept, and its slots, depend on the plan only: a resumed run reads the same numbers."""
    from certa.methods.answer_cache import PrefixStore

    pad = tiny_lm.tokenizer.pad_token_id
    pairs = {k: ([5 + i] * (2 + i), [9 + i, 10]) for i, k in enumerate("abcdef")}
    one_slot = PrefixStore(max_gb=1.0)
    one_slot.plan(["a"], [pairs["a"]])
    one_slot.cache(tiny_lm.model, ["a"], [pairs["a"]], pad)
    per_token = one_slot.used / 3                      # "a" encodes 2 prompt tokens + 1 answer token
    budget_gb = per_token * (3 + 4 + 5) / 1024 ** 3     # room for a, b and c exactly

    def run(batches):
        store = PrefixStore(max_gb=budget_gb)
        store.plan(list(pairs), list(pairs.values()))
        for keys in batches:
            store.cache(tiny_lm.model, keys, [pairs[k] for k in keys], pad)
        return store

    forward = run([["a", "b"], ["c", "d"], ["e", "f"]])
    resumed = run([["f", "c", "e"], ["d", "b", "a"]])      # other batches, other order
    assert set(forward._slots) == set(resumed._slots) == {"a", "b", "c"}
    for key in "abc":
        for (k1, v1), (k2, v2) in zip(forward._slots[key], resumed._slots[key], strict=True):
            assert torch.equal(k1, k2) and torch.equal(v1, v2)


def objective_loss(lm, records, settings: ConfTunerConfig) -> tuple[float, dict[str, float]]:
    """The objective's loss on one batch of ``records``, without gradients."""
    objective = ConfTunerObjective(settings)
    objective.prepare(lm, settings)
    batch = objective.collate(lm, objective.build_items(lm, records, settings))
    with torch.no_grad():
        loss, scalars = objective.loss(lm, batch, settings)
    return float(loss), scalars


def test_the_papers_loss_is_the_tokenized_brier_of_the_readout(tiny_lm):
    records = make_records()[:3]
    loss, scalars = objective_loss(tiny_lm, records, config(spread_weight=1.0))
    assert loss == pytest.approx(brier_of(tiny_lm, records), abs=1e-5)
    assert set(scalars) == {"brier", "mean_confidence"}


def test_loss_without_the_spread_term_is_the_brier_of_the_expected_confidence(tiny_lm):
    records = make_records()[:3]
    loss, _ = objective_loss(tiny_lm, records, config(spread_weight=0.0))
    assert loss == pytest.approx(expected_confidence_brier_of(tiny_lm, records), abs=1e-5)
    assert loss < brier_of(tiny_lm, records) - 1e-3  # the spread term is really gone


def _lora_on_last(model, keep: int, adapter: str = "default"):
    """Forward hooks that switch LoRA's contribution off on every position but the last ``keep``:
    the adapter-on-the-suffix computation, done as one plain forward over the whole sequence."""
    handles = []
    for name, module in model.named_modules():
        if name.endswith(f"lora_B.{adapter}"):
            def zero_prefix(_m, _inp, out, keep=keep):
                mask = torch.zeros(out.shape[1], 1, dtype=out.dtype)
                mask[-keep:] = 1
                return out * mask
            handles.append(module.register_forward_hook(zero_prefix))
    return handles


def test_suffix_training_equals_a_full_forward_with_the_adapter_on_the_suffix(tiny_lm):
    from certa.training.trainer import attach_adapter

    lm = fresh(tiny_lm)
    cfg = config(lora_dropout=0.0)
    objective = ConfTunerObjective(cfg)
    objective.prepare(lm, cfg)
    attach_adapter(lm, cfg, [])
    torch.manual_seed(0)
    for name, param in lm.model.named_parameters():
        if "lora_B" in name:  # LoRA starts at B = 0; move it so the adapter changes something
            param.data.normal_(0, 0.5)
    records = make_records()[:4]
    items = objective.build_items(lm, records, cfg)
    assert len({len(it["suffix"]) for it in items}) == 1  # every answer ended its turn: one suffix length
    loss, _ = objective.loss(lm, objective.collate(lm, items), cfg)
    cached = torch.autograd.grad(loss, [p for p in lm.model.parameters() if p.requires_grad])

    keep = 1 + len(items[0]["suffix"])  # the answer's last token and the suffix run with the adapter
    handles = _lora_on_last(lm.model, keep)
    try:
        ids, mask = left_pad([it["prompt"] + it["response"] + it["suffix"] for it in items], lm.tokenizer.pad_token_id)
        logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits[:, -1]
    finally:
        for handle in handles:
            handle.remove()
    probs = restricted_log_softmax(logits, objective.tokens.token_ids).exp()
    y = torch.tensor([it["correct"] for it in items])
    full = tokenized_brier(probs, y, torch.tensor(objective.tokens.scores, dtype=probs.dtype), cfg.spread_weight)
    reference = torch.autograd.grad(full, [p for p in lm.model.parameters() if p.requires_grad])
    assert loss.item() == pytest.approx(full.item(), abs=1e-6)
    for a, b in zip(cached, reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in cached)


def test_gradient_reaches_only_the_lora_weights(tiny_lm):
    from certa.training.trainer import attach_adapter

    lm = fresh(tiny_lm)
    cfg = config(mode="full")
    objective = ConfTunerObjective(cfg)
    objective.prepare(lm, cfg)
    attach_adapter(lm, cfg, objective.trainable_token_ids(lm))
    batch = objective.collate(lm, objective.build_items(lm, make_records()[:4], cfg))
    loss, scalars = objective.loss(lm, batch, cfg)
    assert "lm_loss" in scalars
    loss.backward()
    with_grad = {n for n, p in lm.model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert {n for n, p in lm.model.named_parameters() if p.requires_grad} == with_grad


# ── training with the shared trainer ─────────────────────────────────────────────────────────


def test_training_lowers_the_brier_score_of_the_expected_confidence(tiny_lm, trained):
    out, lm = trained
    records = make_records()
    assert expected_confidence_brier_of(lm, records) < expected_confidence_brier_of(tiny_lm, records) - 0.01
    info = json.loads((out / "certa.json").read_text())
    assert info["method"] == "conftuner"
    assert info["method_info"]["confidence_tokens"]["labels"] == confidence_tokens(lm.tokenizer).labels
    losses = [json.loads(line)["brier"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 30


def test_training_refuses_a_model_that_already_has_an_adapter(trained, tmp_path):
    _, lm = trained
    with pytest.raises(InputError, match="already carries adapters"):
        train_conftuner(lm, make_records(), config(), tmp_path)


def test_training_leaves_base_weights_and_the_callers_model_untouched(tiny_lm, trained):
    _, lm = trained
    base = dict(tiny_lm.model.named_parameters())
    assert not any("lora_" in name for name in base)  # train_conftuner trained a copy
    for name, param in lm.model.named_parameters():
        if "lora_" not in name:
            original = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(param, base[original]), name


def test_suffix_mode_keeps_the_base_models_greedy_answers(tiny_lm, trained):
    from certa.generation import generate

    _, lm = trained
    examples = [Example(id=f"e{i}", question=q, answers=[a], answer_type="numeric")
                for i, (q, _, a) in enumerate(QUESTIONS[:4])]
    base = generate(tiny_lm, examples, max_new_tokens=6, progress=False)
    tuned = generate(lm, examples, max_new_tokens=6, progress=False)  # LoadedModel.answering: the base model
    assert [g.token_ids for g in tuned] == [g.token_ids for g in base]


# ── the read-out ─────────────────────────────────────────────────────────────────────────────


def test_an_artifact_reads_its_confidence_while_answering_as_score_reads_it_offline(trained):
    from certa.generation import generate

    _, lm = trained
    examples = [Example(id=f"e{i}", question=q, answers=[a], answer_type="numeric")
                for i, (q, _, a) in enumerate(QUESTIONS[:6])]
    gens = generate(lm, examples, max_new_tokens=6, batch_size=4, progress=False)
    assert all(g.meta["confidence_source"]["conftuner"] == lm.artifact_id for g in gens)
    hooked = np.array([g.confidence["conftuner"] for g in gens])
    records = [Record.from_generation(g, e, 0.0) for g, e in zip(gens, examples, strict=True)]
    method = get_method("conftuner", model=lm)
    offline = method([dataclasses.replace(r, confidence={}) for r in records])
    np.testing.assert_allclose(hooked, offline, atol=1e-5)
    assert method.diagnostics()["distinct_levels"] >= 1   # the offline read-out reports its levels
    # The registered method reuses what generation read (a changed stored value shows through) ...
    records[0].confidence["conftuner"] = 0.123
    assert method(records)[0] == 0.123
    # ... but only from the artifact that read it.
    records[0].meta["confidence_source"]["conftuner"] = "another-artifact"
    assert method(records)[0] == pytest.approx(offline[0], abs=1e-5)



def test_score_is_the_expected_confidence_of_a_forward_with_the_adapter_on_the_suffix(trained):
    _, lm = trained
    records = make_records()[:3]
    method = get_method("conftuner", model=lm)
    scores = method(records)
    tokens = confidence_tokens(lm.tokenizer)
    direct = []
    for prompt, response, suffix in verbal_inputs(lm, records, tokens, "cue"):
        ids = prompt + response + suffix
        handles = _lora_on_last(lm.model.get_base_model(), 1 + len(suffix), lm.adapter)
        try:
            with torch.no_grad():
                logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1, tokens.token_ids]
        finally:
            for handle in handles:
                handle.remove()
        direct.append(float(torch.softmax(logits, -1).numpy() @ tokens.scores))
    np.testing.assert_allclose(scores, direct, atol=1e-4)
    # The adapter really was on: training moved the level distribution the score came from.
    untrained, _ = level_probabilities(lm.view(None), records)  # the same weights, adapters off
    assert np.max(np.abs(untrained - level_probabilities(lm, records)[0])) > 1e-2
    diag = method.diagnostics()
    assert len(diag["argmax_confidence"]) == 3 and 1 <= diag["distinct_levels"] <= 3


def test_level_diagnostics_counts_the_levels_used():
    tokens = ConfidenceTokens(token_ids=[10, 11, 12], scores=np.array([0.0, 0.5, 1.0]), labels=["0", "1", "2"])
    probs = np.array([[0.1, 0.6, 0.3], [0.2, 0.7, 0.1], [0.0, 0.1, 0.9]])
    diag = level_diagnostics(probs, tokens)
    assert diag == {"argmax_confidence": [0.5, 0.5, 1.0], "distinct_levels": 2, "level_counts": {"1": 2, "2": 1}}
    json.dumps(diag)  # goes into metrics.json as is


def test_black_box_answers_score_like_own_answers(trained, tmp_path):
    _, lm = trained
    records = make_records()[:3]
    path = tmp_path / "answers.jsonl"
    rows = [{"id": r.id, "question": r.question, "response": r.response, "answer_type": "numeric",
             "model": "gpt-elsewhere"} for r in records]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    np.testing.assert_allclose(score_answers(lm, path), ConfTuner(model=lm)(records), atol=1e-9)
    assert read_answers(path)[0].model == "gpt-elsewhere"


def test_read_answers_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1, "question": "q?", "response": "a"}\n{"id": 2, "question": "q?"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: missing field 'response'"):
        read_answers(path)


def test_text_readout_is_the_greedy_continuation_parsed_and_failures_are_kept(trained):
    from certa.methods.prompting.verbalized import parse_confidence

    _, lm = trained
    records = make_records()[:4]
    result = generate_confidence_text(lm, records, max_new_tokens=3)
    tokens = confidence_tokens(lm.tokenizer)
    for record, written, value in zip(records, result.texts, result.values, strict=True):
        (prompt, response, suffix), = verbal_inputs(lm, [record], tokens, "cue")
        ids = torch.tensor([prompt + response + suffix])
        with torch.no_grad(), lm.adapter_enabled():
            for _ in range(3):  # greedy, one token at a time, from a plain forward
                ids = torch.cat([ids, lm.model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert written == lm.tokenizer.decode(ids[0, -3:], skip_special_tokens=True)
        expected = parse_confidence(tokens.cue + written, scale=tokens.scale)
        assert (np.isnan(value) and expected is None) or value == pytest.approx(expected)
    assert result.failures == int(np.isnan(result.values).sum())


def test_t100_levels_train_and_read_when_numbers_are_single_tokens(tiny_model_dir, tmp_path):
    from certa.models import load_model

    lm = load_model(str(tiny_model_dir), device="cpu")
    # Stand-in for a tokenizer that keeps "0".."100" whole (Llama 3 style): add "10".."100" as tokens.
    lm.tokenizer.add_tokens([str(i) for i in range(10, 101)])
    lm.model.resize_token_embeddings(len(lm.tokenizer), mean_resizing=False)
    out = train_conftuner(lm, make_records(), config(max_steps=3, epochs=3, validation_fraction=0), tmp_path / "t100",
                          progress=False)
    tuned = load_model(str(out), device="cpu")
    probs, tokens = level_probabilities(tuned, make_records())
    assert tokens.scale == 100 and probs.shape == (len(QUESTIONS), 101)
    assert tuned.tokenizer.convert_ids_to_tokens(tokens.token_ids[100]) == "100"
    scores = get_method("conftuner", model=tuned)(make_records())
    np.testing.assert_allclose(scores, probs @ np.arange(101) / 100, atol=1e-6)


def test_the_follow_up_prompt_trains_too(tiny_lm, tmp_path):
    out = train_conftuner(tiny_lm, make_records(), config(prompt="follow_up", max_steps=2), tmp_path / "fu",
                          progress=False)
    from certa.models import load_model

    tuned = load_model(str(out), device="cpu")
    assert tuned.artifact["train_config"]["prompt"] == "follow_up"
    assert get_method("conftuner", model=tuned)(make_records()).shape == (len(QUESTIONS),)


def test_a_full_mode_artifact_answers_with_its_adapter(tiny_lm, tmp_path):
    from certa.models import load_model

    out = train_conftuner(tiny_lm, make_records(), config(mode="full", max_steps=2), tmp_path / "full", progress=False)
    tuned = load_model(str(out), device="cpu")
    assert tuned.artifact["method_info"]["answers_use_adapter"] is True
    layers = [m for m in tuned.model.modules() if hasattr(m, "disable_adapters") and hasattr(m, "lora_A")]
    with tuned.answering():
        assert layers and not any(layer.disable_adapters for layer in layers)
    suffix_mode = load_model(str(train_conftuner(tiny_lm, make_records(), config(max_steps=1), tmp_path / "s",
                                                 progress=False)), device="cpu")
    with suffix_mode.answering():
        assert all(m.disable_adapters for m in suffix_mode.model.modules()
                   if hasattr(m, "disable_adapters") and hasattr(m, "lora_A"))
