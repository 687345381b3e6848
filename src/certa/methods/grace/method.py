"""The registered ``grace`` method: P(<CNF>) after the answer, from a trained GrACE artifact."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ...errors import CertaError
from ...records import Record
from ..base import Needs, register
from ..trained import TrainedMethod
from .config import GraceConfig
from .objective import GraceObjective, require_hidden_states
from .readout import GraceHook, offline_confidence

if TYPE_CHECKING:
    from pathlib import Path

    from ...models import LoadedModel
    from ...training.config import TrainConfig


@register("grace")
class Grace(TrainedMethod):
    """GrACE: P(<CNF>) after the answer, from a trained artifact (read during generation when possible)."""

    needs = Needs.MODEL | Needs.TRAINING
    fit_needs = Needs.HIDDEN_STATES
    cost = "one decoding step over the answer's KV cache (zero when read during generation or readout=free)"
    paper: ClassVar[str] = "GrACE (arXiv 2509.09438)"
    config_class = GraceConfig

    def __init__(self, model: LoadedModel | None = None, **options: Any):
        super().__init__(model, **options)
        if self.model is not None and self.model.method != self.name:
            raise CertaError(f"method 'grace' needs a trained GrACE artifact, but model {self.model.name!r} is not "
                             "one: train with `certa train grace` and load the artifact directory")

    @classmethod
    def make_objective(cls, config: TrainConfig) -> GraceObjective:
        return GraceObjective(cls.resolve_config(config))  # type: ignore[arg-type]

    @classmethod
    def check_training_records(cls, records: Sequence[Record]) -> None:
        require_hidden_states(records)

    def generation_hooks(self) -> list[Any]:
        return [GraceHook(calibrate=self.recalibrated)]

    def score(self, records: Sequence[Record]) -> np.ndarray:
        """Confidences read during generation by this very artifact are reused (the hook stored them
        recalibrated); the rest are read offline."""
        lm = self.model
        assert lm is not None
        info = (lm.artifact or {}).get("method_info", {})
        scores = self.stored_confidences(records)
        todo = np.flatnonzero(np.isnan(scores))
        if len(todo):
            scores[todo] = self.recalibrated(offline_confidence(
                lm, [records[i] for i in todo], readout=info.get("readout", "step"),
                adapter_for_answer=bool(info.get("answers_use_adapter", False)), batch_size=self.batch_size))
        return scores


def train_grace(lm: LoadedModel, records: Sequence[Record], config: GraceConfig | dict | None = None,
                out_dir: str | os.PathLike[str] = "grace-artifact", resume: bool = False, *,
                in_place: bool = False, progress: bool = True) -> Path:
    """Train GrACE on the base model's own graded greedy answers and save an artifact; return its path.

    ``records`` must come from ``generate(..., hidden_states=True)`` on the
    training split, graded. Same as ``Grace.train``.
    """
    return Grace.train(lm, records, config, out_dir, resume=resume, in_place=in_place, progress=progress)
