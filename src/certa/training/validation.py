"""Choosing when to stop, on training answers held out from training, and the final recalibration.

A trained read-out is under-trained after a fixed couple of epochs and
over-fits after many (it has little data and no regulariser), and the right
number of steps depends on the data. So a seeded, stratified share of the
training answers is held out: the read-out's Brier score on it is measured
before the first step and every few steps after, the best state is kept (the
starting one when training never beats it), and training stops when it has not
improved for ``patience`` measurements. The same held-out answers then choose
the final map of the read-out (:mod:`certa.recalibration`): by default the one
of none, Platt and beta with the lowest out-of-fold Brier score. None often
wins: the losses already target accuracy, and a map fitted on a few hundred
answers can make a trained read-out worse (measured: docs/grace.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..records import Record
from .config import TrainConfig

if TYPE_CHECKING:
    from ..models import LoadedModel
    from .objective import Objective

#: Fewer held-out answers than this (or a held-out set with one class only) cannot choose anything.
MIN_VALIDATION = 16
_STATE_FILE = "early_stopping.json"
_BEST_FILE = "best_state.pt"


def split_validation(records: Sequence[Record], config: TrainConfig) -> tuple[list[Record], list[Record]]:
    """(train, held out): ``validation_fraction`` of the records, stratified by correctness, seeded by
    ``validation_seed`` (default: ``seed``).

    Returns no held-out records when there are too few to decide anything
    (fewer than ``MIN_VALIDATION``, or only one class among them); a class is never held out whole.
    """
    records = list(records)
    n_held = int(round(config.validation_fraction * len(records)))
    if n_held < MIN_VALIDATION:
        return records, []
    rng = np.random.default_rng(config.seed if config.validation_seed is None else config.validation_seed)
    correct = np.array([float(r.correct) >= 0.5 for r in records])
    held: list[int] = []
    for label in (True, False):
        members = np.flatnonzero(correct == label)
        share = int(round(n_held * len(members) / len(records)))
        # Never the whole class: the read-out must see right and wrong answers in training too.
        held += rng.choice(members, size=max(0, min(share, len(members) - 1)), replace=False).tolist()
    held_set = set(held)
    validation = [records[i] for i in sorted(held_set)]
    if len({float(r.correct) >= 0.5 for r in validation}) < 2:
        return records, []
    return [r for i, r in enumerate(records) if i not in held_set], validation


@torch.no_grad()
def validation_confidences(objective: Objective, lm: LoadedModel, items: Sequence[dict[str, Any]],
                           config: TrainConfig) -> np.ndarray:
    """The read-out on held-out items, in batches, in eval mode (the caller restores the mode)."""
    out = []
    for start in range(0, len(items), config.batch_size):
        batch = objective.collate(lm, items[start:start + config.batch_size])
        out.append(objective.confidences(lm, batch).float().cpu().numpy())
    return np.concatenate(out) if out else np.empty(0)


@dataclass
class EarlyStopping:
    """The best held-out Brier score so far, the step it came at, and the measurements since."""

    patience: int
    best: float = math.inf
    best_step: int = 0
    since_best: int = 0
    history: list[tuple[int, float]] | None = None

    def update(self, step: int, score: float, model: torch.nn.Module) -> bool:
        """Record a measurement; keep the model's trainable state when it is the best. True: stop now."""
        self.history = [*(self.history or []), (step, score)]
        if score < self.best - 1e-7:
            self.best, self.best_step, self.since_best = score, step, 0
            self._best_state = trainable_state(model)
            return False
        self.since_best += 1
        return self.stopped

    @property
    def stopped(self) -> bool:
        """Whether the measurements so far already said to stop (a checkpoint saved at the stopping step)."""
        return self.since_best >= self.patience

    def restore_best(self, model: torch.nn.Module) -> None:
        """Put the best state back into the model (no-op when nothing was measured)."""
        state = getattr(self, "_best_state", None)
        if state is not None:
            load_trainable_state(model, state)

    def save(self, directory: Path) -> None:
        """Write the counters and the best state next to a checkpoint."""
        info = asdict(self)
        (directory / _STATE_FILE).write_text(json.dumps(info), encoding="utf-8")
        state = getattr(self, "_best_state", None)
        if state is not None:
            torch.save(state, directory / _BEST_FILE)

    @classmethod
    def load(cls, directory: Path, patience: int) -> EarlyStopping:
        """The state a checkpoint saved (a fresh one when the checkpoint has none)."""
        file = directory / _STATE_FILE
        if not file.exists():
            return cls(patience)
        info = json.loads(file.read_text(encoding="utf-8"))
        stopping = cls(patience, info["best"], info["best_step"], info["since_best"],
                       [tuple(h) for h in info.get("history") or []])
        if (directory / _BEST_FILE).exists():
            stopping._best_state = torch.load(directory / _BEST_FILE, weights_only=True)
        return stopping


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the parameters that train (LoRA and token rows): what early stopping keeps."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
