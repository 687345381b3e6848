"""Baseline confidence methods and the shared next-token scoring helper."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from certa.errors import CertaError, MissingDependencyError
from certa.methods import ConfidenceMethod, get_method, method_names
from certa.methods.calibration import Isotonic, Platt, Temperature
from certa.methods.embeddings import minilm_available
from certa.methods.prompting.ptrue import p_true_prompt
from certa.methods.readouts import (
    continuation_token_ids,
    restricted_log_softmax,
    restricted_next_token_probs,
)
from certa.records import Record

BASELINES = ["base_rate", "sequence_likelihood", "token_entropy", "verbalized", "p_true", "consistency", "linear_probe",
             "apricot", "platt", "temperature", "isotonic"]


def record(id: str, **fields) -> Record:
    fields.setdefault("question", f"question {id}?")
    fields.setdefault("response", "an answer")
    fields.setdefault("answers", ["an answer"])
    return Record(id=id, prompt="", **fields)


def _ids(lm, text: str) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def _last_logits_alone(lm, text: str) -> torch.Tensor:
    """One unpadded forward of one text: the reference every batched read-out must match."""
    with torch.no_grad():
        return lm.model(torch.tensor([_ids(lm, text)])).logits[0, -1].double()


# --- the scoring helper ----------------------------------------------------------------------


TEXTS = ["<|im_start|>user\nWhat is 3 + 4?", "Paris", "The answer is 42. Confidence: 8", "(A"]


def test_restricted_probs_match_a_manual_softmax_of_unpadded_forwards(tiny_lm):
    token_ids = [_ids(tiny_lm, t)[0] for t in ["A", "B", "7", "Paris"]]
    probs = restricted_next_token_probs(tiny_lm, TEXTS, token_ids, batch_size=3)
    assert probs.shape == (len(TEXTS), len(token_ids))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    expected = np.stack([torch.softmax(_last_logits_alone(tiny_lm, t)[token_ids], -1).numpy() for t in TEXTS])
    # Texts of different lengths share left-padded batches: equality checks padding and positions.
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert np.ptp(expected[:, 0]) > 1e-6


def test_restricted_log_softmax_is_differentiable_and_normalised():
    logits = torch.tensor([[2.0, 0.0, -1.0, 3.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    out = restricted_log_softmax(logits, [0, 3])
    expected = torch.log_softmax(torch.tensor([[2.0, 3.0], [0.0, 0.0]]), -1)
    torch.testing.assert_close(out.detach(), expected)
    out[0, 0].backward()
    assert logits.grad is not None and logits.grad[0, 1] == 0 and logits.grad[0, 0] != 0


def test_continuation_token_ids(tiny_lm):
    ids = continuation_token_ids(tiny_lm.tokenizer, "Answer: (", ["A", "B"])
    assert ids == [_ids(tiny_lm, "A")[0], _ids(tiny_lm, "B")[0]]
    assert continuation_token_ids(tiny_lm.tokenizer, "Answer: (", ["A", "10"]) is None  # "10" is two tokens


# --- training-free methods on the generation's own evidence ----------------------------------


def test_sequence_likelihood_is_exp_mean_logprob():
    records = [record("a", token_logprobs=[-0.1, -0.2, -0.6]), record("b", token_logprobs=[math.log(0.5)])]
    scores = get_method("sequence_likelihood")(records)
    np.testing.assert_allclose(scores, [math.exp(-0.3), 0.5])


def test_token_entropy_normalises_by_log_vocab(tiny_lm):
    records = [record("a", token_entropies=[1.0, 2.0]), record("b", token_entropies=[0.0])]
    scores = get_method("token_entropy", vocab_size=400)(records)
    np.testing.assert_allclose(scores, [1 - 1.5 / math.log(400), 1.0])
    vocab = tiny_lm.model.get_output_embeddings().weight.shape[0]
    from_model = get_method("token_entropy", model=tiny_lm)(records)
    np.testing.assert_allclose(from_model, [1 - 1.5 / math.log(vocab), 1.0])


def test_token_entropy_without_a_vocab_size_says_what_to_pass():
    with pytest.raises(CertaError, match="vocab_size"):
        get_method("token_entropy")([record("a", token_entropies=[1.0])])


def test_missing_logprobs_name_the_record():
    with pytest.raises(CertaError, match="'r7'.*token_logprobs"):
        get_method("sequence_likelihood")([record("r7")])
    with pytest.raises(CertaError, match="'r8'.*token_entropies"):
        get_method("token_entropy", vocab_size=10)([record("r8")])


# --- methods that run the model --------------------------------------------------------------


def _qa_records() -> list[Record]:
    return [
        record("n", question="What is 3 + 4?", response="7", answer_type="numeric"),
        record("s", question="Who wrote Hamlet?", response="William Shakespeare wrote it."),
        record("c", question="Which is a fruit?", response="A", answer_type="choice", choices=["apple", "car"]),
    ]


def test_p_true_matches_a_direct_forward(tiny_lm):
    records = _qa_records()
    scores = get_method("p_true", model=tiny_lm, batch_size=2)(records)
    option_ids = [_ids(tiny_lm, "A")[0], _ids(tiny_lm, "B")[0]]
    expected = []
    for r in records:
        text = p_true_prompt(tiny_lm, r.example(), r.response)
        assert text.endswith("(") and "Proposed answer: " + r.response in text
        probs = torch.softmax(_last_logits_alone(tiny_lm, text)[option_ids], -1).numpy()
        expected.append(probs[0] / probs.sum())
    np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_model_methods_need_a_model():
    for name in ["p_true", "verbalized"]:
        with pytest.raises(CertaError, match="needs a model"):
            get_method(name)


# --- consistency -----------------------------------------------------------------------------


def test_consistency_counts_samples_with_the_greedy_final_answer():
    records = [
        record("n", response="The answer is 42.", answer_type="numeric",
               samples=["42", "41", "So the total is 42", "I don't know"]),
        record("c", response="B", answer_type="choice", choices=["car", "apple"], samples=["apple", "A", "B."]),
        record("s", response="Paris", samples=["paris!", "The capital is Paris.", "Lyon"]),
    ]
    np.testing.assert_allclose(get_method("consistency")(records), [2 / 4, 2 / 3, 2 / 3])


def test_consistency_without_samples_says_how_to_generate_them():
    with pytest.raises(CertaError, match="'q9'.*samples=K"):
        get_method("consistency")([record("q9", samples=["x"]), record("q9", samples=[])])


def test_semantic_consistency_adds_close_short_answers(monkeypatch):
    # A stand-in embedder: every text maps to a unit vector chosen by hand.
    vectors = {"big apple": [1.0, 0.0], "new york city": [0.8, 0.6], "boston": [0.0, 1.0], "7": [1.0, 0.0],
               "8": [1.0, 0.0]}
    monkeypatch.setattr("certa.methods.sampling.consistency.embed_texts",
                        lambda texts: np.array([vectors[t] for t in texts]))
    records = [
        record("s", response="Big Apple", samples=["New York City", "Boston", "big apple"]),
        record("n", response="7", answer_type="numeric", samples=["8"]),  # numbers never match semantically
    ]
    np.testing.assert_allclose(get_method("consistency", semantic=True, threshold=0.75)(records), [2 / 3, 0.0])
    np.testing.assert_allclose(get_method("consistency", semantic=True, threshold=0.9)(records), [1 / 3, 0.0])


@pytest.mark.skipif(minilm_available(), reason="the optional embedding package is installed")
def test_semantic_consistency_without_the_package_gives_the_install_command():
    with pytest.raises(MissingDependencyError, match="pip install"):
        get_method("consistency", semantic=True)([record("s", samples=["x"])])


# --- fitted methods --------------------------------------------------------------------------


def _hidden_records(n: int, seed: int, dim: int = 16) -> list[Record]:
    """Correctness is linearly readable from the hidden state along one direction, plus noise."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(99).normal(size=dim)
    correct = rng.integers(0, 2, size=n)
    states = rng.normal(size=(n, dim)) + np.outer(2 * correct - 1, direction) * 0.8
    return [record(f"h{seed}-{i}", hidden_state=states[i].tolist(), correct=float(correct[i])) for i in range(n)]


