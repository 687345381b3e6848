"""ConfTuner (arXiv 2508.18847): verbalized confidence trained with the tokenized Brier score.

``config`` (ConfTunerConfig), ``objective`` (training), ``method`` (the
registered ``conftuner`` method), ``answers`` (another model's answers) and
``text`` (the confidence the model writes, parsed).
"""

from .answers import read_answers, score_answers
from .config import ConfTunerConfig
from .method import ConfTuner, level_diagnostics, level_probabilities, train_conftuner
from .objective import ConfTunerObjective
from .text import TextConfidences, generate_confidence_text

__all__ = ["ConfTuner", "ConfTunerConfig", "ConfTunerObjective", "TextConfidences", "generate_confidence_text",
           "level_diagnostics", "level_probabilities", "read_answers", "score_answers", "train_conftuner"]
