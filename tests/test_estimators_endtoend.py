"""Issue 18's estimators on records the tiny model really generated (samples, hidden states, special tokens)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from certa.data import grade
from certa.generation import generate
from certa.methods import get_method
from certa.methods.logprobs.distribution import token_distribution_stats
from certa.methods.sampling.similarity import clear_similarity_cache
from certa.records import Example


def _char_embed(texts):
    out = np.zeros((len(texts), 27))
    for i, text in enumerate(texts):
        for ch in text.lower():
            out[i, ord(ch) - 97 if "a" <= ch <= "z" else 26] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


@pytest.fixture(scope="module")
def records(tiny_lm):
    examples = [Example(id=f"q{i}", question=q, answers=[a]) for i, (q, a) in enumerate([
        ("What is the capital of France?", "Paris"), ("Who wrote Hamlet?", "William Shakespeare"),
        ("What is 3 + 4?", "7"), ("Is the proposed answer correct?", "True"),
        ("What is the capital of France? Answer briefly.", "Paris"), ("Name a letter.", "A"),
    ])]
    gens = generate(tiny_lm, examples, max_new_tokens=8, batch_size=3, samples=3, hidden_states=True,
                    progress=False)
    return grade(gens, examples)


def test_stats_from_a_teacher_forced_pass_line_up_with_the_recorded_log_probs(tiny_lm, records):
    """What generation will store: token_distribution_stats of the same distributions the log-probs came from."""
    for r in records:
        prompt = tiny_lm.tokenizer(r.prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = tiny_lm.model(torch.tensor([prompt + r.token_ids])).logits[0, len(prompt) - 1:-1]
        logp = logits.float().log_softmax(-1).gather(1, torch.tensor(r.token_ids)[:, None]).squeeze(1)
        np.testing.assert_allclose(logp.numpy(), r.token_logprobs, atol=1e-4)
        r.meta["token_stats"] = {k: v.tolist() for k, v in token_distribution_stats(logits).items()}
    for name in ("renyi_divergence", "fisher_rao"):
        scores = get_method(name, model=tiny_lm)(records)
        assert scores.shape == (len(records),) and np.all((scores > 0) & (scores < 1))


@pytest.mark.parametrize("name, options", [
    ("max_sequence_probability", {}), ("pmi", {"batch_size": 4}), ("token_sar", {"embed": _char_embed}),
    ("lexical_similarity", {}), ("semantic_sets", {"similarity": "rougeL"}),
    ("semantic_entropy", {"similarity": "rougeL"}), ("eigv", {"similarity": "rougeL"}),
    ("degree", {"similarity": "rougeL", "target": "answer"}), ("eccentricity", {"similarity": "rougeL"}),
    ("kernel_language_entropy", {"similarity": "rougeL"}),
])
def test_every_estimator_scores_generated_records(tiny_lm, records, name, options):
    clear_similarity_cache()
    needs_model = name in ("pmi", "token_sar")
    method = get_method(name, model=tiny_lm if needs_model else None, **options)
    scores = method(records)
    assert scores.shape == (len(records),) and np.all((scores >= 0) & (scores <= 1))


def test_mahalanobis_fits_on_generated_hidden_states(records):
    scores = get_method("mahalanobis").fit(records[:4])(records)
    assert scores.shape == (len(records),) and np.all((scores > 0) & (scores <= 1))
