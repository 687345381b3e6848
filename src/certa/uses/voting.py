"""Test-time scaling: voting strategies over a question's sampled answers (GrACE, arXiv 2509.09438).

Strategies are pure functions of one question's sampled answers
(``SampledQuestion``): which final answer each sample gave, whether it was
correct and, for the confidence-aware strategies, the confidence read with it
(GrACE stores these in ``Record.sample_confidence["grace"]``). Each returns a
``Choice`` — the chosen answer, its correctness and how many samples it
consumed — so accuracy and cost come out of the same call. They are
registered by name in :data:`STRATEGIES`:

=====================  =========================================================================
``sc``                 majority vote (SC@B) over the first B samples
``adaptive_sc``        sample until the leader's Beta posterior of beating the runner-up > p
``early_stop_sc``      sample until the last ``window`` answers agree, else SC
``grace_sc``           confidence-weighted vote: argmax_a Σ_{i: a_i = a} c_i
``grace_es``           the first sample with c > τ, else GrACE-SC
=====================  =========================================================================

Ties go to the answer that appeared first, so every strategy is deterministic.
Samples whose final answer could not be extracted (``None``) never win a vote
while any sample has an answer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import extract_answer
from ..errors import InputError
from ..evaluation.figures import line_figure
from ..records import Record, atomic_write_bytes
from ..registry import Registry

log = logging.getLogger(__name__)


# ── per-question samples ──────────────────────────────────────────────────────────────────────


@dataclass
class SampledQuestion:
    """One question's sampled responses, reduced to what voting needs.

    ``answers[i]`` is the normalised final answer of sample i (``None`` when
    none could be extracted), ``correct[i]`` its graded correctness and
    ``confidences[i]`` the confidence read with it (``None`` when the records
    carry none).
    """

    id: str
    answers: list[str | None]
    correct: list[float]
    confidences: list[float] | None = None

    def __post_init__(self) -> None:
        if len(self.correct) != len(self.answers):
            raise InputError(f"record {self.id!r}: {len(self.answers)} samples but {len(self.correct)} grades")
        if self.confidences is not None and len(self.confidences) != len(self.answers):
            raise InputError(
                f"record {self.id!r}: {len(self.answers)} samples but {len(self.confidences)} confidences"
            )


@dataclass
class Choice:
    """What a strategy answered for one question and what it cost."""

    answer: str | None
    correct: float
    samples_used: int


def questions_from_records(records: Sequence[Record], confidence: str | None = "grace",
                           *, include_greedy: bool = False) -> list[SampledQuestion]:
    """Turn graded records with samples into ``SampledQuestion``s.

    ``confidence`` names the method whose per-sample confidences to read from
    ``Record.sample_confidence`` (``None``: ignore confidences). When a record
    lacks them, that question's ``confidences`` is ``None`` and only the
    count-based strategies can run. ``include_greedy`` puts the greedy answer
    first, as sample 0. Naming a confidence the records do not carry, when
    they carry others, is an error: a typo would silently leave out every
    confidence-weighted strategy.
    """
    carried = sorted({name for r in records for name in r.sample_confidence})
    if confidence is not None and carried and confidence not in carried:
        raise InputError(f"confidence {confidence!r}: the records carry per-sample confidences of "
                         f"{', '.join(carried)}")
    questions = []
    for r in records:
        texts = list(r.samples)
        correct = [float(c) for c in r.sample_correct]
        if len(correct) != len(texts):
            raise InputError(f"record {r.id!r}: {len(texts)} samples but {len(correct)} sample grades "
                             "(grade the generations again)")
        confs = list(r.sample_confidence[confidence]) if confidence in r.sample_confidence else None
        if include_greedy:
            texts.insert(0, r.response)
            correct.insert(0, float(r.correct))
            if confs is not None:
                confs = [r.confidence[confidence], *confs] if confidence in r.confidence else None
        answers = [extract_answer(t, r.answer_type, r.choices) for t in texts]
        questions.append(SampledQuestion(r.id, answers, correct, confs))
    return questions


# ── voting strategies (one question each) ─────────────────────────────────────────────────────


def _tally(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> dict[str | None, float]:
    """Votes per answer in order of first appearance; ``None`` only counts when nothing else does."""
    totals: dict[str | None, float] = {}
    for i, a in enumerate(answers):
        totals[a] = totals.get(a, 0.0) + (1.0 if weights is None else float(weights[i]))
    if len(totals) > 1:
        totals.pop(None, None)
    return totals


def _pick(q: SampledQuestion, used: int, weights: Sequence[float] | None = None) -> Choice:
    """The answer with the most (weighted) votes among the first ``used`` samples; ties → first seen.

    Its correctness is that of the first sample that gave it (samples with the same
    extracted answer grade alike under every built-in grader).
    """
    totals = _tally(q.answers[:used], weights[:used] if weights is not None else None)
    winner = max(totals, key=totals.__getitem__)  # max keeps the first of equal keys: insertion order
    first = q.answers.index(winner)
    return Choice(winner, q.correct[first], used)


def _check_budget(q: SampledQuestion, budget: int) -> None:
    if budget < 1:
        raise InputError(f"budget must be at least 1, got {budget}")
    if len(q.answers) < budget:
        raise InputError(f"record {q.id!r} has {len(q.answers)} samples; budget {budget} needs as many "
                         f"(generate with samples >= {budget})")


def _confidences(q: SampledQuestion) -> list[float]:
    if q.confidences is None:
        raise InputError(f"record {q.id!r} has no per-sample confidences (generate with the GrACE hook)")
    return q.confidences


def majority_vote(q: SampledQuestion, budget: int) -> Choice:
    """Self-consistency (SC@B): the most frequent final answer among the first ``budget`` samples."""
    _check_budget(q, budget)
    return _pick(q, budget)


def confidence_weighted_vote(q: SampledQuestion, budget: int) -> Choice:
    """GrACE-SC: the answer whose samples' confidences sum highest, argmax_a Σ_{i: a_i = a} c_i."""
    _check_budget(q, budget)
    return _pick(q, budget, _confidences(q))


