"""The registered sampling methods: thin classes over the pure functions of this package.

Each reads a record's answer set (the greedy answer followed by its K samples,
or the samples alone with ``include_greedy=False``, LM-Polygraph's choice),
builds one similarity matrix per set (shared and cached across methods, see
:func:`.similarity.similarity_matrices`) and maps its estimator to [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ...errors import CertaError, InputError
from ...records import Record
from ..base import ConfidenceMethod, Needs, register
from . import clusters, graph
from .consistency import answer_key
from .similarity import KINDS, Kind, similarity_matrices

if TYPE_CHECKING:
    from ...models import LoadedModel

DEFAULT_THRESHOLDS = {"minilm": 0.8, "rougeL": 0.5, "exact": 1.0}
"""The similarity at which two answers count as the same meaning, per kind (0.5 for a user's function)."""
TARGETS = ("set", "answer")
SAMPLES_COST = "K sampled answers (generate with samples=K)"


def answer_set(record: Record, include_greedy: bool = True) -> list[str]:
    """The texts a sampling method compares: the greedy response then the samples (or the samples alone)."""
    if not record.samples:
        raise CertaError(f"record {record.id!r} has no samples; generate with samples=K "
                         "(`certa generate --samples K`) to score sampling methods")
    texts = [record.response, *record.samples] if include_greedy else list(record.samples)
    if len(texts) < 2:
        raise CertaError(f"record {record.id!r}: comparing answers needs at least 2, got {len(texts)}; "
                         "generate with more samples or keep include_greedy=True")
    return texts


class SampleSetMethod(ConfidenceMethod):
    """Base of the methods that score the similarity matrix of a record's answer set.

    ``similarity``: ``"minilm"`` (default), ``"rougeL"``, ``"exact"`` or a
    function scoring ``(a, b)`` pairs in [0, 1] (e.g. NLI entailment
    probabilities). With ``extract=True`` (default) numeric and multiple-choice
    answers are compared by their extracted final answer, exactly, whatever the
    ``similarity`` (an embedding finds "42" and "43" close); ``extract=False``
    compares the raw texts, as LM-Polygraph does. ``threshold`` is the
    similarity at which two answers mean the same (clustering methods).
    """

    needs = Needs.SAMPLES
    clusters_answers: ClassVar[bool] = False  # whether ``threshold`` means anything to this method

    def __init__(self, model: LoadedModel | None = None, *, similarity: Kind = "minilm",
                 threshold: float | None = None, include_greedy: bool = True, extract: bool = True):
        super().__init__(model, similarity=similarity, threshold=threshold, include_greedy=include_greedy,
                         extract=extract)
        if not callable(similarity) and similarity not in KINDS:
            raise InputError(f"similarity must be one of {KINDS} or a function scoring (text, text) pairs; "
                             f"got {similarity!r}")
        if threshold is not None and not self.clusters_answers:
            raise InputError(f"method {self.name!r} weighs similarities, it does not cluster: it takes no threshold")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise InputError(f"threshold is a similarity in [0, 1], got {threshold}")
        self.similarity = similarity
        self.threshold = threshold if threshold is not None else \
            DEFAULT_THRESHOLDS.get(similarity if isinstance(similarity, str) else "", 0.5)
        self.include_greedy = include_greedy
        self.extract = extract

    def matrices(self, records: Sequence[Record]) -> list[np.ndarray]:
        """One similarity matrix per record, in order; records compared by extracted answers go together."""
        groups: dict[str, list[int]] = {}
        texts: list[list[str]] = []
        for i, record in enumerate(records):
            answers = answer_set(record, self.include_greedy)
            exact = self.similarity == "exact" or (self.extract and record.answer_type in ("numeric", "choice"))
            texts.append([answer_key(t, record) for t in answers] if exact else answers)
            groups.setdefault("exact" if exact else "kind", []).append(i)
        out: list[np.ndarray] = [np.empty(0)] * len(records)
        for group, rows in groups.items():
            kind = "exact" if group == "exact" else self.similarity
            for i, matrix in zip(rows, similarity_matrices([texts[i] for i in rows], kind), strict=True):
                out[i] = matrix
        return out

    def score(self, records: Sequence[Record]) -> np.ndarray:
        return np.array([self.confidence(matrix) for matrix in self.matrices(records)])

    def confidence(self, similarity: np.ndarray) -> float:
        """The confidence in [0, 1] read from one answer set's similarity matrix."""
        raise NotImplementedError


class TargetedSampleSetMethod(SampleSetMethod):
    """A graph score with Lin et al.'s two readings: of the whole set (U, default) or of the greedy answer (C)."""

    def __init__(self, model: LoadedModel | None = None, *, target: str = "set", similarity: Kind = "minilm",
                 threshold: float | None = None, include_greedy: bool = True, extract: bool = True):
        super().__init__(model, similarity=similarity, threshold=threshold, include_greedy=include_greedy,
                         extract=extract)
        if target not in TARGETS:
            raise InputError(f"target must be one of {TARGETS}, got {target!r}")
        if target == "answer" and not include_greedy:
            raise InputError("target='answer' scores the greedy answer: it needs include_greedy=True")
        self.options["target"] = target
        self.target = target


@register("lexical_similarity")
class LexicalSimilarity(SampleSetMethod):
    """Mean pairwise ROUGE-L F-measure of the answer set (1 = every answer word-for-word the same).

    Fomicheva et al. 2020; Kuhn et al. 2023 (arXiv:2302.09664) as a baseline;
    LM-Polygraph's ``LexicalSimilarity(rougeL)``. The confidence is the mean of
    ``rouge_l(a_i, a_j)`` over pairs i < j, already in [0, 1] (identity map). The
    LCS is computed here over lower-cased word tokens without stemming
    (LM-Polygraph uses rouge-score with a Porter stemmer).
    """

    cost = f"{SAMPLES_COST}; K(K+1)/2 word-level LCS computations"

    def __init__(self, model: LoadedModel | None = None, *, include_greedy: bool = True):
        super().__init__(model, similarity="rougeL", include_greedy=include_greedy, extract=False)

    def confidence(self, similarity: np.ndarray) -> float:
        upper = np.triu_indices(len(similarity), k=1)
        return float(np.mean(similarity[upper]))


@register("semantic_sets")
class SemanticSets(SampleSetMethod):
    """Number of semantic sets N among the m answers, as (m - N) / (m - 1) (1 = a single meaning).

    Lin, Trivedi & Sun 2023 (arXiv:2305.19187), LM-Polygraph's ``NumSemSets``:
    connected components of the graph linking answers that support each
    other at ``threshold`` (:func:`.clusters.number_of_semantic_sets`).
    N in [1, m] maps linearly to [1, 0].
    """

    cost = f"{SAMPLES_COST}; one similarity matrix per answer set (MiniLM: K + 1 embeddings)"
    clusters_answers = True

    def confidence(self, similarity: np.ndarray) -> float:
        m = len(similarity)
        return (m - clusters.number_of_semantic_sets(similarity, self.threshold)) / (m - 1)


@register("semantic_entropy")
class SemanticEntropy(SampleSetMethod):
    """Discrete semantic entropy of the answers' meaning clusters, as 1 - SE / log m.

    Farquhar et al. 2024 ("Detecting hallucinations in large language models
    using semantic entropy", Nature), discrete variant (cluster shares, not
    sequence probabilities); clusters by the greedy bidirectional rule
    (:func:`.clusters.semantic_clusters`) from MiniLM similarity or, with
    ``similarity=<entailment function>``, from an NLI model as in the paper.
    SE in [0, log m] maps linearly to [1, 0].
    """

    cost = f"{SAMPLES_COST}; one similarity matrix per answer set (MiniLM: K + 1 embeddings)"
    clusters_answers = True

    def confidence(self, similarity: np.ndarray) -> float:
        entropy = clusters.discrete_semantic_entropy(clusters.semantic_clusters(similarity, self.threshold))
        return 1.0 - entropy / clusters.max_entropy(len(similarity))


@register("eigv")
class EigV(SampleSetMethod):
    """Sum of eigenvalues of the answer graph: U = sum_k max(0, 1 - lambda_k(L_sym)), as (m - U) / (m - 1).

    Lin, Trivedi & Sun 2023 (arXiv:2305.19187), LM-Polygraph's ``EigValLaplacian``:
    a continuous number of semantic sets in [1, m]
    (:func:`.graph.eigenvalue_uncertainty`), mapped linearly to [1, 0].
    """

    cost = f"{SAMPLES_COST}; one similarity matrix and one (K+1)x(K+1) eigendecomposition per answer set"

    def confidence(self, similarity: np.ndarray) -> float:
        m = len(similarity)
        return (m - graph.eigenvalue_uncertainty(similarity)) / (m - 1)


@register("degree")
class Degree(TargetedSampleSetMethod):
    """Degree of the answer graph: mean similarity of the set (target="set") or of the greedy answer ("answer").

    Lin, Trivedi & Sun 2023 (arXiv:2305.19187), LM-Polygraph's ``DegMat``.
    ``target="set"``: 1 - U_Deg = mean(W) (:func:`.graph.degree_uncertainty`);
    ``target="answer"``: C_Deg = D_00 / m, the greedy answer's mean similarity
    to the set (:func:`.graph.degree_confidence`). Both already in [0, 1].
    """

    cost = f"{SAMPLES_COST}; one similarity matrix per answer set"

    def confidence(self, similarity: np.ndarray) -> float:
        if self.target == "answer":
            return graph.degree_confidence(similarity, 0)
        return 1.0 - graph.degree_uncertainty(similarity)


@register("eccentricity")
class Eccentricity(TargetedSampleSetMethod):
    """Eccentricity of the answers' spectral embeddings, as 1 - U_Ecc / sqrt(m - 1) (or the greedy answer's).

    Lin, Trivedi & Sun 2023 (arXiv:2305.19187), LM-Polygraph's ``Eccentricity``:
    answers embedded by the normalised-Laplacian eigenvectors with eigenvalue
    < 0.9, centred. ``target="set"``: U_Ecc = Frobenius norm of the embeddings,
    in [0, sqrt(m - 1)]; ``target="answer"``: the greedy answer's distance from
    the centre, in [0, sqrt(1 - 1/m)], mapped as 1 - d / sqrt(1 - 1/m).
    """

    cost = f"{SAMPLES_COST}; one similarity matrix and one (K+1)x(K+1) eigendecomposition per answer set"

    def confidence(self, similarity: np.ndarray) -> float:
        m = len(similarity)
        if self.target == "answer":
            return 1.0 - graph.eccentricity_distance(similarity, 0) / math.sqrt(1.0 - 1.0 / m)
        return 1.0 - graph.eccentricity_uncertainty(similarity) / graph.max_eccentricity(m)


@register("kernel_language_entropy")
class KernelLanguageEntropy(SampleSetMethod):
    """Kernel language entropy: von Neumann entropy of the answer graph's heat kernel, rescaled to [0, 1].

    Nikitin et al. 2024 ("Kernel language entropy", arXiv:2405.20003); compare
    LM-Polygraph's ``KernelLanguageEntropy``. certa's kernel is
    ``K = exp(-t (D - W))`` over the affinity ``W`` of :func:`.graph.affinity`
    (symmetrised similarities in [0, 1], unit diagonal), t = 0.3 by default,
    normalised to unit diagonal and trace (:func:`.graph.kernel_language_entropy`).
    The heat kernel is never rank one, so KLE never reaches 0: m identical
    answers (the all-ones graph ``J_m``) give KLE(J_m) > 0. The confidence is
    ``(log m - KLE) / (log m - KLE(J_m))`` clipped to [0, 1]
    (:func:`.graph.kernel_language_confidence`): 1 for identical answers, 0 for
    unrelated ones. LM-Polygraph builds its graph weights from NLI
    probabilities on a different scale and reports KLE / log m, so its scores
    are not certa's.
    """

    cost = f"{SAMPLES_COST}; one similarity matrix and two (K+1)x(K+1) eigendecompositions per answer set"

    def __init__(self, model: LoadedModel | None = None, *, t: float = graph.KLE_TIME, similarity: Kind = "minilm",
                 include_greedy: bool = True, extract: bool = True):
        super().__init__(model, similarity=similarity, include_greedy=include_greedy, extract=extract)
        if t <= 0:
            raise InputError(f"t (the heat-kernel time) must be positive, got {t}")
        self.options["t"] = t
        self.t = t

    def confidence(self, similarity: np.ndarray) -> float:
        return graph.kernel_language_confidence(similarity, self.t)
