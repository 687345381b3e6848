"""Test-time scaling strategies on hand-built questions, and the downstream uses of a confidence."""

from __future__ import annotations

import numpy as np
import pytest

from certa.errors import InputError, UnknownNameError
from certa.records import Generation, Record
from certa.uses.cascade import cascade, plot_cascade
from certa.uses.self_correct import self_correct
from certa.uses.voting import (
    SampledQuestion,
    adaptive_sc,
    budget_ladder,
    confidence_early_stop,
    confidence_weighted_vote,
    early_stop_sc,
    leader_posterior,
    majority_vote,
    plot_scaling,
    questions_from_records,
    run_strategies,
    scaling_curves,
)


def q(answers, correct_answer="7", confidences=None, id="q"):
    return SampledQuestion(id, list(answers), [float(a == correct_answer) for a in answers], confidences)


# ── voting ───────────────────────────────────────────────────────────────────────────────────


def test_majority_vote_counts_only_the_budget():
    question = q(["3", "7", "7", "3", "3"])
    three = majority_vote(question, 3)
    assert (three.answer, three.correct, three.samples_used) == ("7", 1.0, 3)
    five = majority_vote(question, 5)
    assert (five.answer, five.correct, five.samples_used) == ("3", 0.0, 5)


def test_majority_vote_tie_goes_to_first_seen_and_none_never_wins():
    assert majority_vote(q(["3", "7", "7", "3"]), 4).answer == "3"
    assert majority_vote(q([None, None, "7"]), 3).answer == "7"
    only_none = majority_vote(q([None, None]), 2)
    assert only_none.answer is None and only_none.correct == 0.0


def test_weighted_vote_breaks_a_count_tie_by_confidence():
    question = q(["3", "7", "3", "7"], confidences=[0.2, 0.6, 0.3, 0.5])
    assert majority_vote(question, 4).answer == "3"          # 2 vs 2, first seen
    choice = confidence_weighted_vote(question, 4)           # 0.5 vs 1.1
    assert (choice.answer, choice.correct, choice.samples_used) == ("7", 1.0, 4)


def test_weighted_vote_can_overrule_the_majority():
    question = q(["3", "3", "7"], confidences=[0.1, 0.2, 0.9])
    assert majority_vote(question, 3).answer == "3"
    assert confidence_weighted_vote(question, 3).answer == "7"


def test_early_stop_counts_samples_until_a_window_agrees():
    question = q(["3", "7", "7", "7", "3", "3"])
    choice = early_stop_sc(question, 6, window=3)
    assert (choice.answer, choice.correct, choice.samples_used) == ("7", 1.0, 4)
    assert early_stop_sc(question, 6, window=2).samples_used == 3
    # No window ever agrees: the whole budget is spent and the majority decides.
    no_agreement = early_stop_sc(q(["3", "7", "3", "5"]), 4, window=2)
    assert (no_agreement.answer, no_agreement.samples_used) == ("3", 4)


def test_early_stop_ignores_windows_of_unparsed_answers():
    assert early_stop_sc(q([None, None, "7", "7"]), 4, window=2).samples_used == 4


def test_leader_posterior_matches_closed_form():
    # Beta(v+1, 1): P(p > 1/2) = 1 - 2^-(v+1).
    for v in range(6):
        assert leader_posterior(v, 0) == pytest.approx(1 - 0.5 ** (v + 1))
    assert leader_posterior(3, 3) == pytest.approx(0.5)
    # Beta(3, 2): P(p > 1/2) = 11/16.
    assert leader_posterior(2, 1) == pytest.approx(11 / 16)


def test_adaptive_sc_stops_at_the_first_confident_leader():
    unanimous = q(["7"] * 8)
    # 1 - 2^-(v+1) first exceeds 0.95 at v = 4.
    assert adaptive_sc(unanimous, 8, threshold=0.95).samples_used == 4
    assert adaptive_sc(unanimous, 8, threshold=0.8).samples_used == 2
    split = q(["3", "7"] * 4)
    choice = adaptive_sc(split, 8, threshold=0.95)
    assert (choice.answer, choice.samples_used) == ("3", 8)


def test_grace_es_returns_first_confident_sample():
    question = q(["3", "7", "3"], confidences=[0.4, 0.95, 0.99])
    choice = confidence_early_stop(question, 3, tau=0.9)
    assert (choice.answer, choice.correct, choice.samples_used) == ("7", 1.0, 2)


