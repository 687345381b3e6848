"""Spectral scores of the answer-similarity graph.

EigV, degree and eccentricity follow Lin, Trivedi & Sun 2023 ("Generating with
confidence: uncertainty quantification for black-box large language models",
arXiv:2305.19187); kernel language entropy follows Nikitin et al. 2024
("Kernel language entropy", arXiv:2405.20003). Every function takes the
similarity matrix ``S`` of :mod:`.similarity` and works on the symmetric
affinity ``W = (S + S^T) / 2`` clipped to [0, 1] with a unit diagonal.
"""

from __future__ import annotations

import math

import numpy as np

from .clusters import _square

ECCENTRICITY_THRESHOLD = 0.9
"""Eigenvectors of the normalised Laplacian with eigenvalue below this are kept (LM-Polygraph's choice)."""
KLE_TIME = 0.3
"""Heat-kernel time t of kernel language entropy (Nikitin et al.'s and LM-Polygraph's default)."""


def affinity(similarity: np.ndarray) -> np.ndarray:
    """The symmetric weighted adjacency ``W = clip((S + S^T) / 2, 0, 1)`` with ``W_ii = 1``."""
    matrix = _square(similarity)
    weights = np.clip((matrix + matrix.T) / 2.0, 0.0, 1.0)
    np.fill_diagonal(weights, 1.0)
    return weights


def normalized_laplacian(similarity: np.ndarray) -> np.ndarray:
    """``L = I - D^-1/2 W D^-1/2`` with ``D`` the degrees of :func:`affinity` (all ≥ 1, so always defined)."""
    weights = affinity(similarity)
    scale = 1.0 / np.sqrt(weights.sum(axis=1))
    return np.eye(len(weights)) - scale[:, None] * weights * scale[None, :]


def eigenvalue_uncertainty(similarity: np.ndarray) -> float:
    """U_EigV = sum_k max(0, 1 - lambda_k) over the eigenvalues of the normalised Laplacian.

    A continuous number of semantic sets: 1 when all answers are identical,
    m when all are unrelated (every eigenvalue 0); always in [1, m].
    """
    eigenvalues = np.linalg.eigvalsh(normalized_laplacian(similarity))
    return float(np.sum(np.clip(1.0 - eigenvalues, 0.0, None)))


def degree_uncertainty(similarity: np.ndarray) -> float:
    """U_Deg = trace(m I - D) / m^2 = 1 - mean(W): the average dissimilarity, in [0, 1 - 1/m]."""
    weights = affinity(similarity)
    m = len(weights)
    return float(np.trace(m * np.eye(m) - np.diag(weights.sum(axis=1))) / m**2)


def degree_confidence(similarity: np.ndarray, answer: int = 0) -> float:
    """C_Deg(answer) = D_jj / m: the answer's mean similarity to the set (itself included), in [1/m, 1]."""
    weights = affinity(similarity)
    return float(weights[answer].sum() / len(weights))


def spectral_embedding(similarity: np.ndarray, threshold: float = ECCENTRICITY_THRESHOLD) -> np.ndarray:
    """Rows: each answer's coordinates on the Laplacian eigenvectors with eigenvalue < ``threshold``, centred.

    Centring is over answers (each column minus its mean), so the result does
    not depend on which basis the solver picks inside a repeated eigenvalue's
    eigenspace as far as row and Frobenius norms go.
    """
    eigenvalues, vectors = np.linalg.eigh(normalized_laplacian(similarity))
    kept = vectors[:, eigenvalues < threshold]
    return kept - kept.mean(axis=0, keepdims=True)


def eccentricity_uncertainty(similarity: np.ndarray, threshold: float = ECCENTRICITY_THRESHOLD) -> float:
    """U_Ecc = ||[v'_1, ..., v'_m]||_F: the spread of the centred spectral embeddings, in [0, sqrt(m - 1)]."""
    return float(np.linalg.norm(spectral_embedding(similarity, threshold)))


def eccentricity_distance(similarity: np.ndarray, answer: int = 0,
                          threshold: float = ECCENTRICITY_THRESHOLD) -> float:
    """||v'_answer||: how far one answer's spectral embedding lies from the centre, in [0, sqrt(1 - 1/m)].

    Lin et al.'s C_Ecc is its negative.
    """
    return float(np.linalg.norm(spectral_embedding(similarity, threshold)[answer]))


def heat_kernel(similarity: np.ndarray, t: float = KLE_TIME) -> np.ndarray:
    """``exp(-t L)`` for the graph Laplacian ``L = D - W`` of :func:`affinity` (via its eigendecomposition)."""
    weights = affinity(similarity)
    laplacian = np.diag(weights.sum(axis=1)) - weights
    eigenvalues, vectors = np.linalg.eigh(laplacian)
    return (vectors * np.exp(-t * eigenvalues)) @ vectors.T


def von_neumann_entropy(kernel: np.ndarray) -> float:
    """``-tr(rho log rho)`` of the unit-trace density matrix ``rho_ij = K_ij / sqrt(K_ii K_jj) / m``.

    In [0, log m]: 0 for a rank-one kernel, log m for ``K = I``.
    """
    diagonal = np.sqrt(np.diag(kernel))
    rho = kernel / np.outer(diagonal, diagonal) / len(kernel)
    eigenvalues = np.clip(np.linalg.eigvalsh((rho + rho.T) / 2.0), 0.0, None)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(-np.sum(eigenvalues * np.log(eigenvalues)))


def kernel_language_entropy(similarity: np.ndarray, t: float = KLE_TIME) -> float:
    """KLE = von Neumann entropy of the normalised heat kernel of the answer graph, at most log m nats.

    ``log m`` is reached when all answers are unrelated (``K = I``). The heat
    kernel is never rank one, so KLE never reaches 0: its least value is that of
    the all-ones graph, :func:`complete_graph_kernel_language_entropy`.
    """
    return von_neumann_entropy(heat_kernel(similarity, t))


def complete_graph_kernel_language_entropy(m: int, t: float = KLE_TIME) -> float:
    """KLE of the all-ones graph ``J_m`` (m identical answers), in closed form.

    ``L = m I - J`` has eigenvalue 0 (on the all-ones vector) and m (m - 1
    times), so ``exp(-tL)`` has eigenvalues 1 and ``e = exp(-tm)`` and a
    constant diagonal; the density matrix has eigenvalues ``1/Z`` and ``e/Z``
    (m - 1 times), ``Z = 1 + (m - 1) e``, whose entropy is
    ``log Z + t m (m - 1) e / Z``. It is positive for every t > 0.
    """
    e = math.exp(-t * m)
    z = 1.0 + (m - 1) * e
    return math.log(z) + t * m * (m - 1) * e / z


def kernel_language_confidence(similarity: np.ndarray, t: float = KLE_TIME) -> float:
    """``(log m - KLE) / (log m - KLE(J_m))`` clipped to [0, 1]: KLE over the range it can reach.

    1 when all answers are identical (the all-ones graph), 0 when all are unrelated (``K = I``).
    """
    m = len(similarity)
    top = math.log(m)
    span = max(top - complete_graph_kernel_language_entropy(m, t), 1e-12)
    return float(np.clip((top - kernel_language_entropy(similarity, t)) / span, 0.0, 1.0))


def max_eccentricity(m: int) -> float:
    """sqrt(m - 1), the largest :func:`eccentricity_uncertainty` of m answers (reached when all are unrelated)."""
    return math.sqrt(m - 1)
