"""Test-time scaling and other downstream uses of a confidence.

Voting strategies are pure functions of one question's sampled answers
(``SampledQuestion``): which final answer each sample gave, whether it was
correct and, for the confidence-aware strategies, the confidence read with it
(GrACE stores these in ``Record.sample_confidence["grace"]``). Each strategy
returns a ``Choice`` — the chosen answer, its correctness and how many samples
it consumed — so accuracy and cost come out of the same call:

=====================  =========================================================================
``majority_vote``      SC@B: the most frequent answer among the first B samples
``adaptive_sc``        sample until the leader's Beta posterior of beating the runner-up > p
``early_stop_sc``      sample until the last ``window`` answers agree, else SC
``confidence_weighted_vote``  GrACE-SC: argmax_a Σ_{i: a_i = a} c_i
``confidence_early_stop``     GrACE-ES: the first sample with c > τ, else GrACE-SC
=====================  =========================================================================

Ties go to the answer that appeared first, so every strategy is deterministic.
Samples whose final answer could not be extracted (``None``) never win a vote
while any sample has an answer.

Downstream, ``self_correct`` re-asks low-confidence questions and
``cascade`` hands the least-confident questions to a stronger model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import betainc

from .errors import CertaError, InputError
from .records import Example, Generation, Record

if TYPE_CHECKING:
    from .models import LoadedModel

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
    first, as sample 0.
    """
    from .data import extract_answer

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

Strategy = Callable[..., Choice]
STRATEGIES: dict[str, Strategy] = {
    "sc": majority_vote,
    "adaptive_sc": adaptive_sc,
    "early_stop_sc": early_stop_sc,
    "grace_sc": confidence_weighted_vote,
    "grace_es": confidence_early_stop,
}
CONFIDENCE_STRATEGIES = frozenset({"grace_sc", "grace_es"})


def _options_for(name: str, threshold: float, window: int, tau: float) -> dict[str, Any]:
    return {"adaptive_sc": {"threshold": threshold}, "early_stop_sc": {"window": window},
            "grace_es": {"tau": tau}}.get(name, {})


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
    from .errors import UnknownNameError

    questions = _as_questions(records, confidence)
    has_conf = all(q.confidences is not None for q in questions)
    if strategies is None:
        names = [n for n in STRATEGIES if has_conf or n not in CONFIDENCE_STRATEGIES]
        if not has_conf:
            log.info("records carry no per-sample %r confidences: skipping %s", confidence,
                     ", ".join(sorted(CONFIDENCE_STRATEGIES)))
    else:
        names = list(strategies)
        for n in names:
            if n not in STRATEGIES:
                raise UnknownNameError("scaling strategy", n, STRATEGIES)
    results = {}
    for name in names:
        options = _options_for(name, threshold, window, tau)
        choices = [STRATEGIES[name](q, budget, **options) for q in questions]
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
    fig, ax = _figure()
    for name, points in curves.items():
        ax.plot([p["mean_samples"] for p in points], [p["accuracy"] for p in points], marker="o", label=name)
    ax.set_xlabel("mean samples used per question")
    ax.set_ylabel("accuracy")
    ax.set_title("Test-time scaling")
    ax.legend()
    return _save(fig, path)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig, path: str | os.PathLike[str]) -> Path:
    import matplotlib.pyplot as plt

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


# ── downstream: self-correction ───────────────────────────────────────────────────────────────

GenerateFn = Callable[[Sequence[Example]], Sequence[Generation]]


@dataclass
class SelfCorrectionResult:
    """Accuracy before and after re-asking the low-confidence questions."""

    accuracy_before: float
    accuracy_after: float
    threshold: float
    revised: int            # questions re-asked
    fixed: int              # wrong → right
    broken: int             # right → wrong
    records: list[Record] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if k != "records"}


