"""ConfTuner's training step: the adapter over the whole verbal prompt (``full``) vs on the suffix alone
(``suffix``, over a cached base encoding of prompt + answer), in one run.

Both phases train the same fresh LoRA on the same graded answers, at the same batch size, with torch
threads pinned; each phase's per-step seconds come from its own training log. ``suffix`` mode encodes
each answer once with the base model (in its first epoch) and reuses that encoding afterwards, so its
first-epoch and later-epoch steps are reported apart. ``full`` mode is the paper's setting (LM loss
included, λ = 1); ``full --lm-loss-weight 0`` is printed too, to separate the LM loss from the forward.

    python benchmarks/conftuner_step.py                     # default model, 32 capitals answers, batch 8
    python benchmarks/conftuner_step.py --count 64 --epochs 3 --threads 2
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch
from common import generation_parser, graded_answers, timed  # benchmarks/common.py, beside this script

from certa.methods.conftuner.method import ConfTuner


def step_seconds(out_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
    return [float(r["seconds"]) for r in rows if "seconds" in r and "step" in r]


def main() -> None:
    parser = generation_parser(__doc__.splitlines()[0], dataset="capitals-phrased", count=32, max_new_tokens=24)
    parser.add_argument("--epochs", type=float, default=3.0, help="passes over the answers in each phase")
    parser.set_defaults(batch_size=8)
    args = parser.parse_args()
    lm, records = graded_answers(args)
    steps_per_epoch = -(-len(records) // args.batch_size)
    print(f"model {args.model} on {lm.device} ({lm.dtype}); torch {torch.__version__}; threads "
          f"{torch.get_num_threads()}; {platform.machine()}")
    print(f"{len(records)} graded {args.dataset} answers, batch {args.batch_size}, {args.epochs:g} epochs "
          f"({steps_per_epoch} steps each)\n")
    phases = {"full": {"mode": "full"}, "full-no-lm-loss": {"mode": "full", "lm_loss_weight": 0.0},
              "suffix": {"mode": "suffix"}}
    results: dict[str, tuple[float, float, list[float]]] = {}
    for name, overrides in phases.items():
        config = {"epochs": args.epochs, "batch_size": args.batch_size, "validation_fraction": 0.0,
                  "recalibrate": "none", "save_every": 10_000, **overrides}
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu, out = timed(lambda config=config, tmp=tmp, name=name: ConfTuner.train(
                lm, records, config, Path(tmp) / name, progress=False))
            results[name] = (wall, cpu, step_seconds(out))
    print(f"{'phase':18s} {'wall s':>8s} {'CPU s':>8s} {'s/step (all)':>13s} {'epoch 1':>9s} {'later':>9s}")
    for name, (wall, cpu, steps) in results.items():
        first, later = steps[:steps_per_epoch], steps[steps_per_epoch:]
        print(f"{name:18s} {wall:8.1f} {cpu:8.1f} {statistics.median(steps):13.2f} "
              f"{statistics.median(first):9.2f} {statistics.median(later) if later else float('nan'):9.2f}")
    full, suffix = results["full"][2], results["suffix"][2]
    print(f"\nfull / suffix, seconds per step (median over all steps): {statistics.median(full) / statistics.median(suffix):.1f}x")
    print(f"full / suffix, whole training (wall): {results['full'][0] / results['suffix'][0]:.1f}x")


if __name__ == "__main__":
    main()
