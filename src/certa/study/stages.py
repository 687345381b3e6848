"""The study's file-based stages for one dataset: generate and grade its train and test answers.

Each stage reads and writes files under one output directory, so a run can
stop anywhere and resume: generation skips ids already written and a changed
setting redoes exactly the stage it affects. What is generated follows from
the chosen methods (:func:`evidence_for`): hidden states only when a method
reads them, samples only when a method compares them.

Layout of ``out/<dataset>/``::

    train.generations.jsonl, test.generations.jsonl, train.records.jsonl, test.records.jsonl
    generation-settings.json   the settings that made the generations (a change redoes them)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import grade, load_dataset
from ..errors import InputError
from ..generation import generate
from ..methods.base import MethodSpec, Needs
from ..records import Example, Generation, Record, atomic_write_text, read_jsonl, write_jsonl
from .config import DatasetSettings, RunConfig

if TYPE_CHECKING:
    from ..models import LoadedModel

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Evidence:
    """What generation records for one split: hidden states and how many sampled answers."""

    hidden_states: bool = False
    samples: int = 0
    token_stats: bool = False


def evidence_for(methods: Sequence[str], samples: int) -> dict[str, Evidence]:
    """Per split, the evidence the methods read: scoring reads the test (and calibration) split, fitting and
    training the train split (a calibrator scores its base on the train split, so it needs the base's
    evidence there)."""
    specs = [MethodSpec.parse(m) for m in methods]
    test = functools.reduce(lambda a, b: a | b, (s.needs for s in specs), Needs.NOTHING)
    train = functools.reduce(lambda a, b: a | b, (s.fit_needs for s in specs), Needs.NOTHING)
    evidence = {split: Evidence(Needs.HIDDEN_STATES in needs, samples if Needs.SAMPLES in needs else 0,
                                Needs.TOKEN_STATS in needs)
                for split, needs in (("train", train), ("test", test))}
    # Calibration answers are scored only by the trained methods (tuning), which read no samples.
    return {**evidence, "calibration": Evidence(hidden_states=evidence["test"].hidden_states)}


def check_methods(methods: Sequence[str]) -> None:
    """Fail early, naming the method, when a listed method does not exist."""
    if not methods:
        raise InputError("config: 'methods' is empty")
    for name in methods:
        MethodSpec.parse(name)


@dataclass
class DatasetRecords:
    """A dataset's graded answers from the base model: train, test and (when tuning) calibration."""

    name: str
    train: list[Record]
    test: list[Record]
    calibration: list[Record] = field(default_factory=list)


def prepare_dataset(config: RunConfig, lm: LoadedModel, ds: DatasetSettings, evidence: dict[str, Evidence],
                    splits: Sequence[str] = SPLITS) -> DatasetRecords:
    """Generate (resumably) and grade one dataset's answers for ``splits`` under ``config.out/<key>``.

    Each split keeps a stamp of the settings that made it; a split made with other
    settings (or other evidence) is stale and regenerated, the others are kept.
    """
    d = Path(config.out) / ds.key
    limits = {"train": ds.train_limit, "test": ds.test_limit, "calibration": ds.calibration_limit}
    graded: dict[str, list[Record]] = {}
    for split in splits:
        out = d / f"{split}.generations.jsonl"
        # The question limit is not part of the stamp: answers are kept by id, so a larger limit resumes.
        settings = {"model": config.model, "seed": config.seed,
                    "temperature": config.generation.temperature, "max_new_tokens": config.generation.max_new_tokens,
                    "evidence": asdict(evidence[split])}
        refresh_stamp(d / f"{split}.generation-settings.json", settings, [out])
        examples = load_dataset(ds.name, split=split, limit=limits[split], seed=config.seed)
        gens = generate_stage(lm, examples, out, config, evidence[split])
        graded[split] = grade_stage(gens, examples, d / f"{split}.records.jsonl")
    log.info("%s: %s answers", ds.key, ", ".join(f"{len(v)} {k}" for k, v in graded.items()))
    return DatasetRecords(ds.key, graded.get("train", []), graded.get("test", []), graded.get("calibration", []))


def generate_stage(lm: LoadedModel, examples: Sequence[Example], out: Path, config: RunConfig,
                   evidence: Evidence, *, hooks: Sequence[Any] | None = (), samples: int | None = None,
                   temperature: float | None = None) -> list[Generation]:
    """Generate answers into ``out`` (resumable: finished ids are skipped on a re-run)."""
    gen = config.generation
    return generate(lm, examples, max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size,
                    samples=evidence.samples if samples is None else samples,
                    temperature=gen.temperature if temperature is None else temperature,
                    hidden_states=evidence.hidden_states, token_stats=evidence.token_stats, hooks=hooks,
                    seed=config.seed, out=out)


def grade_stage(generations: Sequence[Generation], examples: Sequence[Example], out: Path) -> list[Record]:
    """Grade generations against their examples and write the records."""
    records = grade(generations, examples)
    write_jsonl(out, records)
    return records


def refresh_stamp(stamp: Path, settings: dict[str, Any], outputs: Sequence[Path]) -> None:
    """Delete ``outputs`` (and their partial files) when they were made with other ``settings``.

    The stamp records the settings that made the outputs, so a changed
    setting redoes exactly the stage it affects and nothing else.
    """
    text = json.dumps(settings, sort_keys=True, default=str)
    if stamp.exists() and not stamp_is(stamp, text):
        stale = [p for p in outputs if p.exists() or p.with_name(p.name + ".partial").exists()]
        if stale:
            log.warning("%s: settings changed; redoing %s", stamp.parent, ", ".join(p.name for p in stale))
        for p in outputs:
            p.unlink(missing_ok=True)
            p.with_name(p.name + ".partial").unlink(missing_ok=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, text)


def stamp_is(stamp: Path, text: str) -> bool:
    """Whether ``stamp`` holds exactly ``text`` (compared as bytes: a corrupt stamp is just a different one)."""
    return stamp.exists() and stamp.read_bytes().strip() == text.encode("utf-8")


def fingerprint(*parts: Any) -> str:
    """A digest of JSON-able parts: what a cached output was made from."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def record_key(records: Sequence[Record], *, graded: bool) -> str:
    """A digest of records' ids, answers, samples and (when ``graded``) grades."""
    return fingerprint([(r.id, r.response, r.correct if graded else None, r.samples) for r in records])


def load_records(path: str | Path) -> list[Record]:
    """Read graded records (``certa grade`` output)."""
    records = read_jsonl(path, Record)
    if not records:
        raise InputError(f"{path}: no records")
    return records


def training_answers(lm: LoadedModel, dataset: str, out: Path, *, limit: int | None = None,
                     hidden_states: bool = True, seed: int = 0) -> list[Record]:
    """The base model's own greedy answers on a dataset's train split, graded (what trained methods learn from).

    Written to ``out/train.generations.jsonl`` and ``out/train.records.jsonl`` (generation resumes).
    """
    examples = load_dataset(dataset, split="train", limit=limit, seed=seed)
    gens = generate(lm, examples, hidden_states=hidden_states, seed=seed, out=out / "train.generations.jsonl")
    return grade_stage(gens, examples, out / "train.records.jsonl")