def correction_prompt(record: Record, threshold: float = 0.5) -> str:
    """The question text of a second attempt: the question, the previous answer and the nudge to reconsider."""
    return (
        f"{record.question}\n\nYour previous answer was: {record.response.strip()}\n"
        f"Your confidence in it is below {threshold:.0%}; reconsider step by step and give a better answer."
    )


def self_correct(
    lm: LoadedModel | None,
    records: Sequence[Record],
    confidences: Sequence[float] | np.ndarray,
    threshold: float = 0.5,
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    generate_fn: GenerateFn | None = None,
    grader: str | Callable[[str, Example], float] | None = None,
) -> SelfCorrectionResult:
    """Re-prompt the questions whose confidence is below ``threshold`` and regrade them.

    The model sees its previous answer and is told its confidence is below
    the threshold (SPEC §2); questions at or above the threshold keep their
    answer. ``generate_fn(examples) -> generations`` replaces generation with
    ``lm`` (e.g. another model or an API); the returned records keep the
    original question text, so they can be scored and evaluated like any other.
    ``grader`` is passed to ``certa.data.grade`` (default: by answer type).
    """
    from .data import grade

    conf = _check_confidences(records, confidences)
    low = [r for r, c in zip(records, conf, strict=True) if c < threshold]
    if generate_fn is None:
        if lm is None:
            raise CertaError("self_correct needs a model (lm) or a generate_fn")
        generate_fn = _local_generator(lm, max_new_tokens=max_new_tokens, batch_size=batch_size)
    revised: dict[str, Record] = {}
    if low:
        asks = [replace(r.example(), question=correction_prompt(r, threshold)) for r in low]
        regraded = grade(list(generate_fn(asks)), [r.example() for r in low], grader)
        previous = {r.id: r for r in low}
        for r in regraded:
            r.meta = {**r.meta, "previous_response": previous[r.id].response,
                      "previous_correct": previous[r.id].correct}
        revised = {r.id: r for r in regraded}
    new = [revised.get(r.id, r) for r in records]
    before = np.array([r.correct for r in records])
    after = np.array([r.correct for r in new])
    return SelfCorrectionResult(
        accuracy_before=float(before.mean()), accuracy_after=float(after.mean()), threshold=threshold,
        revised=len(low), fixed=int(np.sum((before < 0.5) & (after >= 0.5))),
        broken=int(np.sum((before >= 0.5) & (after < 0.5))), records=new,
    )


def _local_generator(lm: LoadedModel, **options: Any) -> GenerateFn:
    from .generation import generate

    def run(examples: Sequence[Example]) -> list[Generation]:
        # generate() answers with the base model (LoadedModel.answering): an adapter only reads confidence.
        return generate(lm, examples, hooks=(), progress=False, **options)

    return run


def _check_confidences(records: Sequence[Record], confidences: Sequence[float] | np.ndarray) -> np.ndarray:
    conf = np.asarray(confidences, dtype=float).reshape(-1)
    if not len(records):
        raise InputError("no records given")
    if conf.shape[0] != len(records):
        raise InputError(f"{conf.shape[0]} confidences for {len(records)} records")
    if not np.all(np.isfinite(conf)):
        raise InputError("confidences contain NaN or infinite values")
    return conf


# ── downstream: model cascade ─────────────────────────────────────────────────────────────────

@dataclass
class CascadeResult:
    """Accuracy when the k least-confident questions go to the strong model, for each k."""

    ks: list[int]
    accuracy: list[float]
    strong_accuracy: float      # the strong model's accuracy on the questions it answered
    order: list[str]            # record ids, least confident first

    def to_dict(self) -> dict[str, Any]:
        return {"curve": [{"k": k, "fraction": k / len(self.order), "accuracy": a}
                          for k, a in zip(self.ks, self.accuracy, strict=True)],
                "strong_accuracy": self.strong_accuracy}


