"""Read-outs during generation: plain generate vs generate + a confidence hook (GrACE, ConfTuner, verbalized).

Every phase answers the same questions with the same settings (greedy,
``max_new_tokens``, batch size) on the same weights, with torch threads
pinned. Phases are interleaved and repeated; the median CPU seconds of each
is compared with plain generation:

* ``plain``          the base model, no adapter
* ``wrapped``        the GrACE model with the adapter off and no read-out: what the
                     PEFT wrapper alone costs generation
* ``grace-step``     GrACE artifact (LoRA + <CNF> row), answers with the adapter off,
                     plus the read-out step over the KV cache (the default)
* ``grace-free``     <CNF> row only, read from the state generation already computed
* ``conftuner-cue``  a ConfTuner adapter's read-out: the ``Confidence:`` cue (a few tokens) over the
                     KV cache, adapter on, as a ConfTuner artifact reads while answering
* ``verbalized-follow-up``  the untrained verbalized read-out: the follow-up request (~40 tokens)
                     over the KV cache
* ``consistency-5``  plain + 5 sampled answers per question, for contrast

The heads are untrained (fresh LoRA, initial <CNF> row): a read-out's cost does
not depend on training. Also checks that every read-out phase gives the same
greedy answers as plain generation.

    python benchmarks/grace_overhead.py                       # bundled default model
    python benchmarks/grace_overhead.py --count 32 --max-new-tokens 64 --repeats 5
    python benchmarks/grace_overhead.py --phases plain,grace-step,grace-free   # skip the slow contrast
"""

from __future__ import annotations

import platform
import statistics
from collections.abc import Callable

import torch
from common import generation_parser, timed  # benchmarks/common.py, beside this script

from certa.data import load_dataset
from certa.generation import generate
from certa.methods.grace import GraceHook, add_cnf_token
from certa.methods.prompting.verbalized import VerbalHook, confidence_tokens
from certa.models import LoadedModel, load_model
from certa.records import Example, Generation
from certa.training.config import TrainConfig
from certa.training.trainer import attach_adapter

PHASES = ("plain", "wrapped", "grace-step", "grace-free", "conftuner-cue", "verbalized-follow-up", "consistency-5")


def grace_model(spec: str, device: str | None, *, lora: bool) -> LoadedModel:
    """The base model with an untrained GrACE head: <CNF> added, LoRA attached when ``lora``."""
    lm = load_model(spec, device=device)
    cnf = add_cnf_token(lm)
    config = TrainConfig() if lora else TrainConfig(target_modules=[])
    attach_adapter(lm, config, [cnf])
    lm.model.eval()
    return lm


def main() -> None:
    parser = generation_parser(__doc__.splitlines()[0], dataset="triviaqa", count=16, max_new_tokens=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {PHASES}")
    args = parser.parse_args()
    wanted = ["plain", *[p for p in args.phases.split(",") if p and p != "plain"]]
    unknown = sorted(set(wanted) - set(PHASES))
    if unknown:
        parser.error(f"unknown phase(s) {unknown}; choose from {PHASES}")

    torch.set_num_threads(args.threads)
    plain = load_model(args.model, device=args.device)
    step = grace_model(args.model, args.device, lora=True)
    free = grace_model(args.model, args.device, lora=False)
    tuned = load_model(args.model, device=args.device)  # an untrained ConfTuner adapter: LoRA, no new token
    attach_adapter(tuned, TrainConfig(), [])
    tuned.model.eval()
    levels = confidence_tokens(plain.tokenizer)
    examples: list[Example] = load_dataset(args.dataset, split="test", limit=args.count)
    print(f"model {plain.name} on {plain.device} ({plain.dtype}); torch {torch.__version__}; "
          f"threads {torch.get_num_threads()}; {platform.processor() or platform.machine()}")
    print(f"{len(examples)} {args.dataset} questions, batch {args.batch_size}, greedy, "
          f"max_new_tokens={args.max_new_tokens}, {args.repeats} interleaved repeats (median)")

    options = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False)

    def run_grace(lm: LoadedModel, readout: str) -> list[Generation]:
        with lm.adapter_disabled():  # answers from the base model; the hook switches the adapter on
            return generate(lm, examples, hooks=[GraceHook(readout=readout)], **options)

    def run_conftuner() -> list[Generation]:
        hook = VerbalHook("conftuner", levels, style="cue", adapter_enabled=True)
        with tuned.adapter_disabled():  # answers from the base model; the read-out turns the adapter on
            return generate(tuned, examples, hooks=[hook], **options)

    def run_wrapped() -> list[Generation]:
        with step.adapter_disabled():
            return generate(step, examples, **options)

    every: dict[str, Callable[[], list[Generation]]] = {
        "plain": lambda: generate(plain, examples, **options),
        "wrapped": run_wrapped,
        "grace-step": lambda: run_grace(step, "step"),
        "grace-free": lambda: run_grace(free, "free"),
        "conftuner-cue": run_conftuner,
        "verbalized-follow-up": lambda: generate(
            plain, examples, hooks=[VerbalHook("verbalized", levels, style="follow_up", adapter_enabled=False)],
            **options),
        "consistency-5": lambda: generate(plain, examples, samples=5, **options),
    }
    phases = {name: every[name] for name in wanted}
    for run in phases.values():  # warm-up: first-call allocations and kernels
        run()
    wall: dict[str, list[float]] = {name: [] for name in phases}
    cpu: dict[str, list[float]] = {name: [] for name in phases}
    answers: dict[str, list[list[int]]] = {}
    for _ in range(args.repeats):
        for name, run in phases.items():
            w, c, gens = timed(run)
            wall[name].append(w)
            cpu[name].append(c)
            answers[name] = [g.token_ids for g in gens]

    tokens = sum(len(ids) for ids in answers["plain"])
    print(f"{tokens} answer tokens in total ({tokens / len(examples):.1f} per answer)")
    base_cpu, base_wall = statistics.median(cpu["plain"]), statistics.median(wall["plain"])
    print(f"{'phase':<15}{'cpu s':>9}{'wall s':>9}{'cpu ratio':>11}{'wall ratio':>12}")
    for name in phases:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(f"{name:<15}{c:>9.2f}{w:>9.2f}{c / base_cpu:>11.3f}{w / base_wall:>12.3f}")
    for name in ("wrapped", "grace-step", "grace-free", "conftuner-cue", "verbalized-follow-up"):
        if name not in answers:
            continue
        same = answers[name] == answers["plain"]
        print(f"{name}: greedy answers identical to plain generation: {same}")


if __name__ == "__main__":
    main()
