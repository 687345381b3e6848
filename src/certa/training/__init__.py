"""Training trained confidence methods (GrACE, ConfTuner) with one shared loop.

``config.py`` holds the shared hyper-parameters, ``objective.py`` the interface
a method implements, ``losses.py`` and ``targets.py`` pure building blocks and
``trainer.py`` the loop (PEFT + accelerate, checkpoints, resume, the saved
artifact). Heavy optional packages (accelerate, scikit-learn) are imported only
when training, so loading an artifact needs torch, transformers and peft alone.
"""

from .config import TrainConfig
from .losses import grace_calibration_loss, response_lm_loss, tokenized_brier
from .objective import Objective
from .targets import soft_targets
from .trainer import train

__all__ = ["Objective", "TrainConfig", "grace_calibration_loss", "response_lm_loss", "soft_targets",
           "tokenized_brier", "train"]
