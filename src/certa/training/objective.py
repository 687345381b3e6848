"""What a trainable confidence method gives the shared trainer.

GrACE and ConfTuner differ only in their objective: which tokens they add,
how a graded record becomes a training item, and the loss. The trainer
(``trainer.py``) owns everything else — LoRA, optimiser, accelerate,
checkpoints, resume and the saved artifact — so the two methods are two
objectives, not two trainers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch

    from ..models import LoadedModel
    from ..records import Record


class TrainConfig(BaseModel):
    """Hyper-parameters shared by every objective. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-4, gt=0, description="learning rate of the LoRA weights")
    token_lr: float = Field(
        3e-4, gt=0,
        description="learning rate of added token rows (GrACE <CNF>); 3e-3 overshot and saturated c at 0 on SmolLM2",
    )
    weight_decay: float = Field(0.0, ge=0)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    mode: Literal["suffix", "full"] = Field(
        "suffix",
        description="suffix: adapter only on the confidence read-out (answers unchanged); "
        "full: adapter over the whole sequence plus LM loss (paper-faithful)",
    )
    lm_loss_weight: float = Field(1.0, ge=0, description="λ for the LM loss; used in full mode only")
    calibration_loss: Literal["mse", "bce"] = Field(
        "mse",
        description="GrACE's loss between c and its target: mse (the paper) or bce (cross-entropy with the "
        "soft target, whose gradient on the <CNF> logit is c - t and does not vanish as c nears 0 or 1)",
    )
    max_steps: int | None = Field(None, ge=1)
    save_every: int = Field(50, ge=1, description="checkpoint every N optimiser steps")
    max_length: int = Field(512, ge=16)
    seed: int = 0


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

    def artifact_info(self) -> dict[str, Any]:
        """Method-specific facts saved into the artifact's certa.json (token ids, template, ...)."""