def test_grace_es_falls_back_to_weighted_vote():
    question = q(["3", "7", "3", "7"], confidences=[0.2, 0.6, 0.3, 0.5])
    fallback = confidence_early_stop(question, 4, tau=0.9)
    weighted = confidence_weighted_vote(question, 4)
    assert fallback == weighted
    assert (fallback.answer, fallback.samples_used) == ("7", 4)


def test_budget_and_confidence_errors_name_the_record():
    with pytest.raises(InputError, match="'short'.*budget 4"):
        majority_vote(q(["7", "7"], id="short"), 4)
    with pytest.raises(InputError, match="no per-sample confidences"):
        confidence_weighted_vote(q(["7"]), 1)
    with pytest.raises(InputError, match="2 samples but 1 confidences"):
        q(["7", "3"], confidences=[0.5])


# ── over a dataset ───────────────────────────────────────────────────────────────────────────


def _questions():
    return [
        q(["7", "7", "7", "7"], confidences=[0.9, 0.9, 0.9, 0.9], id="a"),
        q(["3", "7", "3", "7"], confidences=[0.2, 0.6, 0.3, 0.5], id="b"),
        q(["3", "3", "7", "3"], confidences=[0.5, 0.5, 0.5, 0.5], id="c"),
    ]


def test_run_strategies_aggregates_accuracy_and_cost():
    results = run_strategies(_questions(), 4, window=2, tau=0.85, threshold=0.9)
    assert set(results) == {"sc", "adaptive_sc", "early_stop_sc", "grace_sc", "grace_es"}
    assert results["sc"] == {"accuracy": pytest.approx(1 / 3), "mean_samples": 4.0}
    assert results["grace_sc"]["accuracy"] == pytest.approx(2 / 3)
    # grace_es: a stops at 1 (0.9 > 0.85), b and c fall back after 4.
    assert results["grace_es"] == {"accuracy": pytest.approx(2 / 3), "mean_samples": pytest.approx(3.0)}
    # early_stop (w=2): a at 2, b never → 4, c at 2 ("3","3").
    assert results["early_stop_sc"]["mean_samples"] == pytest.approx(8 / 3)


def test_run_strategies_skips_confidence_strategies_without_confidences():
    plain = [q(["7", "3"], id="x")]
    assert set(run_strategies(plain, 2)) == {"sc", "adaptive_sc", "early_stop_sc"}
    with pytest.raises(InputError):
        run_strategies(plain, 2, strategies=["grace_sc"])
    with pytest.raises(UnknownNameError, match="grace_sx"):
        run_strategies(plain, 2, strategies=["grace_sx"])


