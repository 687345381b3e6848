"""certa beside LM-Polygraph: the same estimators on the same model, questions and prompts, side by side.

Not part of CI: run it in a separate virtual environment that has both toolkits
(``docs/peer-lm-polygraph.md`` says how to build it, offline)::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 CERTA_NUM_THREADS=1 \\
        /work/venvs/polygraph/bin/python benchmarks/peer_lm_polygraph.py [--model DIR] [--json out.json]

Both toolkits run the bundled SmolLM2-135M-Instruct with one torch thread, on
the same ``capitals`` test questions, with certa's chat prompt
(``lm.chat_prompt(question_prompt(example))``) handed to LM-Polygraph verbatim,
greedy answers and K sampled answers at temperature 1 (no top-k / top-p).
LM-Polygraph's stat calculators are called directly, batch by batch, as its
``UEManager`` does, each timed on its own.

For each (certa method, LM-Polygraph estimator) pair of :data:`PAIRS` it
prints the Spearman correlation of certa's confidence with the negated
LM-Polygraph value (LM-Polygraph returns uncertainties: higher = less
confident), the AUROC of each against certa's grader (LM-Polygraph's AUROC is
that of its negated value, i.e. its own sign convention), and, per family, the
wall/CPU-time ratio certa / LM-Polygraph for computing the pairs whose certa
method is registered. A certa method that is not registered yet is reported
as such and its LM-Polygraph values are still shown (reference AUROC).

LM-Polygraph's NLI (microsoft/deberta-large-mnli) and cross-encoder
(cross-encoder/stsb-roberta-large) models come from the Hugging Face Hub and
cannot be loaded offline; in their place this script feeds LM-Polygraph's
estimators matrices built from the bundled all-MiniLM-L6-v2 embeddings (the
model certa uses), see :func:`minilm_semantic_stats` and
:func:`minilm_token_similarity`. Sampling estimators are also run on certa's
own samples, which separates definition differences from sampling noise.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from lm_polygraph import estimators as pg  # noqa: E402
from lm_polygraph.stat_calculators import (  # noqa: E402
    EntropyCalculator,
    GreedyLMProbsCalculator,
    GreedyProbsCalculator,
    SamplingGenerationCalculator,
    SemanticClassesCalculator,
)
from lm_polygraph.utils.generation_parameters import GenerationParameters  # noqa: E402
from lm_polygraph.utils.model import WhiteboxModel  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

import certa  # noqa: E402
from certa.data import grade  # noqa: E402
from certa.errors import CertaError  # noqa: E402
from certa.methods import method_class  # noqa: E402
from certa.methods.embeddings import embed_texts  # noqa: E402
from certa.prompts import question_prompt  # noqa: E402
from certa.records import Generation, Record  # noqa: E402

FAMILIES = ("logprob", "sampling", "hidden")
SIMILARITY_THRESHOLD = 0.8
"""MiniLM cosine at which two answers count as the same meaning (certa's default)."""
ENTAIL, CONTRA = 2, 0
"""Label ids of the substitute NLI matrices (microsoft/deberta-large-mnli's order: contradiction, neutral, entailment)."""


@dataclass(frozen=True)
class Pair:
    """One shared estimator: a certa method (with options) and the LM-Polygraph estimator it should match.

    ``matrix`` says which MiniLM substitute for LM-Polygraph's NLI matrices the estimator reads:
    ``"soft"`` (entail = cosine, contra = 1 - cosine) or ``"hard"`` (entail = 1[cosine >= threshold]).
    """

    family: str
    certa: str
    polygraph: Callable[[], Any]
    options: dict[str, Any] = field(default_factory=dict)
    matrix: str = "soft"


# One line per shared estimator. Sampling methods compare the K samples alone, as LM-Polygraph does.
_SAMPLES_ONLY = {"include_greedy": False}
PAIRS: list[Pair] = [
    Pair("logprob", "sequence_likelihood", pg.Perplexity),
    Pair("logprob", "token_entropy", pg.MeanTokenEntropy),
    Pair("logprob", "max_sequence_probability", pg.MaximumSequenceProbability),
    Pair("logprob", "pmi", pg.MeanPointwiseMutualInformation),
    Pair("logprob", "renyi_divergence", pg.RenyiNeg),
    Pair("logprob", "fisher_rao", pg.FisherRao),
    Pair("logprob", "token_sar", pg.TokenSAR),
    Pair("sampling", "lexical_similarity", lambda: pg.LexicalSimilarity("rougeL"), _SAMPLES_ONLY),
    Pair("sampling", "semantic_sets", pg.NumSemSets, _SAMPLES_ONLY, matrix="hard"),
    Pair("sampling", "semantic_entropy", lambda: pg.SemanticEntropy(class_probability_estimation="frequency"),
         _SAMPLES_ONLY),
    Pair("sampling", "eigv", pg.EigValLaplacian, _SAMPLES_ONLY),
    Pair("sampling", "degree", pg.DegMat, _SAMPLES_ONLY),
    Pair("sampling", "eccentricity", pg.Eccentricity, _SAMPLES_ONLY),
    Pair("sampling", "kernel_language_entropy", pg.KernelLanguageEntropy, _SAMPLES_ONLY),
    Pair("hidden", "mahalanobis", pg.MahalanobisDistanceSeq),
    Pair("hidden", "relative_mahalanobis", pg.RelativeMahalanobisDistanceSeq),
]
CERTA_GENERATE_OPTIONS: dict[str, dict[str, Any]] = {"logprob": {"token_stats": True}}
"""Extra ``certa.generate`` options per family, passed only when ``generate`` accepts them (per-token
statistics some log-prob methods read, e.g. Rényi / Fisher–Rao distances, are stored on request)."""
FALLBACK_SAMPLING = ("consistency", lambda: pg.LexicalSimilarity("rougeL"))
"""Timed for the sampling family when no shared sampling method is registered in certa yet: certa's own
sampling method against LM-Polygraph's cheapest one (the comparison is then about generating samples)."""


# --- LM-Polygraph side ------------------------------------------------------------------------


class Clock:
    """Wall and CPU seconds per named component, summed over batches."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, its seconds added to ``name``."""
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        self.wall[name] += time.perf_counter() - wall
        self.cpu[name] += time.process_time() - cpu
        return out

    def total(self, names: Sequence[str]) -> tuple[float, float]:
        return sum(self.wall[n] for n in names), sum(self.cpu[n] for n in names)


def minilm_token_similarity(prompts: Sequence[str], greedy_tokens: Sequence[Sequence[int]],
                            tokenizer: Any) -> list[np.ndarray]:
    """LM-Polygraph's ``token_similarity`` with MiniLM cosine in place of its cross-encoder.

    As ``CrossEncoderSimilarityMatrixCalculator``: token t's similarity compares
    ``prompt + " " + answer`` with ``prompt + " " + answer without token t``;
    special tokens get 1 (no relevance), a one-token answer 0.5.
    """
    special = set(tokenizer.added_tokens_decoder)
    out = []
    for prompt, tokens in zip(prompts, greedy_tokens, strict=True):
        if len(tokens) <= 1:
            out.append(np.full(len(tokens), 0.5))
            continue
        full = prompt + " " + tokenizer.decode(tokens, skip_special_tokens=True)
        cut = [prompt + " " + tokenizer.decode(tokens[:t] + tokens[t + 1:], skip_special_tokens=True)
               for t in range(len(tokens))]
        vectors = embed_texts([full, *cut])
        sims = vectors[1:] @ vectors[0]
        sims[np.isin(tokens, list(special))] = 1.0
        out.append(sims.astype(float))
    return out


def minilm_semantic_stats(sample_texts: Sequence[Sequence[str]], threshold: float = SIMILARITY_THRESHOLD
                          ) -> dict[str, dict[str, Any]]:
    """LM-Polygraph's NLI statistics built from MiniLM cosine similarity S (clipped to [0, 1]), two ways.

    ``soft``: entail = S, contra = 1 - S (graph estimators, kernel language entropy);
    ``hard``: entail = 1[S >= threshold], contra = 1 - entail (number of semantic sets,
    whose rule ``entail > contra`` then links answers at the threshold). Both carry
    ``semantic_matrix_classes`` = entailment where S >= threshold (semantic classes).
    """
    sims = []
    for texts in sample_texts:
        vectors = embed_texts(list(texts))
        sims.append(np.clip(vectors @ vectors.T, 0.0, 1.0))
    sim = np.stack(sims)
    same = sim >= threshold
    classes = np.where(same, ENTAIL, CONTRA)
    hard = same.astype(float)
    return {
        "soft": {"semantic_matrix_entail": sim, "semantic_matrix_contra": 1.0 - sim,
                 "semantic_matrix_classes": classes, "entailment_id": ENTAIL},
        "hard": {"semantic_matrix_entail": hard, "semantic_matrix_contra": 1.0 - hard,
                 "semantic_matrix_classes": classes, "entailment_id": ENTAIL},
    }


@dataclass
class PolygraphRun:
    values: dict[str, np.ndarray]          # estimator key -> one value per question
    greedy_tokens: list[list[int]]
    greedy_texts: list[str]
    embeddings: np.ndarray | None
    clock: Clock


def polygraph_model(lm: Any) -> WhiteboxModel:
    """LM-Polygraph's wrapper around certa's already loaded model and tokenizer (same weights in memory).

    Prompts arrive fully rendered by certa's chat template; ``instruct=False`` makes LM-Polygraph tokenize
    them as they are (SmolLM2's tokenizer adds no BOS, so the ids equal certa's). Sampling from the full
    distribution at temperature 1, as certa does.
    """
    params = GenerationParameters(temperature=1.0, top_k=0, top_p=1.0)
    return WhiteboxModel(lm.model, lm.tokenizer, model_path=lm.name, model_type="CausalLM",
                         generation_parameters=params)


def run_polygraph(model: WhiteboxModel, prompts: list[str], pairs: list[Pair], *, batch_size: int,
                  max_new_tokens: int, samples: int, hidden: bool, lean: bool = True) -> PolygraphRun:
    """LM-Polygraph's calculators and estimators over ``prompts`` in batches, each component timed.

    ``lean``: the greedy calculator keeps neither attentions nor hidden states (unless ``hidden``);
    otherwise it runs with the defaults of ``register_default_stat_calculators`` (both on).
    """
    clock = Clock()
    estimators = {key: pair.polygraph() for key, pair in _keyed(pairs)}
    needs = {dep for e in estimators.values() for dep in e.stats_dependencies}
    sampling = any(p.family == "sampling" for p in pairs)
    greedy_calc = GreedyProbsCalculator(output_attentions=not lean, output_hidden_states=hidden or not lean)
    values: dict[str, list[float]] = defaultdict(list)
    tokens: list[list[int]] = []
    texts: list[str] = []
    embeddings = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        stats: dict[str, Any] = {"input_texts": batch}
        call = (stats, batch, model, max_new_tokens)
        stats.update(clock.run("greedy", greedy_calc, *call))
        if "entropy" in needs:
            stats.update(clock.run("entropy", EntropyCalculator(), *call))
        if "greedy_lm_log_likelihoods" in needs:
            stats.update(clock.run("lm_probs", GreedyLMProbsCalculator(), *call))
        if "token_similarity" in needs:
            stats["token_similarity"] = clock.run("token_similarity", minilm_token_similarity,
                                                  batch, stats["greedy_tokens"], model.tokenizer)
        matrices: dict[str, dict[str, Any]] = {}
        if sampling:
            stats.update(clock.run("samples", SamplingGenerationCalculator(samples_n=samples), *call))
            matrices = clock.run("semantic_matrix", minilm_semantic_stats, stats["sample_texts"])
            for matrix in matrices.values():
                matrix.update(clock.run("semantic_classes", SemanticClassesCalculator(),
                                        {**stats, **matrix}, batch, model, max_new_tokens))
        for key, pair in _keyed(pairs):
            if pair.family == "hidden":
                continue
            batch_stats = {**stats, **matrices.get(pair.matrix, {})}
            values[key].extend(np.asarray(clock.run(key, estimators[key], batch_stats), dtype=float))
        tokens += stats["greedy_tokens"]
        texts += stats["greedy_texts"]
        if hidden:
            embeddings.append(stats["embeddings_decoder"])
    return PolygraphRun({k: np.array(v) for k, v in values.items()}, tokens, texts,
                        np.concatenate(embeddings) if embeddings else None, clock)


def polygraph_on_certa_samples(records: Sequence[Record], pairs: list[Pair]) -> dict[str, np.ndarray]:
    """LM-Polygraph's sampling estimators applied to certa's samples (and MiniLM matrices): a definition check."""
    sample_texts = [list(r.samples) for r in records]
    matrices = minilm_semantic_stats(sample_texts)
    for kind in matrices:
        matrices[kind].update(SemanticClassesCalculator()({"sample_texts": sample_texts, **matrices[kind]},
                                                          [], None))
    out = {}
    for key, pair in _keyed(pairs):
        if pair.family == "sampling":
            stats = {"sample_texts": sample_texts, **matrices[pair.matrix]}
            out[key] = np.asarray(pair.polygraph()(stats), dtype=float)
    return out


def polygraph_density(pairs: list[Pair], test: np.ndarray, train: np.ndarray, background: np.ndarray
                      ) -> dict[str, np.ndarray]:
    """LM-Polygraph's Mahalanobis estimators fitted on train (and background) embeddings, scored on test."""
    stats = {"embeddings_decoder": test, "train_embeddings_decoder": train,
             "background_train_embeddings_decoder": background}
    return {key: np.asarray(pair.polygraph()(stats), dtype=float) for key, pair in _keyed(pairs)
            if pair.family == "hidden"}


def _keyed(pairs: Sequence[Pair]) -> list[tuple[str, Pair]]:
    return [(f"{p.family}:{p.certa}", p) for p in pairs]


# --- certa side -------------------------------------------------------------------------------


def certa_method(pair_name: str, options: dict[str, Any], lm: Any) -> tuple[Any, str]:
    """The registered certa method built with ``options`` (those it accepts), or None and why not."""
    if pair_name not in certa.method_names():
        return None, "not registered in certa yet"
    cls = method_class(pair_name)
    accepted = inspect.signature(cls).parameters
    kept = {k: v for k, v in options.items() if k in accepted}
    note = "" if kept == options else f"options {sorted(set(options) - set(kept))} not accepted"
    return certa.get_method(pair_name, model=lm, **kept), note


def generate_options(family: str) -> dict[str, Any]:
    """The family's extra generate options that this certa's ``generate`` accepts."""
    accepted = inspect.signature(certa.generate).parameters
    return {k: v for k, v in CERTA_GENERATE_OPTIONS.get(family, {}).items() if k in accepted}


def certa_scores(methods: dict[str, Any], records: Sequence[Record], clock: Clock, notes: dict[str, str],
                 fit_on: Sequence[Record] | None = None) -> dict[str, np.ndarray]:
    """Each method's confidences; a method that cannot score these records gets its error as the note."""
    out = {}
    for key, method in methods.items():
        try:
            if fit_on is not None and method.requires_fit:
                clock.run(key, method.fit, fit_on)
            out[key] = clock.run(key, method, records)
        except CertaError as exc:
            notes[key] = f"certa could not score: {exc}"
    return out


# --- comparison -------------------------------------------------------------------------------


def auroc(score: np.ndarray, correct: np.ndarray) -> float:
    """AUROC of ``score`` (any real scale, higher = more likely correct) against correct >= 0.5; NaN if one class."""
    labels = np.asarray(correct) >= 0.5
    return float(roc_auc_score(labels, score)) if 0 < labels.sum() < len(labels) else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def fmt(x: float, digits: int = 3) -> str:
    return "  n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def time_logprob_round(lm: Any, model: WhiteboxModel, examples: list[Any], prompts: list[str],
                       methods: dict[str, Any], pairs: list[Pair], args: argparse.Namespace) -> dict[str, Any]:
    """One timing round of the log-prob family: plain ``generate``, certa, LM-Polygraph lean and with defaults.

    Each side computes the same estimators (the pairs whose certa method is registered); returns
    (wall, cpu) seconds per side and the LM-Polygraph components that ran.
    """
    plain = Clock()
    for start in range(0, len(prompts), args.batch_size):
        batch = model.tokenize(prompts[start:start + args.batch_size])
        with torch.no_grad():
            plain.run("generate", lm.model.generate, **batch, max_new_tokens=args.max_new_tokens, do_sample=False)
    ours = Clock()
    gens = ours.run("generate", certa.generate, lm, examples, batch_size=args.batch_size,
                    max_new_tokens=args.max_new_tokens, progress=False, **generate_options("logprob"))
    records = grade(gens, examples)  # not timed: LM-Polygraph does not grade either
    certa_scores(methods, records, ours, {})
    theirs = run_polygraph(model, prompts, pairs, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                           samples=0, hidden=False)
    # Returning attentions needs eager attention: under transformers' default SDPA, LM-Polygraph's
    # default greedy calculator (attentions on) fails with an IndexError.
    attention = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        defaults = run_polygraph(model, prompts, pairs, batch_size=args.batch_size,
                                 max_new_tokens=args.max_new_tokens, samples=0, hidden=False, lean=False)
    finally:
        lm.model.set_attn_implementation(attention)
    return {"plain": _everything(plain), "certa": _everything(ours), "polygraph": _everything(theirs.clock),
            "polygraph_defaults": _everything(defaults.clock), "components": list(theirs.clock.wall)}


