"""Confidence methods: one small class per method, registered by name, grouped in family folders."""

from .base import (
    ConfidenceMethod,
    MethodSpec,
    ModelReadoutMethod,
    Needs,
    check_scores,
    get_method,
    method_class,
    method_names,
    register,
)

__all__ = ["ConfidenceMethod", "MethodSpec", "ModelReadoutMethod", "Needs", "check_scores", "get_method",
           "method_class", "method_names", "register"]
