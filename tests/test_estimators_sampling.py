"""The sampling estimator family (issue 18): the similarity matrix, clusters and graph scores by hand."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from certa.errors import CertaError, InputError
from certa.methods import get_method, method_class, method_names
from certa.methods.sampling.clusters import (
    discrete_semantic_entropy,
    number_of_semantic_sets,
    semantic_clusters,
)
from certa.methods.sampling.graph import (
    complete_graph_kernel_language_entropy,
    degree_confidence,
    degree_uncertainty,
    eccentricity_distance,
    eccentricity_uncertainty,
    eigenvalue_uncertainty,
    kernel_language_confidence,
    kernel_language_entropy,
    normalized_laplacian,
)
from certa.methods.sampling.similarity import (
    clear_similarity_cache,
    lcs_length,
    rouge_l,
    similarity_matrices,
    similarity_matrix,
)
from certa.records import Record

NEW = ["lexical_similarity", "semantic_sets", "semantic_entropy", "eigv", "degree", "eccentricity",
       "kernel_language_entropy"]
GRAPH = ["semantic_sets", "semantic_entropy", "eigv", "degree", "eccentricity", "kernel_language_entropy"]

# Two answers that mean the same and one that does not: the graph is a 2-block and a 1-block.
BLOCKS = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def record(id: str, response: str, samples: list[str], **fields) -> Record:
    fields.setdefault("question", "What is the capital of France?")
    return Record(id=id, prompt="", response=response, samples=samples, **fields)


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_similarity_cache()
    yield
    clear_similarity_cache()


def test_the_family_is_registered_and_describes_itself():
    assert set(NEW) <= set(method_names())
    for name in NEW:
        cls = method_class(name)
        assert cls.describe() and cls.describe() != name
        assert cls.cost


# --- ROUGE-L and the similarity matrix -------------------------------------------------------


def test_lcs_and_rouge_l_by_hand():
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # the textbook example (e.g. BCBA)
    assert lcs_length("", "abc") == 0 and lcs_length("abc", "abc") == 3
    # the cat sat on the mat / the cat lay on a mat: LCS = the cat on mat (4 of 6 and 6): F = 2*4/12.
    assert rouge_l("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(2 / 3)
    assert rouge_l("the cat lay on a mat", "the cat sat on the mat") == pytest.approx(2 / 3)
    # P = 2/2, R = 2/4 -> F = 2 * 1 * 0.5 / 1.5 = 2/3 as well; case and punctuation do not count.
    assert rouge_l("Paris, France", "paris is in france") == pytest.approx(2 / 3)
    assert rouge_l("Paris.", "paris") == 1.0
    assert rouge_l("", "paris") == 0.0 and rouge_l("Lyon", "Paris") == 0.0


@pytest.mark.skipif(importlib.util.find_spec("rouge_score") is None, reason="rouge-score is not installed")
def test_rouge_l_agrees_with_the_rouge_score_package():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pairs = [("the cat sat on the mat", "the cat lay on a mat"), ("Paris is the capital", "the capital is Paris"),
             ("William Shakespeare wrote Hamlet in 1600", "Hamlet was written by Shakespeare"), ("42", "the answer is 42")]
    for a, b in pairs:
        assert rouge_l(a, b) == pytest.approx(scorer.score(a, b)["rougeL"].fmeasure)


def test_similarity_matrix_kinds():
    answers = ["the cat sat on the mat", "the cat lay on a mat", "the cat sat on the mat"]
    np.testing.assert_allclose(similarity_matrix(answers, "rougeL"),
                               [[1, 2 / 3, 1], [2 / 3, 1, 2 / 3], [1, 2 / 3, 1]])
    np.testing.assert_array_equal(similarity_matrix(answers, "exact"), [[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    with pytest.raises(InputError, match="similarity must be one of"):
        similarity_matrix(answers, "bleu")


def test_minilm_similarity_is_clipped_cosine(monkeypatch):
    vectors = {"Paris": [1.0, 0.0], "the city of Paris": [0.8, 0.6], "Berlin": [-0.6, 0.8]}
    monkeypatch.setattr("certa.methods.sampling.similarity.embed_texts",
                        lambda texts: np.array([vectors[t] for t in texts]))
    np.testing.assert_allclose(similarity_matrix(["Paris", "the city of Paris", "Berlin"], "minilm"),
                               [[1, 0.8, 0], [0.8, 1, 0], [0, 0, 1]], atol=1e-12)


def _entails(calls: list[int]):
    """A stand-in NLI model: a entails b when every word of b is in a (asymmetric); counts its calls."""
    def scorer(pairs):
        calls.append(len(pairs))
        return [0.9 if set(b.lower().split()) <= set(a.lower().split()) else 0.1 for a, b in pairs]
    return scorer


def test_a_pair_scorer_gives_an_asymmetric_matrix_scored_once_per_distinct_pair():
    calls: list[int] = []
    scorer = _entails(calls)
    answers = ["paris", "paris france", "paris", "berlin"]
    matrix = similarity_matrix(answers, scorer)
    # "paris france" entails "paris", not the other way round.
    assert matrix[1, 0] == 0.9 and matrix[0, 1] == 0.1 and matrix[0, 2] == 1.0 and matrix[3, 0] == 0.1
    assert calls == [6]  # 3 distinct texts: 3 * 2 ordered pairs, identical texts never scored
    similarity_matrix(answers, scorer)
    assert calls == [6]  # cached
    similarity_matrices([answers], scorer, cache=False)
    assert calls == [6, 6]
    with pytest.raises(InputError, match="in \\[0, 1\\]"):
        similarity_matrix(["a", "b"], lambda pairs: [2.0] * len(pairs))
    with pytest.raises(InputError, match="1 scores for 2 pairs"):
        similarity_matrix(["a", "b"], lambda pairs: [0.5])


# --- clusters ------------------------------------------------------------------------------


def test_semantic_sets_and_entropy_by_hand():
    s = np.array([[1, 0.9, 0.2], [0.9, 1, 0.1], [0.2, 0.1, 1]])
    assert number_of_semantic_sets(s, 0.8) == 2
    np.testing.assert_array_equal(semantic_clusters(s, 0.8), [0, 0, 1])
    # cluster shares 2/3, 1/3: SE = ln 3 - (2/3) ln 2 = 0.636514.
    assert discrete_semantic_entropy([0, 0, 1]) == pytest.approx(math.log(3) - 2 / 3 * math.log(2))
    assert discrete_semantic_entropy([0, 0, 1]) == pytest.approx(0.636514, abs=1e-6)
    assert discrete_semantic_entropy([0, 0, 0]) == 0.0
    assert discrete_semantic_entropy([0, 1, 2, 3]) == pytest.approx(math.log(4))
    assert number_of_semantic_sets(s, 0.95) == 3 and number_of_semantic_sets(s, 0.1) == 1


def test_components_chain_but_greedy_clusters_do_not():
    chain = np.array([[1, 0.9, 0.1], [0.9, 1, 0.9], [0.1, 0.9, 1]])  # a~b, b~c, a!~c
    assert number_of_semantic_sets(chain, 0.5) == 1
    np.testing.assert_array_equal(semantic_clusters(chain, 0.5), [0, 0, 1])


def test_equivalence_needs_both_directions():
    one_way = np.array([[1, 0.9], [0.3, 1]])
    assert number_of_semantic_sets(one_way, 0.5) == 2
    np.testing.assert_array_equal(semantic_clusters(one_way, 0.5), [0, 1])


# --- graph scores --------------------------------------------------------------------------


def test_eigv_on_graphs_with_known_eigenvalues():
    # Blocks: normalised Laplacian eigenvalues {0, 0, 1} -> U = 1 + 1 + 0 = 2 (= number of sets).
    np.testing.assert_allclose(np.linalg.eigvalsh(normalized_laplacian(BLOCKS)), [0, 0, 1], atol=1e-12)
    assert eigenvalue_uncertainty(BLOCKS) == pytest.approx(2.0)
    # Complete graph with weight w: eigenvalues 0 and 3w/(1+2w) (twice) -> U = 1 + 2(1-w)/(1+2w); w=0.5 -> 1.5.
    w = np.full((3, 3), 0.5) + 0.5 * np.eye(3)
    np.testing.assert_allclose(np.linalg.eigvalsh(normalized_laplacian(w)), [0, 0.75, 0.75], atol=1e-12)
    assert eigenvalue_uncertainty(w) == pytest.approx(1.5)
    assert eigenvalue_uncertainty(np.ones((3, 3))) == pytest.approx(1.0)
    assert eigenvalue_uncertainty(np.eye(3)) == pytest.approx(3.0)
    # Asymmetric input is symmetrised: (0.9 + 0.1) / 2 = 0.5 on both sides, U = 1 + (1-w)/(1+w) = 4/3.
    assert eigenvalue_uncertainty(np.array([[1, 0.9], [0.1, 1]])) == pytest.approx(4 / 3)


def test_degree_by_hand():
    # W sums to 5 of 9: U_Deg = trace(3I - D)/9 = (9 - 5)/9; the first answer's degree is 2 of 3.
    assert degree_uncertainty(BLOCKS) == pytest.approx(4 / 9)
    assert degree_confidence(BLOCKS, 0) == pytest.approx(2 / 3)
    assert degree_confidence(BLOCKS, 2) == pytest.approx(1 / 3)


def test_eccentricity_by_hand():
    # Kept eigenvectors (eigenvalue 0): (1,1,0)/sqrt2 and (0,0,1). Centred Frobenius^2 = k - |U^T 1|^2/m = 2 - 3/3.
    assert eccentricity_uncertainty(BLOCKS) == pytest.approx(1.0)
    # Row 0: (1/sqrt2 - sqrt2/3, -1/3) -> squared norm 1/18 + 1/9 = 1/6.
    assert eccentricity_distance(BLOCKS, 0) == pytest.approx(1 / math.sqrt(6))
    assert eccentricity_uncertainty(np.ones((4, 4))) == pytest.approx(0.0, abs=1e-12)
    assert eccentricity_uncertainty(np.eye(4)) == pytest.approx(math.sqrt(3))  # the maximum, sqrt(m - 1)


def test_kernel_language_entropy_by_hand():
    t = 0.3
    # L = D - W has blocks [[1,-1],[-1,1]] and [0]: exp(-tL) = 1/2 [[1+e, 1-e], [1-e, 1+e]] (+) [1], e = exp(-2t).
    # Normalised to unit diagonal and divided by 3, the eigenvalues are (1 + r)/3, (1 - r)/3, 1/3, r = (1-e)/(1+e).
    e = math.exp(-2 * t)
    r = (1 - e) / (1 + e)
    eig = np.array([(1 + r) / 3, (1 - r) / 3, 1 / 3])
    assert kernel_language_entropy(BLOCKS, t) == pytest.approx(float(-np.sum(eig * np.log(eig))))
    assert kernel_language_entropy(np.eye(3), t) == pytest.approx(math.log(3))  # K = I
    # Two answers with weight w: eigenvalues (1 +- r)/2 with r = (1 - exp(-2tw)) / (1 + exp(-2tw)).
    w = 0.4
    r2 = (1 - math.exp(-2 * t * w)) / (1 + math.exp(-2 * t * w))
    eig2 = np.array([(1 + r2) / 2, (1 - r2) / 2])
    assert kernel_language_entropy(np.array([[1, w], [w, 1]]), t) == pytest.approx(float(-np.sum(eig2 * np.log(eig2))))


def test_kernel_language_confidence_by_hand():
    t = 0.3
    h = lambda ps: -sum(p * math.log(p) for p in ps)  # noqa: E731
    # J_2: L has eigenvalues 0, 2, so rho has eigenvalues 1/(1+e), e/(1+e) with e = exp(-2t): (1 +- tanh t)/2.
    kle_j2 = h([(1 + math.tanh(t)) / 2, (1 - math.tanh(t)) / 2])
    assert kle_j2 == pytest.approx(0.650094166750)
    # J_3: L has eigenvalues 0, 3, 3; e = exp(-3t), Z = 1 + 2e; rho has eigenvalues 1/Z, e/Z, e/Z.
    e3 = math.exp(-3 * t)
    kle_j3 = h([1 / (1 + 2 * e3), e3 / (1 + 2 * e3), e3 / (1 + 2 * e3)])
    assert kle_j3 == pytest.approx(0.998683135338)
    assert complete_graph_kernel_language_entropy(2, t) == pytest.approx(kle_j2)
    assert complete_graph_kernel_language_entropy(3, t) == pytest.approx(kle_j3)
    for m in (2, 3, 6, 11):
        assert complete_graph_kernel_language_entropy(m, t) == pytest.approx(kernel_language_entropy(np.ones((m, m)), t))
        assert kernel_language_confidence(np.ones((m, m)), t) == pytest.approx(1.0)   # all answers identical
        assert kernel_language_confidence(np.eye(m), t) == pytest.approx(0.0, abs=1e-12)   # all unrelated
    # Two answers with weight 0.4: KLE = H((1 +- tanh(0.4 t))/2), over the range [KLE(J_2), log 2].
    kle_w = h([(1 + math.tanh(0.4 * t)) / 2, (1 - math.tanh(0.4 * t)) / 2])
    expected = (math.log(2) - kle_w) / (math.log(2) - kle_j2)
    assert expected == pytest.approx(0.166039241510)
    assert kernel_language_confidence(np.array([[1, 0.4], [0.4, 1]]), t) == pytest.approx(expected)
    # BLOCKS: eigenvalues (1 +- tanh t)/3 and 1/3, over [KLE(J_3), log 3].
    kle_blocks = h([(1 + math.tanh(t)) / 3, (1 - math.tanh(t)) / 3, 1 / 3])
    expected = (math.log(3) - kle_blocks) / (math.log(3) - kle_j3)
    assert expected == pytest.approx(0.287223580406)
    assert kernel_language_confidence(BLOCKS, t) == pytest.approx(expected)


@pytest.mark.parametrize("m", [2, 6])
def test_kernel_language_entropy_method_spans_zero_to_one(m):
    same = record("s", "Paris", ["Paris"] * (m - 1))
    different = record("d", "Paris", [f"city{i}" for i in range(m - 1)])
    scores = get_method("kernel_language_entropy", similarity="exact")([same, different])
    assert scores[0] == pytest.approx(1.0)   # was 0.062 (m = 2) and 0.209 (m = 6) as 1 - KLE / log m
    assert scores[1] == pytest.approx(0.0, abs=1e-12)


# --- the registered methods ----------------------------------------------------------------


def test_methods_map_the_hand_values_to_confidences():
    # "Paris", "Paris", "Lyon" compared exactly is the BLOCKS graph (m = 3).
    r = record("q", "Paris", ["Paris", "Lyon"])
    expected = {
        "semantic_sets": (3 - 2) / 2,
        "semantic_entropy": 1 - (math.log(3) - 2 / 3 * math.log(2)) / math.log(3),
        "eigv": (3 - 2) / 2,
        "degree": 5 / 9,
        "eccentricity": 1 - 1 / math.sqrt(2),
    }
    for name, value in expected.items():
        assert get_method(name, similarity="exact")([r])[0] == pytest.approx(value), name
    assert get_method("degree", similarity="exact", target="answer")([r])[0] == pytest.approx(2 / 3)
    # greedy row distance 1/sqrt6 over its maximum sqrt(2/3): 1 - 1/2.
    assert get_method("eccentricity", similarity="exact", target="answer")([r])[0] == pytest.approx(0.5)
    # KLE(BLOCKS) over the reachable range [KLE(J_3), log 3] (see test_kernel_language_confidence_by_hand).
    assert get_method("kernel_language_entropy", similarity="exact")([r])[0] == pytest.approx(0.287223580406)


def test_lexical_similarity_is_the_mean_pairwise_rouge_l():
    r = record("q", "the cat sat on the mat", ["the cat lay on a mat", "The cat sat on the mat."])
    # pairs: 2/3, 1, 2/3.
    assert get_method("lexical_similarity")([r])[0] == pytest.approx(7 / 9)
    assert get_method("lexical_similarity", include_greedy=False)([r])[0] == pytest.approx(2 / 3)


@pytest.mark.parametrize("name", ["lexical_similarity", *GRAPH])
def test_more_disagreement_gives_lower_confidence(name):
    options = {} if name == "lexical_similarity" else {"similarity": "rougeL"}
    method = get_method(name, **options)
    agree = record("a", "Paris is the capital", ["Paris is the capital", "Paris is the capital", "paris is the capital"])
    some = record("b", "Paris is the capital", ["Paris is the capital", "Lyon is the capital", "Paris"])
    none = record("c", "Paris", ["Lyon", "Nice", "Rome"])
    scores = method([agree, some, none])
    assert scores[0] > scores[1] > scores[2], scores
    assert scores[0] == pytest.approx(1.0)
    if name not in ("lexical_similarity", "degree"):  # degree keeps the self-similarity: 1/m
        assert scores[2] == pytest.approx(0.0, abs=1e-9)


def test_numeric_answers_are_compared_by_their_extracted_number():
    r = record("n", "The answer is 42.", ["42", "So it is 42"], answer_type="numeric")
    assert get_method("semantic_sets", similarity="rougeL")([r])[0] == 1.0
    assert get_method("semantic_sets", similarity="rougeL", extract=False)([r])[0] < 1.0


def test_an_nli_function_drives_the_clusters():
    calls: list[int] = []
    r = record("q", "paris france", ["paris", "france paris", "berlin"])
    # "paris france" <-> "france paris" entail each other; "paris" is entailed by them but does not entail them.
    scores = get_method("semantic_entropy", similarity=_entails(calls))([r])
    labels_shares = np.array([2, 1, 1]) / 4
    assert scores[0] == pytest.approx(1 + np.sum(labels_shares * np.log(labels_shares)) / math.log(4))
    get_method("semantic_sets", similarity=_entails(calls))([r])  # a new function object: scored again
    assert len(calls) == 2


def test_unhashable_scorers_are_never_served_another_scorers_matrix():
    import dataclasses
    import gc

    @dataclasses.dataclass  # eq=True without frozen: unhashable, like many user-written scorers
    class Constant:
        value: float

        def __call__(self, pairs):
            return [self.value] * len(pairs)

    stale = 0
    for i in range(20):
        scorer = Constant(i / 20)  # often allocated at the id of the one freed in the previous round
        stale += similarity_matrices([["a", "b"]], scorer)[0][0, 1] != pytest.approx(i / 20)
        del scorer
        gc.collect()
    assert stale == 0

    calls: list[int] = []

    def counting(pairs):  # a hashable function is still cached
        calls.append(len(pairs))
        return [0.5] * len(pairs)

    similarity_matrices([["a", "b"]], counting)
    similarity_matrices([["a", "b"]], counting)
    assert calls == [2]


def test_several_methods_share_one_similarity_matrix(monkeypatch):
    embedded: list[int] = []

    def fake_embed(texts):
        embedded.append(len(texts))
        return np.eye(8)[[len(t) for t in texts]]  # Paris, Lyon, Nice i: lengths 5, 4, 6

    monkeypatch.setattr("certa.methods.sampling.similarity.embed_texts", fake_embed)
    records = [record(f"q{i}", "Paris", ["Paris", "Lyon", f"Nice {i}"]) for i in range(3)]
    for name in GRAPH:
        get_method(name)(records)
    assert embedded == [5]  # one batch of the 5 distinct texts (Paris, Lyon, Nice 0-2), for all six methods


def test_sampling_methods_explain_what_is_missing():
    with pytest.raises(CertaError, match="'q7'.*samples=K"):
        get_method("eigv", similarity="exact")([record("q7", "Paris", [])])
    with pytest.raises(CertaError, match="'q8'.*at least 2"):
        get_method("eigv", similarity="exact", include_greedy=False)([record("q8", "Paris", ["Paris"])])
    with pytest.raises(InputError, match="include_greedy"):
        get_method("degree", target="answer", include_greedy=False)
    with pytest.raises(InputError, match="target"):
        get_method("eccentricity", target="greedy")
    with pytest.raises(InputError, match="similarity must be one of"):
        get_method("semantic_entropy", similarity="nli")
    with pytest.raises(InputError, match="threshold"):
        get_method("semantic_sets", threshold=1.5)
    with pytest.raises(InputError, match="no threshold"):
        get_method("eigv", threshold=0.5)


def test_graph_scores_stay_within_the_bounds_their_maps_divide_by():
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = int(rng.integers(2, 8))
        s = rng.random((m, m)) ** rng.uniform(0.2, 5)  # from near-identical to near-unrelated answers
        assert 1 - 1e-9 <= eigenvalue_uncertainty(s) <= m + 1e-9
        assert 0 <= degree_uncertainty(s) <= 1 - 1 / m + 1e-12
        assert 0 <= eccentricity_uncertainty(s) <= math.sqrt(m - 1) + 1e-9
        assert all(eccentricity_distance(s, j) <= math.sqrt(1 - 1 / m) + 1e-9 for j in range(m))
        assert 0 <= kernel_language_entropy(s) <= math.log(m) + 1e-9
        assert 0 <= kernel_language_confidence(s) <= 1
        assert 1 <= number_of_semantic_sets(s, 0.5) <= m
