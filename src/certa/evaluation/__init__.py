"""Evaluation: metric specs, ``evaluate`` and its result, one table renderer, figures and the HTML report."""

from .estimate import Estimate
from .result import EvaluationResult, evaluate
from .specs import CI_LEVEL, HEADLINE_METRICS, METRICS, MetricSpec, metric_spec
from .table import MetricTable, markdown_table, metric_table, to_html, to_markdown, to_rich

__all__ = ["CI_LEVEL", "HEADLINE_METRICS", "METRICS", "Estimate", "EvaluationResult", "MetricSpec", "MetricTable",
           "evaluate", "markdown_table", "metric_spec", "metric_table", "to_html", "to_markdown", "to_rich"]
