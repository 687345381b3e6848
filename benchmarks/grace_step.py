"""GrACE's read-out through PEFT's merged embedding matrix vs through the trained ``<CNF>`` rows, in one run.

GrACE trains ``<CNF>`` as PEFT trainable tokens. PEFT's forward writes the
trained row into a copy of the whole embedding matrix at every call (once for
the input embedding, once for the tied head) and back-propagates a dense
gradient of that copy; :mod:`certa.models.token_rows` reads the same numbers
from the frozen matrix plus the row (``token_rows.ENABLED`` switches between
the two). On the same answers, with the same fresh LoRA and placed ``<CNF>``
row, torch threads pinned, phases interleaved and repeated:

* ``train step``  one suffix-mode optimiser step (read-out forward, backward, AdamW) on a batch, the
  answers' base encoding already in the prefix store (every epoch after the first)
* ``score``       ``offline_confidence`` over all answers (encoding prompt + answer included)
* ``read-out``    the adapter-on read-out step alone over already encoded answers

    python benchmarks/grace_step.py                         # default model, 48 capitals answers, batch 16
    python benchmarks/grace_step.py --count 32 --repeats 5
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from common import generation_parser, timed  # benchmarks/common.py, beside this script

from certa.data import grade, load_dataset
from certa.generation import generate
from certa.methods.answer_cache import answer_ids, encode_answers
from certa.methods.grace import GraceConfig
from certa.methods.grace.objective import GraceObjective
from certa.methods.grace.readout import offline_confidence, readout_step
from certa.models import load_model, token_rows
from certa.training.trainer import attach_adapter, build_optimizer

PATHS = {"peft": False, "rows": True}  # token_rows.ENABLED


def setup(lm, records, batch_size: int):
    """The objective with its items and placed <CNF> row, the fresh adapter, its optimiser and the batches."""
    config = GraceConfig(batch_size=batch_size, validation_fraction=0.0, seed=0)
    objective = GraceObjective(config)
    objective.prepare(lm, config)
    items = objective.build_items(lm, records, config)
    attach_adapter(lm, config, objective.trainable_token_ids(lm))
    optimizer = build_optimizer(lm.model, config)
    batches = [objective.collate(lm, items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    with torch.no_grad():  # fill the prefix store: timed steps read the answers' stored base encoding
        for batch in batches:
            objective.confidences(lm, batch)
    return config, objective, optimizer, batches


def train_step(lm, objective, config, optimizer, batch) -> None:
    lm.model.train()
    loss, _ = objective.loss(lm, batch, config)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    lm.model.eval()


def interleaved(phases: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each phase, ``peft`` and ``rows`` alternating within every repeat (and which goes
    first alternating between repeats)."""
    seconds: dict[str, list[float]] = {name: [] for name in phases}
    for repeat in range(repeats):
        for name, run in list(phases.items())[::-1 if repeat % 2 else 1]:
            token_rows.ENABLED = PATHS[name.split()[-1]]
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    token_rows.ENABLED = True
    return seconds


def main() -> None:
    parser = generation_parser(__doc__.splitlines()[0], dataset="capitals-phrased", count=48, max_new_tokens=24)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device)
    examples = load_dataset(args.dataset, split="train", limit=args.count)
    (gen_wall, _, gens) = timed(lambda: generate(lm, examples, max_new_tokens=args.max_new_tokens, batch_size=16,
                                                 hidden_states=True, progress=False))
    records = grade(gens, examples)
    config, objective, optimizer, batches = setup(lm, records, args.batch_size)
    cnf = objective.cnf_id
    pairs = [answer_ids(lm, r) for r in records]
    caches = [encode_answers(lm.model, pairs[i:i + args.batch_size], lm.tokenizer.pad_token_id)
              for i in range(0, len(pairs), args.batch_size)]

    def read_all():
        with torch.no_grad():
            return [readout_step(lm.model, cache, cnf) for cache in caches]

    print(f"model {args.model} on {lm.device} ({lm.dtype}); vocabulary {len(lm.tokenizer)}; torch "
          f"{torch.__version__}; threads {torch.get_num_threads()}; {platform.machine()}")
    print(f"{len(records)} graded {args.dataset} answers (generated in {gen_wall:.1f} s), batch {args.batch_size}, "
          f"{len(batches)} batches, {args.repeats} interleaved repeats\n")

    token_rows.ENABLED = False
    merged = offline_confidence(lm, records, batch_size=args.batch_size)
    token_rows.ENABLED = True
    rows = offline_confidence(lm, records, batch_size=args.batch_size)
    print(f"max |c(peft) - c(rows)| over the answers: {np.abs(merged - rows).max():.2e}\n")

    steps = interleaved({f"train step {p}": (lambda: [train_step(lm, objective, config, optimizer, b)
                                                       for b in batches]) for p in PATHS}, args.repeats)
    scoring = interleaved({f"score {p}": lambda: offline_confidence(lm, records, batch_size=args.batch_size)
                           for p in PATHS}, args.repeats)
    reading = interleaved({f"read-out {p}": read_all for p in PATHS}, args.repeats)
    per = {"train step": len(batches), "score": len(batches), "read-out": len(batches)}
    print(f"{'phase':12s} {'peft s/batch':>13s} {'rows s/batch':>13s} {'peft / rows':>12s}")
    for kind, seconds in (("train step", steps), ("score", scoring), ("read-out", reading)):
        peft = statistics.median(seconds[f"{kind} peft"]) / per[kind]
        rows_s = statistics.median(seconds[f"{kind} rows"]) / per[kind]
        print(f"{kind:12s} {peft:13.3f} {rows_s:13.3f} {peft / rows_s:11.2f}x")


if __name__ == "__main__":
    main()