def leader_posterior(leader_votes: int, runner_up_votes: int) -> float:
    """P(p_leader > p_runner_up) under a uniform prior, with the two answers' votes as a Beta.

    This is the Beta stopping rule of Adaptive-Consistency (Aggarwal et al.,
    2023): with v₁ votes for the leader and v₂ for the runner-up, the
    leader's share p among the two is Beta(v₁ + 1, v₂ + 1) and the posterior
    probability that it is the majority is P(p > ½) = 1 − I_½(v₁ + 1, v₂ + 1).
    With no runner-up this is 1 − 2^-(v₁+1).
    """
    from scipy.special import betainc

    return float(1.0 - betainc(leader_votes + 1, runner_up_votes + 1, 0.5))


def adaptive_sc(q: SampledQuestion, budget: int, threshold: float = 0.95) -> Choice:
    """Adaptive self-consistency: stop once ``leader_posterior`` of the vote leader exceeds ``threshold``."""
    _check_budget(q, budget)
    for used in range(1, budget + 1):
        counts = sorted(_tally(q.answers[:used]).values(), reverse=True)
        runner_up = int(counts[1]) if len(counts) > 1 else 0
        if leader_posterior(int(counts[0]), runner_up) > threshold:
            return _pick(q, used)
    return _pick(q, budget)


def early_stop_sc(q: SampledQuestion, budget: int, window: int = 3) -> Choice:
    """Early-stopping SC: stop when the last ``window`` samples all give the same (extracted) answer."""
    _check_budget(q, budget)
    if window < 1:
        raise InputError(f"window must be at least 1, got {window}")
    for used in range(window, budget + 1):
        last = q.answers[used - window:used]
        if last[0] is not None and all(a == last[0] for a in last):
            return Choice(last[0], q.correct[used - window], used)
    return _pick(q, budget)


def confidence_early_stop(q: SampledQuestion, budget: int, tau: float = 0.8) -> Choice:
    """GrACE-ES: return the first sample with confidence > ``tau``; if none, GrACE-SC over all ``budget``."""
    _check_budget(q, budget)
    confs = _confidences(q)
    for i in range(budget):
        if confs[i] > tau:
            return Choice(q.answers[i], q.correct[i], i + 1)
    return _pick(q, budget, confs)


# ── running strategies over a dataset ─────────────────────────────────────────────────────────

@dataclass(frozen=True)
class Strategy:
    """A registered voting strategy: the function, whether it reads confidences, its tuning options."""

    run: Callable[..., Choice]
    uses_confidence: bool = False
    options: tuple[str, ...] = ()


