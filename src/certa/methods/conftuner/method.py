"""The registered ``conftuner`` method: expected verbalized confidence after tokenized-Brier tuning."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ...records import Record
from ..base import register
from ..prompting.verbalized import ConfidenceTokens, Style, VerbalHook, confidence_tokens, expected_confidence
from ..prompting.verbalized import level_probabilities as verbal_levels
from ..trained import TrainedMethod
from .config import ConfTunerConfig
from .objective import METHOD, ConfTunerObjective

if TYPE_CHECKING:
    from pathlib import Path

    from ...models import LoadedModel
    from ...training.config import TrainConfig

log = logging.getLogger(__name__)


def readout_settings(lm: LoadedModel) -> tuple[ConfidenceTokens, Style]:
    """The level tokens and the suffix style the artifact was trained with."""
    trained_with = (lm.artifact or {}).get("train_config") or {}
    return confidence_tokens(lm.tokenizer, trained_with.get("scale")), trained_with.get("prompt", ConfTunerConfig().prompt)


def level_probabilities(lm: LoadedModel, records: Sequence[Record], batch_size: int = 16,
                        progress: bool = False) -> tuple[np.ndarray, ConfidenceTokens]:
    """The restricted softmax over the confidence-level tokens for each record, [N, levels], adapter on."""
    info = (lm.artifact or {}).get("method_info", {})
    tokens, style = readout_settings(lm)
    probs = verbal_levels(lm, records, tokens, adapter_enabled=lm.runs_an_adapter,
                          adapter_for_answer=bool(info.get("answers_use_adapter")), style=style,
                          batch_size=batch_size, progress=progress)
    return probs, tokens


def level_diagnostics(probs: np.ndarray, tokens: ConfidenceTokens) -> dict[str, Any]:
    """Collapse check: the argmax level's confidence per answer and how many levels are used."""
    scores = np.asarray(tokens.scores, dtype=float)
    top = probs.argmax(axis=1)
    used, counts = np.unique(top, return_counts=True)
    return {
        "argmax_confidence": [float(scores[i]) for i in top],
        "distinct_levels": int(len(used)),
        "level_counts": {str(tokens.labels[i]): int(c) for i, c in zip(used, counts, strict=True)},
    }


@register(METHOD)
class ConfTuner(TrainedMethod):
    """ConfTuner: expected verbalized confidence Σ p_i s_i after tokenized-Brier tuning."""

    cost = "a suffix of a few tokens ('Confidence:') over the answer's KV cache, adapter on"
    paper: ClassVar[str] = "ConfTuner (arXiv 2508.18847)"
    config_class = ConfTunerConfig

    def __init__(self, model: LoadedModel | None = None, **options: Any):
        super().__init__(model, **options)
        self._diagnostics: dict[str, Any] = {}
        if self.model is not None and self.model.method != METHOD:
            log.warning("model %r is not a ConfTuner artifact (method %r): this is the untrained "
                        "verbalized read-out", self.model.name, self.model.method)

    @classmethod
    def make_objective(cls, config: TrainConfig) -> ConfTunerObjective:
        return ConfTunerObjective(cls.resolve_config(config))  # type: ignore[arg-type]

    def generation_hooks(self) -> list[Any]:
        """A ConfTuner artifact reads its confidence while answering: the cue suffix over the answer's cache."""
        if self.model is None or self.model.method != METHOD:
            return []
        tokens, style = readout_settings(self.model)
        return [VerbalHook(METHOD, tokens, style=style, adapter_enabled=self.model.runs_an_adapter,
                           calibrate=self.recalibrated)]

    def score(self, records: Sequence[Record]) -> np.ndarray:
        """Confidences this artifact read during generation are reused; the rest are read offline."""
        scores = self.stored_confidences(records)
        todo = np.flatnonzero(np.isnan(scores))
        self._diagnostics = {}  # the level diagnostics describe this call's offline read-outs only
        if len(todo):
            probs, tokens = level_probabilities(self.model, [records[i] for i in todo], self.batch_size,
                                                self.progress)
            self._diagnostics = level_diagnostics(probs, tokens)
            scores[todo] = self.recalibrated(expected_confidence(probs, tokens))
        return scores

    def diagnostics(self) -> dict[str, Any]:
        return self._diagnostics


def train_conftuner(lm: LoadedModel, records: Sequence[Record], config: ConfTunerConfig | dict | None = None,
                    out_dir: str | os.PathLike[str] = "conftuner-artifact", resume: bool = False, *,
                    in_place: bool = False, progress: bool = True) -> Path:
    """Train ConfTuner on graded records of the model's own answers; returns the artifact directory.

    Same as ``ConfTuner.train``: by default a copy of ``lm``'s weights is trained and
    ``lm`` stays the base model (``in_place=True`` saves that memory on large models).
    """
    return ConfTuner.train(lm, records, config, out_dir, resume=resume, in_place=in_place, progress=progress)
