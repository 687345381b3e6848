"""Estimators that read the answer's hidden state: density under Gaussians fitted on training states."""

from .mahalanobis import fit_gaussian, mahalanobis_sq, relative_mahalanobis_sq

__all__ = ["fit_gaussian", "mahalanobis_sq", "relative_mahalanobis_sq"]