STRATEGIES: Registry[Strategy] = Registry("scaling strategy")
STRATEGIES.add("sc", Strategy(majority_vote))
STRATEGIES.add("adaptive_sc", Strategy(adaptive_sc, options=("threshold",)))
STRATEGIES.add("early_stop_sc", Strategy(early_stop_sc, options=("window",)))
STRATEGIES.add("grace_sc", Strategy(confidence_weighted_vote, uses_confidence=True))
STRATEGIES.add("grace_es", Strategy(confidence_early_stop, uses_confidence=True, options=("tau",)))
#: The strategies in their table order.
STRATEGY_ORDER = ("sc", "adaptive_sc", "early_stop_sc", "grace_sc", "grace_es")


def budget_ladder(budget: int) -> list[int]:
    """The budgets a scaling curve visits: powers of two below ``budget``, and ``budget`` itself."""
    if budget < 1:
        raise InputError(f"budget must be at least 1, got {budget}")
    ladder, b = [], 1
    while b < budget:
        ladder.append(b)
        b *= 2
    return [*ladder, budget]


def _as_questions(items: Sequence[Record] | Sequence[SampledQuestion], confidence: str | None
                  ) -> list[SampledQuestion]:
    if not items:
        raise InputError("no records to run test-time scaling on")
    if isinstance(items[0], SampledQuestion):
        return list(items)  # type: ignore[arg-type]
    return questions_from_records(items, confidence)  # type: ignore[arg-type]


def run_strategies(
    records: Sequence[Record] | Sequence[SampledQuestion],
    budget: int,
    *,
    strategies: Iterable[str] | None = None,
    confidence: str | None = "grace",
    threshold: float = 0.95,
    window: int = 3,
    tau: float = 0.8,
    per_question: bool = False,
) -> dict[str, dict[str, Any]]:
    """Accuracy and mean samples used of each strategy at ``budget``.

    Returns ``{strategy: {"accuracy": ..., "mean_samples": ...}}``, plus
    ``"correct"`` (one value per question, for paired comparisons) when
    ``per_question``. By default
    every strategy runs; the confidence-aware ones (``grace_sc``,
    ``grace_es``) are skipped, with a log line, when the records carry no
    per-sample ``confidence``; naming them explicitly makes that an error.
    """
    questions = _as_questions(records, confidence)
    has_conf = all(q.confidences is not None for q in questions)
    if strategies is None:
        names = [n for n in STRATEGY_ORDER if has_conf or not STRATEGIES.get(n).uses_confidence]
        if not has_conf:
            log.info("records carry no per-sample %r confidences: skipping the confidence-weighted strategies",
                     confidence)
    else:
        names = list(strategies)
    settings = {"threshold": threshold, "window": window, "tau": tau}
    results = {}
    for name in names:
        strategy = STRATEGIES.get(name)
        options = {key: settings[key] for key in strategy.options}
        choices = [strategy.run(q, budget, **options) for q in questions]
        results[name] = {
            "accuracy": float(np.mean([c.correct for c in choices])),
            "mean_samples": float(np.mean([c.samples_used for c in choices])),
        }
        if per_question:
            results[name]["correct"] = [float(c.correct) for c in choices]
    return results


def scaling_curves(
    records: Sequence[Record] | Sequence[SampledQuestion],
    budgets: Iterable[int],
    **options: Any,
) -> dict[str, list[dict[str, float]]]:
    """``run_strategies`` at each budget: ``{strategy: [{"budget", "accuracy", "mean_samples"}, ...]}``."""
    questions = _as_questions(records, options.pop("confidence", "grace"))
    curves: dict[str, list[dict[str, float]]] = {}
    for budget in sorted(set(budgets)):
        for name, result in run_strategies(questions, budget, **options).items():
            curves.setdefault(name, []).append({"budget": float(budget), **result})
    return curves




def plot_scaling(curves: dict[str, list[dict[str, float]]], path: str | os.PathLike[str]) -> Path:
    """Accuracy against mean samples used, one line per strategy (a PNG at ``path``)."""
    series = {name: ([p["mean_samples"] for p in points], [p["accuracy"] for p in points])
              for name, points in curves.items()}
    png = line_figure(series, xlabel="mean samples used per question", ylabel="accuracy", title="Test-time scaling")
    return atomic_write_bytes(path, png)
