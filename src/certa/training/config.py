"""Training hyper-parameters every trained method shares, TRL style: each default stated once, with its help.

A method's own settings live in its own subclass (``GraceConfig``,
``ConfTunerConfig``); YAML configs and the CLI are built from these classes,
so a default is never restated elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ALL_LINEAR = "all-linear"
"""A ``target_modules`` entry that puts LoRA on every linear layer except the output head (PEFT resolves it)."""


class TrainConfig(BaseModel):
    """Hyper-parameters shared by every trained method. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(
        12.0, gt=0, description="most passes over the training answers (early stopping usually ends sooner)")
    batch_size: int = Field(8, ge=1, description="answers per optimiser step (per process)")
    grad_accum: int = Field(1, ge=1, description="batches accumulated into one optimiser step")
    lr: float = Field(3e-4, gt=0, description="learning rate of the LoRA weights")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    lora_r: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"],
                                      description="module names that get LoRA; ['all-linear']: every linear layer "
                                      "but the output head, whatever the architecture names them (PEFT's "
                                      "shorthand); empty: no LoRA")
    mode: Literal["suffix", "full"] = Field(
        "suffix",
        description="suffix: adapter only on the confidence read-out (answers unchanged); "
        "full: adapter over the whole sequence plus LM loss (paper-faithful)",
    )
    lm_loss_weight: float = Field(1.0, ge=0, description="λ for the LM loss; used in full mode only")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps")
    save_every: int = Field(50, ge=1, description="checkpoint every N optimiser steps")
    max_length: int = Field(512, ge=16, description="longest training sequence in tokens (the start is cut)")
    seed: int = Field(0, description="seed of the shuffling, dropout and everything random in training")
    validation_seed: int | None = Field(
        None, description="seed of the held-out split (default: seed); restarts all hold out their first run's")
    restarts: int = Field(
        1, ge=1, description="train this many times (seeds seed, seed + 1000, ...) on one held-out split and keep the "
        "run with the lowest held-out Brier score, so a run stalled on a plateau is not the one kept; 1: train once")
    stall_retries: int = Field(
        0, ge=0, description="further runs (seeds continuing restarts') trained while the best run so far has a "
        "held-out Brier skill score below stall_skill; the best is kept as with restarts. Tells a run stalled on a "
        "plateau (every answer read at about one level) from one that learned; without held-out answers, none")
    stall_skill: float = Field(
        0.25, gt=0, le=1, description="held-out Brier skill score (1 - Brier / the Brier of the training accuracy "
        "as a constant) below which a run counts as stalled and stall_retries train another")
    prefix_cache_gb: float = Field(
        4.0, ge=0, description="memory (CPU) for reusing the base model's encoding of each training answer across "
        "epochs in suffix mode; answers beyond it are encoded at every step; 0 turns the reuse off")
    validation_fraction: float = Field(
        0.2, ge=0, lt=1, description="training answers held out to choose when to stop and to fit the final "
        "recalibration (stratified by correctness; 0, or fewer than 16 held out: train for all epochs)")
    eval_every: int | None = Field(
        None, ge=1, description="optimiser steps between held-out measurements (default: half an epoch)")
    patience: int = Field(4, ge=1, description="held-out measurements without improvement before stopping")
    recalibrate: Literal["auto", "none", "platt", "beta"] = Field(
        "auto", description="the map fitted on the held-out answers after training: auto (platt or beta when it "
        "lowers their out-of-fold Brier score by more than a standard error, else none; and their accuracy as a "
        "constant when the read-out does no better than that), none (the read-out as trained), platt "
        "(sigmoid(a·logit(c)+b), a ≥ 0) or beta (sigmoid(a·ln c − b·ln(1−c) + m), a, b ≥ 0)")

    @field_validator("target_modules")
    @classmethod
    def _all_linear_stands_alone(cls, modules: list[str]) -> list[str]:
        if ALL_LINEAR in modules and len(modules) > 1:
            raise ValueError(f"'{ALL_LINEAR}' already selects every linear layer; list it alone")
        return modules

    def token_learning_rate(self) -> float:
        """Learning rate of added token rows (methods that add tokens set their own)."""
        return self.lr

    def differences(self, saved: Mapping[str, Any], ignore: Collection[str] = ()) -> list[str]:
        """The settings (sorted) in which this config differs from ``saved``, a config stored as JSON.

        A setting ``saved`` lacks was added to certa after it was written, so it counts as that setting's
        default, which is how that training ran: checkpoints and finished runs from before a new setting
        stay resumable and reusable as long as the new setting is left at its default.
        """
        current = json.loads(self.model_dump_json())
        defaults = json.loads(type(self).model_construct().model_dump_json())
        return sorted(k for k in set(saved) | set(current)
                      if k not in ignore and saved.get(k, defaults.get(k)) != current.get(k))