def _auroc(method: ConfidenceMethod, records: Sequence[Record]) -> float:
    return roc_auc_score([r.correct for r in records], method(records))


def test_linear_probe_learns_a_linear_signal():
    probe = get_method("linear_probe").fit(_hidden_records(200, seed=0))
    assert _auroc(probe, _hidden_records(200, seed=1)) > 0.9


def test_linear_probe_fits_partial_credit_as_a_soft_target():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    records = _hidden_records(100, seed=2)
    for r in records[:10]:
        r.correct = 0.3
    scores = get_method("linear_probe").fit(records)(records)
    # By hand: each row twice, labelled 1 with weight y and 0 with weight 1 - y (cross-entropy to y).
    x = np.array([r.hidden_state for r in records])
    y = np.array([r.correct for r in records])
    both, labels, weights = np.vstack([x, x]), np.r_[np.ones(100), np.zeros(100)], np.r_[y, 1 - y]
    keep = weights > 0
    scaler = StandardScaler().fit(both[keep])  # standardised over the rows the logistic fit sees
    reference = LogisticRegression(max_iter=2000).fit(scaler.transform(both[keep]), labels[keep],
                                                      sample_weight=weights[keep])
    np.testing.assert_allclose(scores, reference.predict_proba(scaler.transform(x))[:, 1], atol=1e-6)
    hard = [dataclasses.replace(r, correct=float(r.correct > 0.5)) for r in records]
    assert not np.allclose(scores, get_method("linear_probe").fit(hard)(hard), atol=1e-3)  # the 0.3s mattered


