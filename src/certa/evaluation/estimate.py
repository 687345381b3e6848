"""A point estimate with its bootstrap interval, and how it is written (JSON, text)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval (NaN where undefined or not computed)."""

    value: float
    low: float = math.nan
    high: float = math.nan

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def interval_excludes_value(self) -> bool:
        """Whether the interval lies wholly above (or below) the point estimate: the percentile bootstrap of a
        metric biased on small samples, such as binned ECE, which reads higher on resamples."""
        return self.has_interval and math.isfinite(self.value) and not self.low <= self.value <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {"value": json_float(self.value), "ci": [json_float(self.low), json_float(self.high)]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Estimate:
        """Inverse of :meth:`to_dict` (``None`` back to NaN)."""
        low, high = data.get("ci") or (None, None)
        return cls(*(math.nan if v is None else float(v) for v in (data["value"], low, high)))

    def format(self, digits: int = 3, undefined: str = "n/a") -> str:
        """``0.123 [0.101, 0.150]``; ``undefined`` for an undefined value."""
        if not math.isfinite(self.value):
            return undefined
        text = f"{self.value:.{digits}f}"
        if self.has_interval:
            text += f" [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        return text


def json_float(x: float) -> float | None:
    """A float for strict JSON: NaN (an undefined metric) becomes ``None``."""
    return float(x) if math.isfinite(x) else None
