"""Training trainable confidence methods (GrACE, ConfTuner) with one shared loop.

``objective.py`` is the interface a method implements, ``losses.py`` and
``targets.py`` are pure building blocks, ``trainer.py`` runs the loop
(PEFT + accelerate, checkpoints, resume) and ``artifact.py`` saves and loads
the trained directory. Heavy optional packages (accelerate, scikit-learn) are
imported only when training, so loading an artifact needs torch, transformers
and peft alone.
"""

from .artifact import is_artifact, load_artifact, read_artifact_info, save_artifact
from .losses import grace_calibration_loss, response_lm_loss, tokenized_brier
from .objective import Objective, TrainConfig
from .targets import soft_targets
from .trainer import train

__all__ = [
    "Objective",
    "TrainConfig",
    "grace_calibration_loss",
    "is_artifact",
    "load_artifact",
    "read_artifact_info",
    "response_lm_loss",
    "save_artifact",
    "soft_targets",
    "tokenized_brier",
    "train",
]
