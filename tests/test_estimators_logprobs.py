"""The log-prob estimator family (issue 18): hand-computed values, directions, and the model helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import expit
from scipy.stats import entropy as kl_divergence

from certa.errors import CertaError, InputError
from certa.methods import get_method, method_class, method_names
from certa.methods.logprobs.distribution import (
    TOKEN_STAT_NAMES,
    fisher_rao_from_uniform,
    renyi_divergence_from_uniform,
    token_distribution_stats,
)
from certa.methods.logprobs.pmi import pointwise_mutual_information, unconditional_logprobs
from certa.methods.logprobs.sequence import maximum_sequence_probability, perplexity
from certa.methods.logprobs.token_sar import token_relevance, token_sar, token_similarities
from certa.records import Record

NEW = ["max_sequence_probability", "renyi_divergence", "fisher_rao", "pmi", "token_sar"]

# p = (1/2, 1/4, 1/8, 1/8) over a 4-token vocabulary, given as logits (temperature 1 recovers p).
P = np.array([0.5, 0.25, 0.125, 0.125])
LOGITS = np.log(P)


def record(id: str, **fields) -> Record:
    fields.setdefault("question", "What is the capital of France?")
    fields.setdefault("response", "Paris")
    return Record(id=id, prompt="", **fields)


def test_the_family_is_registered_and_describes_itself():
    assert set(NEW) <= set(method_names())
    for name in NEW:
        cls = method_class(name)
        assert cls.describe() and cls.describe() != name
        assert cls.cost


# --- maximum sequence probability and perplexity --------------------------------------------


def test_maximum_sequence_probability_is_the_unnormalised_negative_log_likelihood():
    logprobs = [-0.1, -0.2, -0.7]
    assert maximum_sequence_probability(logprobs) == pytest.approx(1.0)
    assert perplexity(logprobs) == pytest.approx(math.exp(1.0 / 3.0))
    scores = get_method("max_sequence_probability")([
        record("a", token_logprobs=logprobs),
        record("b", token_logprobs=[*logprobs, -0.5]),  # one more, less sure token: less probable answer
        record("c", token_logprobs=[0.0, 0.0]),
    ])
    np.testing.assert_allclose(scores, [math.exp(-1.0), math.exp(-1.5), 1.0])


def test_inverse_perplexity_is_sequence_likelihood():
    r = record("a", token_logprobs=[-0.3, -1.2, -0.05])
    assert get_method("sequence_likelihood")([r])[0] == pytest.approx(1.0 / perplexity(r.token_logprobs))


def test_msp_ranks_length_where_sequence_likelihood_does_not():
    short, long = record("s", token_logprobs=[-0.2]), record("l", token_logprobs=[-0.2] * 5)
    msp = get_method("max_sequence_probability")([short, long])
    mean = get_method("sequence_likelihood")([short, long])
    assert msp[0] > msp[1] and mean[0] == pytest.approx(mean[1])


# --- Rényi divergence and Fisher–Rao distance from uniform ----------------------------------


def test_renyi_divergence_matches_hand_values():
    # alpha = 0.5: H_0.5 = 2 log sum sqrt(p); D = log V - H_0.5.
    h_half = 2 * math.log(math.sqrt(0.5) + 0.5 + 2 * math.sqrt(0.125))  # = 2 log 1.914214 = 1.298614
    assert renyi_divergence_from_uniform(LOGITS, alpha=0.5, temperature=1) == pytest.approx(math.log(4) - h_half)
    assert renyi_divergence_from_uniform(LOGITS, alpha=0.5, temperature=1) == pytest.approx(0.0876806, abs=1e-6)
    # alpha = 2: D = log(V sum p^2) = log(4 * 0.34375) = log 1.375.
    assert renyi_divergence_from_uniform(LOGITS, alpha=2, temperature=1) == pytest.approx(math.log(1.375))
    # alpha = 1 is KL(p || u) = log 4 - 1.75 log 2 = 0.25 log 2, as scipy computes it.
    assert renyi_divergence_from_uniform(LOGITS, alpha=1, temperature=1) == pytest.approx(0.25 * math.log(2))
    assert renyi_divergence_from_uniform(LOGITS, alpha=1, temperature=1) == pytest.approx(
        kl_divergence(P, np.full(4, 0.25)))


def test_temperature_divides_the_logits():
    assert renyi_divergence_from_uniform(LOGITS, temperature=2) == pytest.approx(
        renyi_divergence_from_uniform(LOGITS / 2, temperature=1))
    assert fisher_rao_from_uniform(LOGITS, temperature=2) == pytest.approx(
        fisher_rao_from_uniform(LOGITS / 2, temperature=1))


def test_fisher_rao_matches_hand_values():
    # Bhattacharyya coefficient with uniform: sum sqrt(p_i / 4) = 1.914214 / 2.
    coefficient = (math.sqrt(0.5) + 0.5 + 2 * math.sqrt(0.125)) / 2
    assert fisher_rao_from_uniform(LOGITS, temperature=1) == pytest.approx(2 / math.pi * math.acos(coefficient))
    assert fisher_rao_from_uniform(LOGITS, temperature=1) == pytest.approx(0.1871346, abs=1e-6)
    # One-hot over 4 tokens: coefficient 1/2, arccos = pi/3, distance 2/3.
    assert fisher_rao_from_uniform([60.0, 0.0, 0.0, 0.0], temperature=1) == pytest.approx(2 / 3)
    assert fisher_rao_from_uniform(np.zeros(4), temperature=1) == pytest.approx(0.0, abs=1e-7)
    # At alpha = 0.5 both read the same coefficient: D_0.5 = -2 log(coefficient).
    d = renyi_divergence_from_uniform(LOGITS, alpha=0.5, temperature=1)
    assert fisher_rao_from_uniform(LOGITS, temperature=1) == pytest.approx(2 / math.pi * math.acos(math.exp(-d / 2)))


def test_distance_from_uniform_grows_with_peakedness():
    flat, mid, peaked = np.zeros(8), np.linspace(0, 2, 8), np.linspace(0, 8, 8)
    for fn in (renyi_divergence_from_uniform, fisher_rao_from_uniform):
        values = [float(fn(z, temperature=1)) for z in (flat, mid, peaked)]
        assert values[0] == pytest.approx(0.0, abs=1e-7) and values[0] < values[1] < values[2]
    assert renyi_divergence_from_uniform([80.0] + [0.0] * 7, temperature=1) == pytest.approx(math.log(8))


def test_token_distribution_stats_reduces_any_leading_shape_on_torch_and_numpy():
    logits = np.random.default_rng(0).normal(scale=3.0, size=(2, 5, 50))
    from_numpy = token_distribution_stats(logits)
    from_torch = token_distribution_stats(torch.tensor(logits, dtype=torch.float32))
    assert set(from_numpy) == set(from_torch) == set(TOKEN_STAT_NAMES)
    for name in TOKEN_STAT_NAMES:
        assert from_torch[name].shape == (2, 5)
        np.testing.assert_allclose(from_torch[name], from_numpy[name], atol=2e-5)
    np.testing.assert_allclose(from_numpy["renyi_divergence"], renyi_divergence_from_uniform(logits))
    one = token_distribution_stats(torch.tensor(LOGITS), alpha=1, temperature=1)
    assert float(one["renyi_divergence"]) == pytest.approx(0.25 * math.log(2), abs=1e-6)


def test_bad_parameters_are_input_errors():
    with pytest.raises(InputError, match="alpha"):
        renyi_divergence_from_uniform(LOGITS, alpha=0)
    with pytest.raises(InputError, match="temperature"):
        fisher_rao_from_uniform(LOGITS, temperature=0)
    with pytest.raises(InputError, match="vocabulary"):
        fisher_rao_from_uniform([1.0])


def _stats_record(id: str, logits: np.ndarray) -> Record:
    stats = token_distribution_stats(logits)
    return record(id, meta={"vocab_size": logits.shape[-1], "token_stats": {k: v.tolist() for k, v in stats.items()}})


def test_renyi_and_fisher_rao_methods_average_the_stored_statistics():
    rng = np.random.default_rng(1)
    sure = _stats_record("sure", rng.normal(size=(4, 16)) + 12.0 * np.eye(16)[:4])
    unsure = _stats_record("unsure", rng.normal(scale=0.1, size=(4, 16)))
    renyi = get_method("renyi_divergence")([sure, unsure])
    expected = [np.mean(r.meta["token_stats"]["renyi_divergence"]) / math.log(16) for r in (sure, unsure)]
    np.testing.assert_allclose(renyi, expected)
    fisher = get_method("fisher_rao")([sure, unsure])
    np.testing.assert_allclose(fisher, [np.mean(r.meta["token_stats"]["fisher_rao"]) for r in (sure, unsure)])
    assert renyi[0] > renyi[1] and fisher[0] > fisher[1]
    np.testing.assert_allclose(get_method("renyi_divergence", vocab_size=16)([sure]), renyi[:1])


def test_missing_token_stats_name_the_generation_option():
    with pytest.raises(CertaError, match=r"'q1'.*token_stats.*renyi_divergence.*generate with token_stats=True"):
        get_method("renyi_divergence", vocab_size=10)([record("q1", meta={})])
    with pytest.raises(CertaError, match=r"'q2'.*fisher_rao"):
        get_method("fisher_rao")([record("q2", meta={"token_stats": {"renyi_divergence": [0.1]}})])
    with pytest.raises(CertaError, match="vocabulary size"):
        get_method("renyi_divergence")([record("q3", meta={"token_stats": {"renyi_divergence": [0.1]}})])


def test_a_record_whose_meta_is_null_gets_the_one_line_errors():
    from certa.records import from_dict

    # `"meta": null` in a JSON file: the methods must not call .get on None.
    row = {"id": "n0", "prompt": "", "response": "Paris", "token_logprobs": [-0.1], "token_entropies": [0.2],
           "meta": None, "correct": 1.0}
    r = from_dict(Record, row, "x.jsonl:1")
    assert r.meta is None
    assert get_method("token_entropy", vocab_size=10)([r])[0] == pytest.approx(1 - 0.2 / math.log(10))
    with pytest.raises(CertaError, match="vocabulary size"):
        get_method("token_entropy")([r])
    with pytest.raises(CertaError, match=r"'n0'.*token_stats.*renyi_divergence"):
        get_method("renyi_divergence", vocab_size=10)([r])
    with pytest.raises(CertaError, match=r"'n0'.*token_stats.*fisher_rao"):
        get_method("fisher_rao")([r])


# --- pointwise mutual information ------------------------------------------------------------


def test_pmi_pairs_tokens_and_treats_the_unscored_first_token_as_log_one():
    conditional = [-0.5, -1.0, -0.2]
    # n - 1 unconditional values: terms -0.5 - 0, -1.0 - (-2.0), -0.2 - (-0.2) = -0.5, 1.0, 0.0.
    assert pointwise_mutual_information(conditional, [-2.0, -0.2]) == pytest.approx(0.5 / 3)
    # n values: terms 0.5, 0.0, 0.8.
    assert pointwise_mutual_information(conditional, [-1.0, -1.0, -1.0]) == pytest.approx(1.3 / 3)
    with pytest.raises(InputError, match="3 conditional.*1 unconditional"):
        pointwise_mutual_information(conditional, [-1.0])


def _logprobs_alone(lm, ids: list[int], first: int) -> np.ndarray:
    """One unpadded forward: log p(ids[j] | ids[:j]) for j >= first."""
    with torch.no_grad():
        logp = lm.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return np.array([logp[j - 1, ids[j]].item() for j in range(first, len(ids))])


def test_unconditional_logprobs_match_unpadded_forwards(tiny_lm):
    tok = tiny_lm.tokenizer
    sequences = [tok(t, add_special_tokens=False)["input_ids"]
                 for t in ["Paris", "The answer is 42.", "William Shakespeare wrote it", "7"]]
    got = unconditional_logprobs(tiny_lm, sequences, batch_size=3)
    for seq, values in zip(sequences, got, strict=True):
        assert values.shape == (len(seq) - 1,)
        np.testing.assert_allclose(values, _logprobs_alone(tiny_lm, seq, 1), atol=1e-5)
    prefix = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    with_prefix = unconditional_logprobs(tiny_lm, sequences, prefix_ids=prefix, batch_size=2)
    for seq, values in zip(sequences, with_prefix, strict=True):
        assert values.shape == (len(seq),)
        np.testing.assert_allclose(values, _logprobs_alone(tiny_lm, prefix + seq, len(prefix)), atol=1e-5)


def test_pmi_method_is_the_logistic_of_mean_pmi(tiny_lm):
    tok = tiny_lm.tokenizer
    ids = tok("The answer is 42.", add_special_tokens=False)["input_ids"]
    unconditional = _logprobs_alone(tiny_lm, ids, 1)
    sure = record("sure", token_ids=ids, token_logprobs=[-0.1] * len(ids))
    unsure = record("unsure", token_ids=ids, token_logprobs=[-3.0] * len(ids))
    scores = get_method("pmi", model=tiny_lm, batch_size=1)([sure, unsure])
    expected = [expit(np.mean(np.asarray(r.token_logprobs) - np.r_[0.0, unconditional])) for r in (sure, unsure)]
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    assert scores[0] > scores[1]  # the question made the answer more probable
    chat = get_method("pmi", model=tiny_lm, prefix="chat")([sure])
    prefix = tok(tiny_lm.chat_prompt(""), add_special_tokens=False)["input_ids"]
    uncond_chat = _logprobs_alone(tiny_lm, prefix + ids, len(prefix))
    assert chat[0] == pytest.approx(expit(np.mean(np.asarray(sure.token_logprobs) - uncond_chat)), abs=1e-6)


def test_pmi_needs_a_model_and_matching_tokens(tiny_lm):
    with pytest.raises(CertaError, match="needs a model"):
        get_method("pmi")
    with pytest.raises(InputError, match="prefix"):
        get_method("pmi", model=tiny_lm, prefix="question")
    with pytest.raises(CertaError, match="'bad'.*2 token_ids but 1 token_logprobs"):
        get_method("pmi", model=tiny_lm)([record("bad", token_ids=[5, 6], token_logprobs=[-0.1])])


# --- token-SAR -------------------------------------------------------------------------------


def test_token_sar_weights_log_probs_by_relevance():
    logprobs, sims = [-0.1, -2.0, -0.5], [0.9, 0.5, 1.0]
    # relevance 1 - s = (0.1, 0.5, 0) normalised to (1/6, 5/6, 0); E = 0.1/6 + 2.0 * 5/6 = 1.683333.
    np.testing.assert_allclose(token_relevance(sims), [1 / 6, 5 / 6, 0.0])
    assert token_sar(logprobs, sims) == pytest.approx(0.1 / 6 + 2.0 * 5 / 6)
    # The same tokens, but the unsure one irrelevant: lower uncertainty.
    assert token_sar(logprobs, [0.5, 1.0, 0.9]) < token_sar(logprobs, sims)
    # Nothing relevant: uniform weights, the mean negative log-prob.
    assert token_sar(logprobs, [1.0, 1.0, 1.0]) == pytest.approx(2.6 / 3)
    with pytest.raises(InputError, match="3 log-probs but 2"):
        token_sar(logprobs, [0.5, 0.5])


def _char_embed(texts):
    """A stand-in sentence embedder: unit-normalised letter counts (deterministic, no model)."""
    out = np.zeros((len(texts), 27))
    for i, text in enumerate(texts):
        for ch in text.lower():
            out[i, ord(ch) - 97 if "a" <= ch <= "z" else 26] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def test_token_similarities_drop_one_token_at_a_time(tiny_lm):
    tok = tiny_lm.tokenizer
    ids = [*tok(" Paris is big", add_special_tokens=False)["input_ids"], tok.convert_tokens_to_ids("<|im_end|>")]
    sims = token_similarities("Q?", ids, tok, embed=_char_embed)
    assert sims.shape == (len(ids),) and sims[-1] == 1.0  # the end-of-turn token is special: relevance 0
    full = _char_embed(["Q? " + tok.decode(ids, skip_special_tokens=True)])[0]
    for t in range(len(ids) - 1):
        without = _char_embed(["Q? " + tok.decode(ids[:t] + ids[t + 1:], skip_special_tokens=True)])[0]
        assert sims[t] == pytest.approx(float(full @ without))


def test_token_sar_method_matches_the_pure_functions(tiny_lm):
    tok = tiny_lm.tokenizer
    ids = tok(" William Shakespeare", add_special_tokens=False)["input_ids"]
    logprobs = list(np.linspace(-0.1, -1.5, len(ids)))
    r = record("a", question="Who wrote Hamlet?", token_ids=ids, token_logprobs=logprobs)
    score = get_method("token_sar", model=tiny_lm, embed=_char_embed)([r])[0]
    sims = token_similarities("Who wrote Hamlet?", ids, tok, embed=_char_embed)
    assert score == pytest.approx(math.exp(-token_sar(logprobs, sims)))
    worse = record("b", question="Who wrote Hamlet?", token_ids=ids, token_logprobs=[v - 1.0 for v in logprobs])
    assert get_method("token_sar", model=tiny_lm, embed=_char_embed)([worse])[0] < score
