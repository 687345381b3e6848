"""GrACE's training settings: the shared ones plus its own, each default stated once."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ...training.config import TrainConfig

Readout = Literal["step", "free"]


class GraceConfig(TrainConfig):
    """Hyper-parameters of GrACE training (GrACE, arXiv 2509.09438); unknown keys are errors."""

    token_lr: float = Field(
        3e-4, gt=0,
        description="learning rate of the <CNF> row; 3e-3 overshot and saturated c at 0 on SmolLM2",
    )
    calibration_loss: Literal["mse", "bce"] = Field(
        "mse",
        description="loss between c and its target: mse (the paper) or bce (cross-entropy with the soft "
        "target, whose gradient on the <CNF> logit is c - t and does not vanish as c nears 0 or 1)",
    )
    readout: Readout = Field(
        "step",
        description="step: one adapter-on decoding step after the answer reads P(<CNF>); free: the <CNF> row "
        "alone, read at the state generation already computed (no LoRA, zero extra passes)",
    )
    targets: Literal["soft", "binary"] = Field(
        "soft", description="soft: ActCab-style binned accuracy of an out-of-fold probe; binary: correctness")
    bins: int = Field(10, ge=1, description="equal-mass bins of the soft targets")
    folds: int = Field(5, ge=2, description="cross-fitting folds of the probe behind the soft targets")
    probe_c: float | Literal["cv"] = Field(
        1.0, description="inverse L2 strength of the probe behind the soft targets (scikit-learn's C); 'cv': "
        "the value in 1e-3..1 with the lowest cross-validated Brier score on the training answers")
    init_sample: int = Field(
        256, ge=1, description="training answers, drawn at random across all of them, that place the initial "
        "<CNF> row so c starts at the mean target")

    @field_validator("probe_c", mode="before")
    @classmethod
    def _positive_probe_c(cls, value: object) -> object:
        number = value
        if isinstance(value, str) and value != "cv":  # YAML reads 1e-2 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                number = None
        if value == "cv" or (isinstance(number, (int, float)) and not isinstance(number, bool)
                             and math.isfinite(number) and number > 0):
            return number
        raise ValueError(f"must be a positive number or 'cv', got {value!r}")

    def token_learning_rate(self) -> float:
        return self.token_lr

    @model_validator(mode="after")
    def _free_readout_trains_the_row_alone(self) -> GraceConfig:
        # The free read-out reads the state generation computed with the base model, so LoRA could
        # not affect it: only the <CNF> row trains, and answers come from the base model.
        if self.readout == "free":
            if self.mode == "full":
                raise ValueError("readout 'free' trains the <CNF> row alone; it cannot be combined with mode 'full'")
            object.__setattr__(self, "target_modules", [])
        return self
