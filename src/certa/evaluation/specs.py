"""The metrics every method is evaluated on, each with its label, meaning and direction."""

from __future__ import annotations

from typing import NamedTuple

from ..errors import UnknownNameError


class MetricSpec(NamedTuple):
    """How a metric is shown and compared: ``higher_is_better`` decides sorting, arrows and "best"."""

    label: str
    description: str
    higher_is_better: bool

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


#: The metrics every method gets, in table column order.
METRICS: dict[str, MetricSpec] = {
    "ece": MetricSpec("ECE", "expected calibration error, equal-width bins", False),
    "ace": MetricSpec("ACE", "adaptive (equal-mass) expected calibration error", False),
    "mce": MetricSpec("MCE", "maximum calibration error, equal-width bins", False),
    "brier": MetricSpec("Brier", "Brier score", False),
    "nll": MetricSpec("NLL", "negative log-likelihood (nats)", False),
    "auroc": MetricSpec("AUROC", "AUROC, correct answers positive", True),
    "auprc": MetricSpec("AUPRC", "average precision, correct answers positive", True),
    "aurc": MetricSpec("AURC", "area under the risk-coverage curve", False),
}
#: The columns a compact table shows (a terminal, the Markdown write-up).
HEADLINE_METRICS = ("ece", "brier", "auroc", "aurc")
CI_LEVEL = 0.95


def metric_spec(name: str) -> MetricSpec:
    """The spec of a metric by name; a one-line error naming the known ones otherwise."""
    if name not in METRICS:
        raise UnknownNameError("metric", name, METRICS)
    return METRICS[name]