def test_scaling_curves_and_plot(tmp_path):
    curves = scaling_curves(_questions(), [1, 2, 4], window=2)
    assert [p["budget"] for p in curves["sc"]] == [1.0, 2.0, 4.0]
    assert curves["sc"][0] == {"budget": 1.0, "accuracy": pytest.approx(1 / 3), "mean_samples": 1.0}
    path = plot_scaling(curves, tmp_path / "scaling.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def _record(id, response, correct, samples=(), sample_correct=(), conf=None, answer="7"):
    return Record(id=id, prompt="", response=response, samples=list(samples),
                  sample_correct=list(sample_correct), sample_confidence={"grace": conf} if conf else {},
                  question=f"What is {id}?", answers=[answer], answer_type="numeric", correct=correct)


def test_questions_from_records_extracts_answers_and_confidences():
    r = _record("a", "7", 1.0, samples=["The answer is 7.", "It is 3"], sample_correct=[1.0, 0.0],
                conf=[0.8, 0.1])
    (question,) = questions_from_records([r], "grace")
    assert question.answers == ["7", "3"]
    assert question.correct == [1.0, 0.0]
    assert question.confidences == [0.8, 0.1]
    (with_greedy,) = questions_from_records([r], None, include_greedy=True)
    assert with_greedy.answers == ["7", "7", "3"] and with_greedy.confidences is None


def test_a_misspelt_confidence_name_is_refused_not_skipped():
    # the library dropped GrACE-SC and GrACE-ES without a word; only the CLI checked the name
    r = _record("a", "7", 1.0, samples=["7", "3"], sample_correct=[1.0, 0.0], conf=[0.8, 0.1])
    with pytest.raises(InputError, match="confidence 'grase': the records carry per-sample confidences of grace"):
        run_strategies([r], 2, confidence="grase")
    plain = _record("b", "7", 1.0, samples=["7", "3"], sample_correct=[1.0, 0.0])
    assert set(run_strategies([plain], 2, confidence="grase")) == {"sc", "adaptive_sc", "early_stop_sc"}


# ── cascade ──────────────────────────────────────────────────────────────────────────────────


def _oracle(answer_of):
    """A fake strong model: answers from a table, counting the questions it was asked."""
    asked: list[str] = []

    def generate(examples):
        asked.extend(e.id for e in examples)
        return [Generation(id=e.id, prompt="", response=answer_of[e.id]) for e in examples]

    return generate, asked


def test_cascade_accuracy_curve_on_a_synthetic_case(tmp_path):
    # Own correctness 0,1,0,1 with confidences .1,.9,.3,.6; the strong model gets q0 and q3 right only.
    records = [_record(f"q{i}", "0", c) for i, c in enumerate([0.0, 1.0, 0.0, 1.0])]
    strong, asked = _oracle({"q0": "7", "q1": "0", "q2": "0", "q3": "7"})
    result = cascade(records, [0.1, 0.9, 0.3, 0.6], strong, ks=[0, 1, 2, 3, 4])
    assert result.order == ["q0", "q2", "q3", "q1"]
    # k=1 fixes q0; k=2 sends q2 (still wrong); k=3 q3 stays right; k=4 breaks q1.
    assert result.accuracy == pytest.approx([0.5, 0.75, 0.75, 0.75, 0.5])
    assert result.strong_accuracy == pytest.approx(0.5)
    assert asked == ["q0", "q2", "q3", "q1"]  # one call, for max(ks) questions
    curve = result.to_dict()["curve"]
    assert curve[2] == {"k": 2, "fraction": 0.5, "accuracy": pytest.approx(0.75)}
    assert plot_cascade(result, tmp_path / "cascade.png").stat().st_size > 0


def test_cascade_only_asks_for_what_the_largest_k_needs():
    records = [_record(f"q{i}", "0", 0.0) for i in range(5)]
    strong, asked = _oracle({f"q{i}": "7" for i in range(5)})
    result = cascade(records, [0.5, 0.1, 0.9, 0.2, 0.3], strong, ks=[2])
    assert sorted(asked) == ["q1", "q3"]
    assert result.accuracy == [pytest.approx(0.4)]
    with pytest.raises(InputError, match=r"\[0, 5\]"):
        cascade(records, [0.5] * 5, strong, ks=[6])
    with pytest.raises(InputError, match="4 confidences for 5 records"):
        cascade(records, [0.5] * 4, strong)


# ── self-correction ──────────────────────────────────────────────────────────────────────────


def test_self_correct_reasks_only_low_confidence_questions_and_regrades():
    records = [_record("a", "3", 0.0), _record("b", "7", 1.0), _record("c", "7", 1.0)]
    seen = []

    def second_attempt(examples):
        seen.extend(examples)
        return [Generation(id=e.id, prompt="", response={"a": "7", "c": "5"}[e.id]) for e in examples]

    result = self_correct(None, records, np.array([0.2, 0.9, 0.4]), generate_fn=second_attempt)
    assert [e.id for e in seen] == ["a", "c"]
    assert "Your previous answer was: 3" in seen[0].question and "below 50%" in seen[0].question
    assert (result.accuracy_before, result.accuracy_after) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert (result.revised, result.fixed, result.broken) == (2, 1, 1)
    assert [r.correct for r in result.records] == [1.0, 1.0, 0.0]
    assert result.records[0].question == "What is a?"           # the original question is kept
    assert result.records[0].meta["previous_response"] == "3"
    assert result.records[1] is records[1]


def test_self_correct_on_the_tiny_model_runs_and_regrades(tiny_lm):
    records = [_record("a", "3", 0.0), _record("b", "7", 1.0)]
    result = self_correct(tiny_lm, records, [0.1, 0.9], max_new_tokens=4)
    assert result.revised == 1
    revised = result.records[0]
    assert revised.id == "a" and revised.meta["previous_response"] == "3"
    assert "Your previous answer was: 3" in revised.prompt
    assert revised.correct in (0.0, 1.0) and revised.token_ids  # graded, and generated by the model
    assert result.records[1] is records[1]


def test_budget_ladder_is_powers_of_two_below_the_budget_then_the_budget():
    assert budget_ladder(1) == [1]
    assert budget_ladder(8) == [1, 2, 4, 8]
    assert budget_ladder(12) == [1, 2, 4, 8, 12]
    assert budget_ladder(64) == [1, 2, 4, 8, 16, 32, 64]
    with pytest.raises(InputError):
        budget_ladder(0)