def _everything(clock: Clock) -> tuple[float, float]:
    return clock.total(list(clock.wall))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="certa model spec (default: bundled SmolLM2-135M)")
    parser.add_argument("--dataset", default="capitals")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--train-count", type=int, default=64, help="train questions for the density family")
    parser.add_argument("--background", default="triviaqa", help="dataset whose train split is RMD's background")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds of the log-prob family (best kept)")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    args = parser.parse_args()
    families = [f for f in args.families.split(",") if f]
    unknown = set(families) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; choose from {FAMILIES}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from importlib.metadata import version

    lm = certa.load_model(args.model, device="cpu")
    examples = certa.load_dataset(args.dataset, split="test", limit=args.count)
    prompts = [lm.chat_prompt(question_prompt(ex)) for ex in examples]
    model = polygraph_model(lm)
    print(f"model {lm.name} ({lm.model.name_or_path}); torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}; certa {certa.__version__}, lm-polygraph "
          f"{version('lm-polygraph')}, transformers {version('transformers')}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    print(f"{len(examples)} {args.dataset} test questions; greedy, max_new_tokens={args.max_new_tokens}, "
          f"batch {args.batch_size}; K={args.samples} samples at T=1")
    report: dict[str, Any] = {"settings": vars(args), "pairs": {}, "timing": {}}

    # warm-up: first-call allocations and kernels, on both code paths
    certa.generate(lm, examples[:2], batch_size=2, max_new_tokens=8, progress=False)
    run_polygraph(model, prompts[:2], [], batch_size=2, max_new_tokens=8, samples=0, hidden=False)

    pairs_by_family = {f: [p for p in PAIRS if p.family == f] for f in families}
    methods, notes = {}, {}
    for key, pair in _keyed([p for f in families for p in pairs_by_family[f]]):
        methods[key], notes[key] = certa_method(pair.certa, pair.options, lm)

    # --- certa: greedy (+ hidden states when the density family runs), then samples ------------
    certa_clock = Clock()
    gens = certa_clock.run("generate", lambda: certa.generate(
        lm, examples, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, progress=False,
        **generate_options("logprob")))
    records = grade(gens, examples)
    correct = np.array([r.correct for r in records])
    live = {k: m for k, m in methods.items() if m is not None and not k.startswith(("sampling:", "hidden:"))}
    conf = certa_scores(live, records, certa_clock, notes)

    # --- LM-Polygraph: one pass computing every estimator of the chosen families ----------------
    pg_pairs = [p for f in families if f != "hidden" for p in pairs_by_family[f]]
    fallback_pair = Pair("sampling", FALLBACK_SAMPLING[0], FALLBACK_SAMPLING[1], {})
    shared_sampling = [p for p in pairs_by_family.get("sampling", []) if methods[f"sampling:{p.certa}"]]
    if "sampling" in families and not shared_sampling:
        pg_pairs.append(fallback_pair)
    run = run_polygraph(model, prompts, pg_pairs, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                        samples=args.samples if "sampling" in families else 0, hidden=False)
    same = sum(list(g.token_ids) == list(t) for g, t in zip(gens, run.greedy_tokens, strict=True))
    pg_records = grade([Generation(id=ex.id, prompt=p, response=text.strip())
                        for ex, p, text in zip(examples, prompts, run.greedy_texts, strict=True)], examples)
    pg_correct = np.array([r.correct for r in pg_records])
    print(f"identical greedy answers (token ids): {same}/{len(examples)}; accuracy certa "
          f"{correct.mean():.3f}, LM-Polygraph {pg_correct.mean():.3f}")
    report["identical_answers"] = same
    report["accuracy"] = {"certa": float(correct.mean()), "polygraph": float(pg_correct.mean())}

    # --- timing rounds for the log-prob family (cheap enough to repeat; the minimum is kept) ---------
    live_logprob = {k: methods[k] for k, _ in _keyed(pairs_by_family.get("logprob", [])) if k in conf}
    rounds = [time_logprob_round(lm, model, examples, prompts, live_logprob,
                                 [p for k, p in _keyed(PAIRS) if k in live_logprob], args)
              for _ in range(args.repeats)]
    best = {side: (min(r[side][0] for r in rounds), min(r[side][1] for r in rounds)) for side in rounds[0]}
    report["logprob_rounds"] = rounds

    # --- certa with samples --------------------------------------------------------------------
    sample_records: list[Record] = []
    certa_sampling_clock = Clock()
    if "sampling" in families:
        sample_gens = certa_sampling_clock.run("generate", lambda: certa.generate(
            lm, examples, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
            samples=args.samples, progress=False))
        sample_records = grade(sample_gens, examples)
        live = {f"sampling:{p.certa}": methods[f"sampling:{p.certa}"] for p in shared_sampling}
        if not live:
            live = {f"sampling:{FALLBACK_SAMPLING[0]}": certa.get_method(FALLBACK_SAMPLING[0], model=lm)}
        conf.update(certa_scores(live, sample_records, certa_sampling_clock, notes))
        on_certa_samples = polygraph_on_certa_samples(sample_records, pg_pairs)

    # --- density family: its own passes with hidden states on both sides, train (and background) too ----
    pg_density: dict[str, np.ndarray] = {}
    density_clock = Clock()
    density_correct = correct
    if "hidden" in families:
        hidden_pairs = pairs_by_family["hidden"]
        train = certa.load_dataset(args.dataset, split="train", limit=args.train_count)
        background = certa.load_dataset(args.background, split="train", limit=args.train_count)
        live = {k: methods[k] for k, _ in _keyed(hidden_pairs) if methods[k]}
        if live:
            options = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, hidden_states=True,
                           progress=False)
            hidden_records = grade(density_clock.run("generate", lambda: certa.generate(lm, examples, **options)),
                                   examples)
            train_records = grade(density_clock.run("generate_train", lambda: certa.generate(lm, train, **options)),
                                  train)
            density_correct = np.array([r.correct for r in hidden_records])
            conf.update(certa_scores(live, hidden_records, density_clock, notes, fit_on=train_records))
        passes = {}
        for name, qs in (("test", examples), ("train", train), ("background", background)):
            passes[name] = run_polygraph(model, [lm.chat_prompt(question_prompt(ex)) for ex in qs], [],
                                         batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                         samples=0, hidden=True)
            density_clock.wall[f"polygraph_{name}"] = passes[name].clock.wall["greedy"]
        pg_density = density_clock.run("polygraph_fit_score", lambda: polygraph_density(
            hidden_pairs, passes["test"].embeddings, passes["train"].embeddings, passes["background"].embeddings))

    # --- correlations and AUROCs -------------------------------------------------------------------
    print("\nρ = Spearman(certa confidence, −LM-Polygraph value); AUROC vs certa's grader "
          "(LM-Polygraph: of its negated value, i.e. higher value = less confident as it documents)")
    print(f"{'certa method':26}{'LM-Polygraph estimator':34}{'ρ':>7}{'AUROC certa':>13}{'AUROC PG':>10}"
          f"{'ρ on certa samples':>20}  note")
    all_values = {**run.values, **pg_density}
    for key, pair in _keyed([p for f in families for p in pairs_by_family[f]] +
                            ([fallback_pair] if fallback_pair in pg_pairs else [])):
        pg_values = all_values.get(key)
        name = str(pair.polygraph())
        row: dict[str, Any] = {"polygraph": name, "note": notes.get(key, "timing stand-in, not a shared pair")}
        pg_auc = auroc(-pg_values, pg_correct) if pg_values is not None else float("nan")
        row["auroc_polygraph"] = pg_auc
        if key in conf:
            graded = {"sampling": np.array([r.correct for r in sample_records]), "hidden": density_correct}
            row["auroc_certa"] = auroc(conf[key], graded.get(pair.family, correct))
            row["spearman"] = spearman(conf[key], -pg_values) if pg_values is not None else float("nan")
            if pair.family == "sampling":
                row["spearman_same_samples"] = spearman(conf[key], -on_certa_samples[key])
        print(f"{pair.certa:26}{name:34}{fmt(row.get('spearman')):>7}{fmt(row.get('auroc_certa')):>13}"
              f"{fmt(pg_auc):>10}{fmt(row.get('spearman_same_samples')):>20}  {row['note']}")
        row["polygraph_values"] = pg_values.tolist() if pg_values is not None else None
        row["certa_values"] = np.asarray(conf[key]).tolist() if key in conf else None
        report["pairs"][key] = row

    # --- time ratios per family ----------------------------------------------------------------------
    plain_wall, plain_cpu = best["plain"] if rounds else (float("nan"), float("nan"))
    print(f"\nplain model.generate (greedy, same batches): {plain_wall:.2f} s wall, {plain_cpu:.2f} s cpu "
          f"(best of {args.repeats})")
    print(f"{'family':10}{'certa wall':>11}{'PG wall':>9}{'ratio':>7}{'certa cpu':>11}{'PG cpu':>8}{'ratio':>7}"
          f"{'certa/plain':>13}{'PG/plain':>10}  LM-Polygraph components")
    for family in families:
        if family == "logprob":
            if not live_logprob or not rounds:
                print(f"{family:10}  (no certa method registered: not timed)")
                continue
            needs = sorted(rounds[0]["components"])
            _print_times(family, best["certa"], best["polygraph"], (plain_wall, plain_cpu),
                         [f"best of {args.repeats}: {' + '.join(needs)}"], report)
            _print_times("logprob*", best["certa"], best["polygraph_defaults"], (plain_wall, plain_cpu),
                         ["* greedy with LM-Polygraph's registered defaults (eager attention, attentions + "
                          "hidden states kept)"], report)
            continue
        if family == "sampling":
            keys = [k for k in conf if k.startswith("sampling:")]
            certa_t = certa_sampling_clock.total(["generate", *keys])
            components = ["greedy", "samples", *keys]
            if any(p.certa != FALLBACK_SAMPLING[0] for p in shared_sampling):
                components += ["semantic_matrix", "semantic_classes"]
            _print_times(family, certa_t, run.clock.total(components), (plain_wall, plain_cpu),
                         [f"one run: {' + '.join(components)}"], report)
            continue
        keys = [k for k in conf if k.startswith("hidden:")]
        if not keys:
            print(f"{family:10}  (no certa method registered yet: not timed)")
            continue
        certa_t = (density_clock.total(["generate", "generate_train", *keys])[0], float("nan"))
        pg_t = (density_clock.total(["polygraph_test", "polygraph_train", "polygraph_background",
                                     "polygraph_fit_score"])[0], float("nan"))
        _print_times(family, certa_t, pg_t, (plain_wall, plain_cpu),
                     ["one run: greedy with hidden states on test + train + background questions, fit + score"],
                     report)
    print("\nLM-Polygraph component seconds (wall): " +
          ", ".join(f"{k} {v:.2f}" for k, v in run.clock.wall.items()))
    print("certa component seconds (wall): " + ", ".join(
        f"{k} {v:.2f}" for c in (certa_clock, certa_sampling_clock, density_clock) for k, v in c.wall.items()))
    report["components"] = {"polygraph": dict(run.clock.wall), "certa": dict(certa_clock.wall),
                            "certa_sampling": dict(certa_sampling_clock.wall), "density": dict(density_clock.wall),
                            "plain_generate": plain_wall}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1, default=float)
        print(f"wrote {args.json}")


def _print_times(family: str, certa_t: tuple[float, float], pg_t: tuple[float, float],
                 plain: tuple[float, float], components: list[str], report: dict[str, Any]) -> None:
    print(f"{family:10}{certa_t[0]:11.2f}{pg_t[0]:9.2f}{certa_t[0] / pg_t[0]:7.2f}{fmt(certa_t[1], 2):>11}"
          f"{fmt(pg_t[1], 2):>8}{fmt(certa_t[1] / pg_t[1], 2):>7}{certa_t[0] / plain[0]:13.2f}"
          f"{pg_t[0] / plain[0]:10.2f}  {' + '.join(components)}")
    report["timing"][family] = {"certa_wall": certa_t[0], "polygraph_wall": pg_t[0], "certa_cpu": certa_t[1],
                                "polygraph_cpu": pg_t[1], "plain_wall": plain[0], "components": components}


if __name__ == "__main__":
    try:
        main()
    except CertaError as exc:
        raise SystemExit(f"error: {exc}") from None
