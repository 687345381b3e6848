"""Studies: a whole comparison from one config — answers, training, scoring, evaluation, write-up — every stage cached."""

from .config import RunConfig
from .result import StudyResult
from .run import run_study, tune_study

__all__ = ["RunConfig", "StudyResult", "run_study", "tune_study"]
