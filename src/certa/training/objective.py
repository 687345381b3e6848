"""What a trained confidence method gives the shared trainer.

GrACE and ConfTuner differ only in their objective: which tokens they add,
how a graded record becomes a training item, and the loss. The trainer
(``trainer.py``) owns everything else — LoRA, optimiser, accelerate,
checkpoints, resume and the saved artifact — so the two methods are two
objectives, not two trainers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from ..models import LoadedModel
    from ..records import Record
    from .config import TrainConfig


class Objective(Protocol):
    """A trainable confidence method, as the trainer sees it."""

    method: str

    def prepare(self, lm: LoadedModel, config: TrainConfig) -> None:
        """Add tokens / resize embeddings / initialise rows, before the adapter is attached."""

    def trainable_token_ids(self, lm: LoadedModel) -> list[int]:
        """Embedding rows that train alongside LoRA (e.g. GrACE's <CNF>); the others stay frozen."""

    def build_items(self, lm: LoadedModel, records: Sequence[Record], config: TrainConfig) -> list[dict[str, Any]]:
        """Turn graded records into training items (plain Python: token ids and targets)."""

    def collate(self, lm: LoadedModel, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad a list of items into a batch of tensors."""

    def loss(self, lm: LoadedModel, batch: dict[str, torch.Tensor], config: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of one batch (adapter enabled) and scalars to log."""

    def validation_items(self, lm: LoadedModel, records: Sequence[Record], config: TrainConfig) -> list[dict[str, Any]]:
        """Held-out records as items ``collate`` takes (nothing is placed or fitted; caches may be planned)."""

    def confidences(self, lm: LoadedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The read-out of a collated batch: one confidence in [0, 1] per item."""

    def artifact_info(self) -> dict[str, Any]:
        """Method-specific facts saved into the artifact's certa.json (token ids, template, ...)."""
