"""What a confidence is for: selective answering with a guarantee, and keeping it calibrated online.

This package only re-exports; see :mod:`certa.uses.selective` and :mod:`certa.uses.recalibration`.
"""

from .recalibration import KINDS, CalibrationMap, OnlineRecalibrator, RecalibrationReport, fit_map
from .selective import (
    BOUNDS,
    CoverageAtTarget,
    SelectiveOutcome,
    SelectiveThreshold,
    apply_threshold,
    certify_threshold,
    coverage_at_target_error,
    coverage_table,
    lowest_certifiable_error,
    min_certifiable_count,
    select_threshold,
)

__all__ = [
    "BOUNDS",
    "KINDS",
    "CalibrationMap",
    "CoverageAtTarget",
    "OnlineRecalibrator",
    "RecalibrationReport",
    "SelectiveOutcome",
    "SelectiveThreshold",
    "apply_threshold",
    "certify_threshold",
    "coverage_at_target_error",
    "coverage_table",
    "fit_map",
    "lowest_certifiable_error",
    "min_certifiable_count",
    "select_threshold",
]
