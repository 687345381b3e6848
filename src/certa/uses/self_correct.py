"""Self-correction (ConfTuner, arXiv 2508.18847): re-ask the questions answered with low confidence, and regrade."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..data import grade
from ..errors import CertaError
from ..records import Example, Record
from .answering import GenerateFn, check_confidences, local_generator

if TYPE_CHECKING:
    from ..models import LoadedModel


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
    the threshold (ConfTuner, arXiv 2508.18847); questions at or above the threshold keep their
    answer. ``generate_fn(examples) -> generations`` replaces generation with
    ``lm`` (e.g. another model or an API); the returned records keep the
    original question text, so they can be scored and evaluated like any other.
    ``grader`` is passed to ``certa.data.grade`` (default: by answer type).
    """
    conf = check_confidences(records, confidences)
    low = [r for r, c in zip(records, conf, strict=True) if c < threshold]
    if generate_fn is None:
        if lm is None:
            raise CertaError("self_correct needs a model (lm) or a generate_fn")
        generate_fn = local_generator(lm, max_new_tokens=max_new_tokens, batch_size=batch_size)
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
