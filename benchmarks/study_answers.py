"""A study's answering stage redone with today's code, against the answers (and timings) its cache holds.

``make results`` reuses a study's cached answers, and its run-time table charges the answering stage what
it cost when those answers were made, perhaps by older code. This script generates every dataset's answers
again (train, test and, with a tuning search, calibration splits) into a scratch directory with the
study's own stage code, then prints per dataset the seconds it took beside the seconds the cache recorded,
and how many greedy answers, grades and sampled answers are identical to the cached ones.

    python benchmarks/study_answers.py --config configs/results-cpu.yaml --out /tmp/answers-again
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from certa.models import load_base_model
from certa.records import Record, read_jsonl
from certa.study import RunConfig
from certa.study.costs import phase_seconds
from certa.study.stages import evidence_for, prepare_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/results-cpu.yaml", help="the study's config (its cache is read)")
    parser.add_argument("--out", required=True, type=Path, help="an empty scratch directory for the new answers")
    args = parser.parse_args()
    config = RunConfig.from_yaml(args.config)
    cached = Path(config.out)
    if args.out.resolve() == cached.resolve():
        raise SystemExit("--out must not be the study's own directory")
    fresh = config.model_copy(update={"out": args.out})
    splits = ("train", "test", "calibration") if config.tuning else ("train", "test")
    evidence = evidence_for(config.methods, config.generation.samples)
    base = load_base_model(config.model)
    print(f"model {config.model!r}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")
    total_new = total_cached = 0.0
    for ds in config.datasets:
        start = time.perf_counter()
        data = prepare_dataset(fresh, base, ds, evidence, splits)
        seconds = time.perf_counter() - start
        recorded = 0.0
        for split in splits:
            new = {r.id: r for r in getattr(data, split)}
            old = {r.id: r for r in read_jsonl(cached / ds.key / f"{split}.records.jsonl", Record)}
            recorded += sum(phase_seconds(list(old.values())).values())
            same = {field: sum(getattr(new[i], field) == getattr(old[i], field) for i in new if i in old)
                    for field in ("response", "correct", "samples")}
            print(f"{ds.key} {split}: {len(new)} answers; identical to the cache: greedy answers {same['response']}, "
                  f"grades {same['correct']}, sampled answers {same['samples']}")
        print(f"{ds.key}: {seconds / 60:.1f} min now; the cache recorded {recorded / 60:.1f} min "
              f"({recorded / seconds:.1f}x)")
        total_new, total_cached = total_new + seconds, total_cached + recorded
    print(f"answers, every dataset: {total_new / 60:.1f} min now; the cache recorded {total_cached / 60:.1f} min "
          f"({total_cached / total_new:.1f}x)")


if __name__ == "__main__":
    main()