def test_linear_probe_errors_name_the_problem():
    probe = get_method("linear_probe")
    with pytest.raises(CertaError, match="must be fitted"):
        probe(_hidden_records(4, seed=0))
    with pytest.raises(CertaError, match="must be fitted"):
        probe.score(_hidden_records(4, seed=0))
    with pytest.raises(CertaError, match="'nohs'.*hidden_states=True"):
        probe.fit([*_hidden_records(4, seed=0), record("nohs")])
    with pytest.raises(CertaError, match="both correct and incorrect"):
        probe.fit([r for r in _hidden_records(20, seed=0) if r.correct == 1])
    probe.fit(_hidden_records(20, seed=0))
    with pytest.raises(CertaError, match="size 8"):
        probe(_hidden_records(3, seed=0, dim=8))


_GOOD = ["Paris", "Rome", "Berlin", "Madrid", "Vienna", "Lisbon", "Athens", "Dublin", "Prague", "Oslo"]
_BAD = ["I am not sure, maybe", "it could be something", "hard to say, perhaps", "no idea, possibly"]


def _text_records(n: int, seed: int) -> list[Record]:
    """Hedged answers are wrong, plain city names right: a signal in the text alone."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        correct = int(rng.integers(0, 2))
        city = str(rng.choice(_GOOD))
        response = city if correct else f"{rng.choice(_BAD)} {city}"
        out.append(record(f"t{seed}-{i}", question=f"What is the capital of country {i}?", response=response,
                          correct=float(correct)))
    return out


def test_apricot_learns_from_question_and_answer_text():
    apricot = get_method("apricot", features="tfidf").fit(_text_records(120, seed=0))
    assert apricot.features_used == "tfidf"
    assert _auroc(apricot, _text_records(120, seed=1)) > 0.9


def test_apricot_must_be_fitted():
    with pytest.raises(CertaError, match="must be fitted"):
        get_method("apricot").score(_text_records(3, seed=0))


# --- calibrators -----------------------------------------------------------------------------


class _Given(ConfidenceMethod):
    """A stand-in base method: the score stored in each record's meta."""

    name = "given"

    def score(self, records: Sequence[Record]) -> np.ndarray:
        return np.array([r.meta["score"] for r in records])


