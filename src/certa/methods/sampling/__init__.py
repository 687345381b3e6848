"""Estimators that compare K sampled answers (with the greedy one): LM-Polygraph's black-box sampling family.

One shared statistic, the answer set's similarity matrix (:mod:`.similarity`),
and pure functions of it: :mod:`.clusters` (number of semantic sets, discrete
semantic entropy) and :mod:`.graph` (EigV, degree, eccentricity, kernel
language entropy). :mod:`.methods` registers the method classes.
"""

from . import methods  # noqa: F401  (registers the methods)
from .clusters import discrete_semantic_entropy, equivalent, number_of_semantic_sets, semantic_clusters
from .graph import (
    affinity,
    degree_confidence,
    degree_uncertainty,
    eccentricity_distance,
    eccentricity_uncertainty,
    eigenvalue_uncertainty,
    heat_kernel,
    kernel_language_entropy,
    normalized_laplacian,
    von_neumann_entropy,
)
from .similarity import clear_similarity_cache, lcs_length, rouge_l, similarity_matrices, similarity_matrix

__all__ = [
    "affinity",
    "clear_similarity_cache",
    "degree_confidence",
    "degree_uncertainty",
    "discrete_semantic_entropy",
    "eccentricity_distance",
    "eccentricity_uncertainty",
    "eigenvalue_uncertainty",
    "equivalent",
    "heat_kernel",
    "kernel_language_entropy",
    "lcs_length",
    "normalized_laplacian",
    "number_of_semantic_sets",
    "rouge_l",
    "semantic_clusters",
    "similarity_matrices",
    "similarity_matrix",
    "von_neumann_entropy",
]
