"""Generation throughput: one example per ``generate`` call vs batched, in one run.

Both phases answer the same questions with the same settings (greedy,
``max_new_tokens``, log-probs and hidden states kept, as the pipeline does)
on the same model, with torch threads pinned and printed. Prints examples/s
for each phase and the batched/per-example ratio, and checks that both phases
produced the same answers.

    python benchmarks/generation_throughput.py                   # bundled default model, 32 questions
    python benchmarks/generation_throughput.py --model PATH --count 64 --batch-size 32 --threads 2
"""

from __future__ import annotations

import platform

import torch
from common import generation_parser, timed  # benchmarks/common.py, beside this script

from certa.data import load_dataset
from certa.generation import generate
from certa.models import load_model
from certa.records import Example


def main() -> None:
    parser = generation_parser(__doc__.splitlines()[0], dataset="arithmetic", count=32, max_new_tokens=32)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device)
    examples: list[Example] = load_dataset(args.dataset, split="test", limit=args.count)
    print(f"model {lm.name} on {lm.device} ({lm.dtype}); torch {torch.__version__}; "
          f"threads {torch.get_num_threads()}; {platform.processor() or platform.machine()}")
    print(f"{len(examples)} {args.dataset} questions, greedy, max_new_tokens={args.max_new_tokens}, "
          "hidden states on")

    options = dict(max_new_tokens=args.max_new_tokens, hidden_states=True, progress=False)
    generate(lm, examples[:2], batch_size=2, **options)  # warm-up: first-call allocations and kernels
    single_wall, single_cpu, single = timed(
        lambda: [g for ex in examples for g in generate(lm, [ex], batch_size=1, **options)])
    batched_wall, batched_cpu, batched = timed(
        lambda: generate(lm, examples, batch_size=args.batch_size, **options))

    n = len(examples)
    same = sum(a.token_ids == b.token_ids for a, b in zip(single, batched, strict=True))
    lengths = sorted(len(g.token_ids) for g in batched)
    print(f"answer tokens: median {lengths[n // 2]}, max {lengths[-1]}, total {sum(lengths)}")
    print(f"{'':14}{'examples/s (wall)':>19}{'examples/s (cpu)':>18}")
    print(f"{'per-example':14}{n / single_wall:19.2f}{n / single_cpu:18.2f}")
    print(f"{f'batched ({args.batch_size})':14}{n / batched_wall:19.2f}{n / batched_cpu:18.2f}")
    print(f"{'ratio':14}{single_wall / batched_wall:18.2f}x{single_cpu / batched_cpu:17.2f}x   (goal >= 5x)")
    print(f"identical answers: {same}/{n}")


if __name__ == "__main__":
    main()
