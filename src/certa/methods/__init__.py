"""Confidence methods: every registered method is available through ``get_method``."""

from .base import ConfidenceMethod, Needs, get_method, method_class, method_names, register

__all__ = ["ConfidenceMethod", "Needs", "get_method", "method_class", "method_names", "register"]