def cascade(
    records: Sequence[Record],
    confidences: Sequence[float] | np.ndarray,
    strong: LoadedModel | str | GenerateFn,
    ks: Iterable[int] | None = None,
    *,
    strong_model_name: str = "",
    api_key: str | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    grader: str | Callable[[str, Example], float] | None = None,
) -> CascadeResult:
    """Send the k least-confident questions to ``strong`` and keep the rest, for each k in ``ks``.

    ``strong`` is a loaded certa model, the base URL of an OpenAI-compatible
    server (``http://host:port/v1``; ``strong_model_name`` picks its model and
    ``api_key`` defaults to ``$OPENAI_API_KEY``), or a function
    ``examples -> generations``. The strong model answers the ``max(ks)``
    least-confident questions once; every k reuses those answers. ``ks``
    defaults to 0 %, 10 %, …, 100 % of the questions; ``grader`` is passed to
    ``certa.data.grade`` (default: by answer type).
    """
    from .data import grade

    conf = _check_confidences(records, confidences)
    n = len(records)
    ks = sorted({int(k) for k in (ks if ks is not None else np.linspace(0, n, 11).round())})
    if ks[0] < 0 or ks[-1] > n:
        raise InputError(f"every k must lie in [0, {n}], got {ks[0]}..{ks[-1]}")
    order = np.argsort(conf, kind="stable")  # least confident first; ties keep file order
    routed = [records[i] for i in order[: ks[-1]]]
    generate_fn = _strong_generator(strong, strong_model_name, api_key, max_new_tokens, batch_size)
    strong_correct = np.zeros(0)
    if routed:
        examples = [r.example() for r in routed]
        graded = {r.id: r.correct for r in grade(list(generate_fn(examples)), examples, grader)}
        strong_correct = np.array([graded[r.id] for r in routed])
    own = np.array([r.correct for r in records])[order]
    accuracy = [float((strong_correct[:k].sum() + own[k:].sum()) / n) for k in ks]
    return CascadeResult(ks, accuracy, float(strong_correct.mean()) if routed else float("nan"),
                         [records[i].id for i in order])


def _strong_generator(strong: LoadedModel | str | GenerateFn, model_name: str, api_key: str | None,
                      max_new_tokens: int, batch_size: int) -> GenerateFn:
    if isinstance(strong, str):
        return _openai_generator(strong, model_name, api_key, max_new_tokens)
    if callable(strong):
        return strong
    return _local_generator(strong, max_new_tokens=max_new_tokens, batch_size=batch_size)


def _openai_generator(base_url: str, model_name: str, api_key: str | None, max_new_tokens: int,
                      timeout: float = 120.0) -> GenerateFn:
    """Answers from an OpenAI-compatible ``/chat/completions`` endpoint, one request per question."""
    import httpx

    from .prompts import SYSTEM_PROMPT, question_prompt

    url = base_url.rstrip("/") + "/chat/completions"
    key = api_key or os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def ask(client: httpx.Client, example: Example) -> Generation:
        payload = {"model": model_name, "max_tokens": max_new_tokens, "temperature": 0.0,
                   "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                {"role": "user", "content": question_prompt(example)}]}
        try:
            reply = client.post(url, json=payload, headers=headers)
            reply.raise_for_status()
            text = reply.json()["choices"][0]["message"]["content"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise CertaError(f"{url}: request for question {example.id!r} failed ({exc})") from None
        return Generation(id=example.id, prompt=question_prompt(example), response=text or "", model=model_name)

    def run(examples: Sequence[Example]) -> list[Generation]:
        with httpx.Client(timeout=timeout) as client:
            return [ask(client, e) for e in examples]

    return run


def plot_cascade(result: CascadeResult, path: str | os.PathLike[str]) -> Path:
    """Accuracy against the share of questions sent to the strong model (a PNG at ``path``)."""
    fig, ax = _figure()
    n = len(result.order)
    ax.plot([k / n for k in result.ks], result.accuracy, marker="o", label="by confidence")
    ax.set_xlabel("share of questions sent to the strong model")
    ax.set_ylabel("accuracy")
    ax.set_title("Model cascade")
    ax.legend()
    return _save(fig, path)
