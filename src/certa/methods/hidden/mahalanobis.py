"""Density of the answer's hidden state: Mahalanobis and relative Mahalanobis distance (Ren et al. 2023).

Ren et al. 2023 ("Out-of-distribution detection and selective generation for
conditional language models", ICLR) fit a Gaussian to training embeddings and
score a new one by its squared Mahalanobis distance; the relative distance
subtracts the distance to a background Gaussian fitted on broader data, which
removes what both share. Here the embedding is the last-layer hidden state
the generation records at the end of the answer (the same one the linear
probe reads); the Gaussians are fitted on graded training records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy.linalg import pinvh
from scipy.special import expit
from sklearn.covariance import ledoit_wolf_shrinkage

from ...errors import CertaError, InputError
from ...records import Record
from ..base import ConfidenceMethod, Needs, register
from ..fitting import not_fitted
from .probe import hidden_states

if TYPE_CHECKING:
    from ...models import LoadedModel

FIT_ON = ("all", "correct")
CORRECT_AT = 0.5
"""A training record counts as correct (joins the foreground Gaussian) when its grade is at least this."""


def fit_gaussian(states: np.ndarray, shrinkage: float | str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision (inverse covariance) of ``states[N, D]``, the covariance shrunk toward a scaled identity.

    ``Sigma_s = (1 - s) Sigma + s (tr(Sigma) / D) I`` with ``Sigma`` the
    maximum-likelihood covariance (divided by N). ``shrinkage="auto"`` picks s
    by Ledoit & Wolf (2004), which keeps the estimate invertible when there
    are fewer training states than dimensions; a float in [0, 1] fixes it
    (0 = the plain covariance, pseudo-inverted if singular).
    """
    x = np.asarray(states, dtype=float)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InputError(f"fit_gaussian needs at least 2 states of shape [N, D], got shape {x.shape}")
    if shrinkage == "auto":
        s = float(ledoit_wolf_shrinkage(x))
    elif isinstance(shrinkage, (int, float)) and 0.0 <= shrinkage <= 1.0:
        s = float(shrinkage)
    else:
        raise InputError(f"shrinkage must be 'auto' or a number in [0, 1], got {shrinkage!r}")
    mean = x.mean(axis=0)
    centred = x - mean
    covariance = centred.T @ centred / x.shape[0]
    scale = np.trace(covariance) / x.shape[1]
    if scale <= 0:
        raise CertaError("fit_gaussian: every training state is the same; there is no spread to measure distance by")
    shrunk = (1.0 - s) * covariance + s * scale * np.eye(x.shape[1])
    return mean, pinvh(shrunk)


