"""Rebuild the bundled dataset files from the normalised source JSONL files.

    python -m certa.data.make_bundled --source ../shared/data

The sources are the normalised files described in ``docs/data.md`` (same schema
as the bundled ones). Rows are chosen by a fixed hash of their ids and kept in
source order, so the output is byte-identical on every run. Licenses and
attribution live in ``bundled/NOTICE.md`` and ``bundled/LICENSES/``.
"""

from __future__ import annotations

import argparse
import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..records import Example, write_jsonl
from .loaders import read_examples

BUNDLED_DIR = Path(__file__).parent / "bundled"
SELECTION_SALT = "certa-bundle-v1"


@dataclass(frozen=True)
class Subset:
    """``rows`` rows of ``source`` (None = all), or ``rows`` per ``meta[group_by]`` value."""

    name: str
    source: str
    rows: int | None = None
    group_by: str | None = None


SUBSETS = (
    Subset("gsm8k", "gsm8k_test.jsonl", rows=500),
    Subset("triviaqa", "triviaqa_subset.jsonl", rows=600),
    Subset("truthfulqa", "truthfulqa_gen.jsonl"),
    Subset("mmlu", "mmlu_test_subset.jsonl", rows=10, group_by="subject"),
    Subset("strategyqa", "strategyqa_conftuner_test.jsonl"),
)


def _rank(example: Example) -> bytes:
    return hashlib.sha1(f"{SELECTION_SALT}:{example.id}".encode()).digest()


def select(examples: list[Example], subset: Subset) -> list[Example]:
    """The rows of ``subset``, in source order."""
    if subset.rows is None:
        return list(examples)
    groups: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        groups[str(ex.meta.get(subset.group_by, "")) if subset.group_by else ""].append(ex)
    keep = {ex.id for members in groups.values() for ex in sorted(members, key=_rank)[:subset.rows]}
    return [ex for ex in examples if ex.id in keep]


def build(source_dir: Path, out_dir: Path = BUNDLED_DIR) -> dict[str, int]:
    """Write every subset to ``out_dir/<name>.jsonl``; returns rows written per name."""
    written = {}
    for subset in SUBSETS:
        rows = select(read_examples(source_dir / subset.source), subset)
        path = write_jsonl(out_dir / f"{subset.name}.jsonl", rows)
        path.chmod(0o644)  # the atomic write creates a private temp file; package data is world-readable
        written[subset.name] = len(rows)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data"),
                        help="folder holding the normalised source JSONL files")
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR, help="where to write the bundled files")
    args = parser.parse_args(argv)
    for name, n in build(args.source, args.out).items():
        print(f"{name}: {n} rows")


if __name__ == "__main__":
    main()