def _ece(scores: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    which = np.minimum((scores * bins).astype(int), bins - 1)
    return sum(abs(scores[which == b].mean() - correct[which == b].mean()) * np.mean(which == b)
               for b in range(bins) if np.any(which == b))


def _overconfident_records(n: int, seed: int, temperature: float = 3.0) -> list[Record]:
    """True accuracy p; the score is sigmoid(T · logit p): right ranking, over-confident values."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.95, size=n)
    y = rng.random(n) < p
    s = 1 / (1 + np.exp(-temperature * np.log(p / (1 - p))))
    return [record(f"o{seed}-{i}", correct=float(y[i]), meta={"score": s[i]}) for i in range(n)]


@pytest.mark.parametrize("calibrator", [Platt, Temperature, Isotonic])
def test_calibrators_reduce_ece(calibrator):
    fit_on, test_on = _overconfident_records(2000, seed=0), _overconfident_records(2000, seed=1)
    method = calibrator(base=_Given()).fit(fit_on)
    y = np.array([r.correct for r in test_on])
    raw, calibrated = _Given().score(test_on), method(test_on)
    assert _ece(calibrated, y) < 0.5 * _ece(raw, y)
    assert np.all(np.diff(calibrated[np.argsort(raw)]) >= -1e-12)  # every map is monotone


def test_temperature_recovers_the_distortion():
    method = Temperature(base=_Given()).fit(_overconfident_records(4000, seed=0, temperature=3.0))
    assert method.temperature == pytest.approx(3.0, rel=0.1)


def test_calibrator_by_name_wraps_the_base_method():
    method = get_method("sequence_likelihood+platt")
    assert isinstance(method, Platt) and method.base.name == "sequence_likelihood"
    records = [record(str(i), token_logprobs=[-0.1 * i], correct=float(i < 10)) for i in range(20)]
    scores = method.fit(records)(records)
    assert scores[0] > 0.5 > scores[-1]


def test_calibrating_a_fitted_method_cross_fits_the_base():
    records = _hidden_records(150, seed=3)
    method = get_method("linear_probe+isotonic", folds=3).fit(records)
    assert method.base.fitted
    assert _auroc(method, _hidden_records(150, seed=4)) > 0.85


def _few_correct(correct_ids: set[int], n: int = 10) -> list[Record]:
    states = np.random.default_rng(5).normal(size=(n, 3))
    return [record(f"f{i}", hidden_state=states[i].tolist(), correct=float(i in correct_ids)) for i in range(n)]


@pytest.mark.parametrize("name", ["linear_probe+platt", "linear_probe+isotonic"])
def test_cross_fitting_is_stratified_so_every_fold_sees_both_classes(name):
    # 2 correct of 10, placed where plain shuffled 5-fold KFold held both out together (records 2 and 8):
    # that fold's base saw only incorrect records. Stratified 2-fold cross-fitting trains on one of each.
    method = get_method(name).fit(_few_correct({2, 8}))
    assert method.fitted and method.base.fitted
    # Four records, 2 correct: fewer than the 5 folds asked for, so 2 folds are used.
    get_method(name).fit(_few_correct({0, 1}, n=4))


@pytest.mark.parametrize("name", ["linear_probe+platt", "linear_probe+isotonic"])
def test_cross_fitting_with_a_single_correct_record_says_so(name):
    with pytest.raises(CertaError, match="needs at least 2 correct records, got 1 of 10"):
        get_method(name).fit(_few_correct({0}))
    with pytest.raises(CertaError, match="needs at least 2 incorrect records, got 1 of 10"):
        get_method(name).fit(_few_correct(set(range(1, 10))))
    # A base fitted beforehand is not cross-fitted: the caller decided how to use the records.
    from certa.methods.calibration import Platt

    probe = get_method("linear_probe").fit(_few_correct({0, 1}))
    assert Platt(base=probe).fit(_few_correct({0})).fitted


# --- the catalogue ---------------------------------------------------------------------------


def test_every_baseline_is_registered_and_describes_itself():
    from certa.methods import method_class

    assert set(BASELINES) <= set(method_names())
    for name in BASELINES:
        cls = method_class(name)
        assert cls.describe() and cls.describe() != name
        assert cls.cost


def test_base_rate_is_the_training_accuracy_for_every_answer():
    train = [record(f"t{i}", correct=float(i % 4 == 0)) for i in range(20)]
    test = [record(f"s{i}") for i in range(3)]
    method = get_method("base_rate").fit(train)
    assert method(test).tolist() == [0.25, 0.25, 0.25]
    with pytest.raises(CertaError, match="must be fitted"):
        get_method("base_rate")(test)


def test_scores_outside_the_unit_interval_are_an_error_not_a_silent_clip():
    from certa.methods.base import check_scores

    np.testing.assert_allclose(check_scores([0.0, 1.0 + 1e-9, -1e-9], 3, "m"), [0.0, 1.0, 0.0])  # rounding
    with pytest.raises(CertaError, match="'m' returned 1 confidences outside"):
        check_scores([0.2, 1.3], 2, "m")


def test_temperature_scaling_at_its_bound_warns_loudly():
    from certa.methods.calibration import CalibrationWarning

    records = [record(f"t{i}", correct=float(i % 7 == 0), token_logprobs=[-0.01 * (i % 3)]) for i in range(70)]
    method = get_method("sequence_likelihood+temperature")
    with pytest.warns(CalibrationWarning, match="hit its bound"):
        method.fit(records)
    assert method.diagnostics()["at_bound"] is True
    np.testing.assert_allclose(method(records), 0.5, atol=0.05)  # what the warning is about: a near-constant 0.5