def mahalanobis_sq(states: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance ``(x - mu)^T P (x - mu)`` of each row of ``states[N, D]``."""
    diff = np.atleast_2d(np.asarray(states, dtype=float)) - mean
    return np.einsum("nd,de,ne->n", diff, precision, diff)


def relative_mahalanobis_sq(states: np.ndarray, foreground: tuple[np.ndarray, np.ndarray],
                            background: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Ren et al.'s RMD ``MD_fg(x) - MD_bg(x)`` (squared distances): negative = closer to the foreground."""
    return mahalanobis_sq(states, *foreground) - mahalanobis_sq(states, *background)


def _training_states(method: ConfidenceMethod, records: Sequence[Record], which: str) -> np.ndarray:
    states = hidden_states(records)
    if which == "all":
        return states
    keep = np.array([r.correct >= CORRECT_AT for r in records])
    if keep.sum() < 2:
        raise CertaError(f"{method.name}: {int(keep.sum())} correct training record(s); fitting the Gaussian of "
                         "correct answers' hidden states needs at least 2")
    return states[keep]


def _check_size(method: ConfidenceMethod, states: np.ndarray, mean: np.ndarray) -> None:
    if states.shape[1] != mean.shape[0]:
        raise CertaError(f"{method.name}: records have hidden states of size {states.shape[1]}, the Gaussian was "
                         f"fitted on size {mean.shape[0]}; score records of the model it was fitted on")


@register("mahalanobis")
class Mahalanobis(ConfidenceMethod):
    """Squared Mahalanobis distance of the answer's hidden state to the training states, as 1 / (1 + d^2 / D).

    Lee et al. 2018; Ren et al. 2023 (ICLR, output-embedding variant);
    LM-Polygraph's ``MahalanobisDistanceSeq`` (which reports the unsquared
    distance: same ranking). One Gaussian, Ledoit-Wolf shrunk, fitted on the
    training records' last hidden states (``fit_on="all"``, default) or on
    the correct ones only (``fit_on="correct"``). The map 1 / (1 + d^2 / D),
    D the hidden size, is monotone and never saturates to ties; it gives 0.5 at
    d^2 = D, the expected distance of a typical state.
    """

    needs = Needs.HIDDEN_STATES | Needs.FIT
    fit_needs = Needs.HIDDEN_STATES
    cost = "free at scoring (one D x D quadratic form on the recorded hidden state); fit: one covariance"

    def __init__(self, model: LoadedModel | None = None, *, fit_on: str = "all", shrinkage: float | str = "auto"):
        super().__init__(model, fit_on=fit_on, shrinkage=shrinkage)
        if fit_on not in FIT_ON:
            raise InputError(f"fit_on must be one of {FIT_ON}, got {fit_on!r}")
        self.fit_on = fit_on
        self.shrinkage = shrinkage
        self.gaussian: tuple[np.ndarray, np.ndarray] | None = None

    def fit(self, records: Sequence[Record]) -> Mahalanobis:
        self.gaussian = fit_gaussian(_training_states(self, records, self.fit_on), self.shrinkage)
        self.fitted = True
        return self

    def score(self, records: Sequence[Record]) -> np.ndarray:
        if self.gaussian is None:
            raise not_fitted(self)
        states = hidden_states(records)
        _check_size(self, states, self.gaussian[0])
        return 1.0 / (1.0 + mahalanobis_sq(states, *self.gaussian) / states.shape[1])


@register("relative_mahalanobis")
class RelativeMahalanobis(ConfidenceMethod):
    """Relative Mahalanobis distance: correct answers' Gaussian vs all answers', as 1 / (1 + exp(RMD / D)).

    Ren et al. 2023 (ICLR): ``RMD(x) = MD_fg(x) - MD_bg(x)`` with squared
    distances (LM-Polygraph's ``RelativeMahalanobisDistanceSeq`` subtracts
    unsquared ones). Foreground: the hidden states of the correct training
    answers (grade ≥ 0.5); background: every training answer's. Both Gaussians
    Ledoit-Wolf shrunk. A state nearer the correct answers than answers in
    general has RMD < 0 and confidence above 0.5; the logistic map is scaled by
    the hidden size D.
    """

    needs = Needs.HIDDEN_STATES | Needs.FIT
    fit_needs = Needs.HIDDEN_STATES
    cost = "free at scoring (two D x D quadratic forms on the recorded hidden state); fit: two covariances"

    def __init__(self, model: LoadedModel | None = None, *, shrinkage: float | str = "auto"):
        super().__init__(model, shrinkage=shrinkage)
        self.shrinkage = shrinkage
        self.foreground: tuple[np.ndarray, np.ndarray] | None = None
        self.background: tuple[np.ndarray, np.ndarray] | None = None

    def fit(self, records: Sequence[Record]) -> RelativeMahalanobis:
        self.foreground = fit_gaussian(_training_states(self, records, "correct"), self.shrinkage)
        self.background = fit_gaussian(_training_states(self, records, "all"), self.shrinkage)
        self.fitted = True
        return self

    def score(self, records: Sequence[Record]) -> np.ndarray:
        if self.foreground is None or self.background is None:
            raise not_fitted(self)
        states = hidden_states(records)
        _check_size(self, states, self.foreground[0])
        return expit(-relative_mahalanobis_sq(states, self.foreground, self.background) / states.shape[1])
