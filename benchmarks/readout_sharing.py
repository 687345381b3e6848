"""Offline read-outs with and without one shared encoding per answer, against generating the answers.

GrACE (offline step), ConfTuner (the ``Confidence:`` cue) and verbalized
confidence (the follow-up turn) each read after prompt + answer. Scoring stored
answers, each used to encode prompt + answer again; ``score_methods`` now shares
one encoding between them (:mod:`certa.methods.shared_encodings`). In one run,
on the same answers and weights, with torch threads pinned:

* ``generation``  the greedy answers (the denominator of every ratio)
* ``separate``    the three read-outs one after another, each encoding the answers itself
* ``shared``      the same three inside one store: the first encodes, the others reuse

Phases are interleaved and repeated; medians are compared. The artifacts are
the built-in ``default-grace`` and ``default-conftuner``, attached as named
adapters to one base model as a study holds them.

    python benchmarks/readout_sharing.py                   # 48 TriviaQA questions, default model
    python benchmarks/readout_sharing.py --count 32 --repeats 3
"""

from __future__ import annotations

import platform
import statistics

import numpy as np
import torch
from common import generation_parser, timed  # benchmarks/common.py, beside this script

from certa.data import load_dataset
from certa.generation import generate
from certa.methods.runner import score_methods
from certa.methods.shared_encodings import shared_answer_encodings
from certa.models import attach_artifacts, load_model
from certa.models.bundled import bundled_artifact_path
from certa.records import Record

METHODS = ("grace", "conftuner", "verbalized")


def main() -> None:
    parser = generation_parser(__doc__.splitlines()[0], dataset="triviaqa", count=48, max_new_tokens=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shared-gb", type=float, default=2.0, help="memory bound of the shared store")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base = load_model(args.model, device=args.device)
    examples = load_dataset(args.dataset, split="test", limit=args.count)
    print(f"model {base.name} on {base.device} ({base.dtype}); torch {torch.__version__}; "
          f"threads {torch.get_num_threads()}; {platform.processor() or platform.machine()}")
    print(f"{len(examples)} {args.dataset} questions, batch {args.batch_size}, greedy, "
          f"max_new_tokens={args.max_new_tokens}, {args.repeats} interleaved repeats (median)")

    def answer() -> list[Record]:
        gens = generate(base, examples, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                        progress=False)
        return [Record.from_generation(g, e, 0.0) for g, e in zip(gens, examples, strict=True)]

    records = answer()  # warm-up; the answers every read-out scores
    views = attach_artifacts(base, {m: bundled_artifact_path(f"default-{m}") for m in ("grace", "conftuner")})
    models = dict(views)

    def separate() -> dict[str, tuple[float, float, np.ndarray]]:
        out = {}
        for m in METHODS:
            wall, cpu, got = timed(lambda m=m: score_methods([m], records, models=models, default_model=base,
                                                             shared_encodings_gb=0))
            out[m] = (wall, cpu, got[m].scores)
        return out

    def shared() -> dict[str, tuple[float, float, np.ndarray]]:
        out = {}
        with shared_answer_encodings([base, *models.values()], records, max_gb=args.shared_gb) as store:
            for m in METHODS:  # score_methods inside the scope uses its store
                wall, cpu, got = timed(lambda m=m: score_methods([m], records, models=models, default_model=base))
                out[m] = (wall, cpu, got[m].scores)
        assert store is not None
        print(f"  shared store: {store.encoded} answers encoded, {store.reused} rows reused, "
              f"{store.used / 2 ** 20:.0f} MiB kept")
        return out

    separate()  # warm-up: first-call allocations of the adapters' paths
    gen_wall, gen_cpu = [], []
    phases: dict[str, dict[str, list[tuple[float, float]]]] = {"separate": {}, "shared": {}}
    scores: dict[str, dict[str, np.ndarray]] = {"separate": {}, "shared": {}}
    for _ in range(args.repeats):
        wall, cpu, again = timed(answer)
        assert [r.token_ids for r in again] == [r.token_ids for r in records]
        gen_wall.append(wall)
        gen_cpu.append(cpu)
        for name, run in (("separate", separate), ("shared", shared)):
            for m, (w, c, s) in run().items():
                phases[name].setdefault(m, []).append((w, c))
                scores[name][m] = s

    tokens = sum(len(r.token_ids) for r in records)
    print(f"{tokens} answer tokens in total ({tokens / len(records):.1f} per answer)")
    gw, gc = statistics.median(gen_wall), statistics.median(gen_cpu)
    print(f"generation: {gc:.2f} CPU s, {gw:.2f} wall s")
    print(f"{'read-out':<12}{'separate cpu':>14}{'x gen':>8}{'shared cpu':>12}{'x gen':>8}"
          f"{'separate wall':>15}{'x gen':>8}{'shared wall':>13}{'x gen':>8}")
    totals = {name: [0.0, 0.0] for name in phases}
    for m in METHODS:
        row = f"{m:<12}"
        cells = []
        for name in phases:
            w = statistics.median(t[0] for t in phases[name][m])
            c = statistics.median(t[1] for t in phases[name][m])
            totals[name][0] += w
            totals[name][1] += c
            cells.append((c, w))
        row += f"{cells[0][0]:>14.2f}{cells[0][0] / gc:>8.3f}{cells[1][0]:>12.2f}{cells[1][0] / gc:>8.3f}"
        row += f"{cells[0][1]:>15.2f}{cells[0][1] / gw:>8.3f}{cells[1][1]:>13.2f}{cells[1][1] / gw:>8.3f}"
        print(row)
    (sw, sc), (hw, hc) = totals["separate"], totals["shared"]
    print(f"{'all three':<12}{sc:>14.2f}{sc / gc:>8.3f}{hc:>12.2f}{hc / gc:>8.3f}"
          f"{sw:>15.2f}{sw / gw:>8.3f}{hw:>13.2f}{hw / gw:>8.3f}")
    print(f"shared / separate, all three: {hc / sc:.3f} CPU, {hw / sw:.3f} wall")
    for m in METHODS:
        diff = float(np.max(np.abs(scores["shared"][m] - scores["separate"][m])))
        print(f"{m}: largest |shared - separate| score difference {diff:.2e}")


if __name__ == "__main__":
    main()
