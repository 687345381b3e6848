"""Generation throughput: certa's continuous-batching generate against per-example and plain HF, in one run.

Every phase answers the same questions greedily with the same ``max_new_tokens``
on the same model, with torch threads pinned and printed; phases are
interleaved and repeated, and the median of each is compared:

* ``per-example``   certa ``generate``, one question per call (log-probs and hidden states kept)
* ``certa``         certa ``generate`` at ``--batch-size`` (log-probs and hidden states kept)
* ``certa-unshared`` the same with prefix sharing off (every prompt encodes the system prompt itself)
* ``hf-generate``   plain ``model.generate`` on the same prompts, in length-sorted batches of
                    ``--batch-size`` (no log-probs, no hidden states): what transformers alone costs
* ``before``        (with ``--before FILE``) certa's generate before the decoding engine, one
                    ``model.generate`` call per batch, loaded from a copy of its generation.py::

                        git show ab87491:src/certa/generation.py > /tmp/generation_before.py

Prints examples/s (wall and CPU) per phase, the ratios the goals name
(certa / per-example >= 5x; certa over hf-generate <= 1.10x) and how many
answers each phase shares with ``certa``.

    python benchmarks/generation_throughput.py                  # default model, 64 capitals-phrased questions
    python benchmarks/generation_throughput.py --before /tmp/generation_before.py --repeats 3
    python benchmarks/generation_throughput.py --model PATH --count 32 --batch-size 32 --threads 2
"""

from __future__ import annotations

import importlib.util
import platform
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
from common import generation_parser, timed  # benchmarks/common.py, beside this script

from certa.data import load_dataset
from certa.generation import generate
from certa.models import LoadedModel, end_token_ids, load_model
from certa.prompts import question_prompt
from certa.records import Example


def hf_generate(lm: LoadedModel, examples: list[Example], batch_size: int, max_new_tokens: int) -> list[list[int]]:
    """Plain ``model.generate`` over length-sorted batches: each answer's tokens up to its end token."""
    from transformers import GenerationConfig

    from certa.models.tensors import left_pad

    stops = end_token_ids(lm)
    prompts = [lm.tokenizer(lm.chat_prompt(question_prompt(ex)), add_special_tokens=False)["input_ids"]
               for ex in examples]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=stops, do_sample=False,
                              pad_token_id=lm.tokenizer.pad_token_id, use_cache=True)
    answers: dict[int, list[int]] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask = left_pad([prompts[i] for i in chunk], lm.tokenizer.pad_token_id, lm.device)
        with torch.no_grad(), lm.answering():
            out = lm.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        for i, row in zip(chunk, out[:, ids.shape[1]:].tolist(), strict=True):
            end = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
            answers[i] = row[:end]
    return [answers[i] for i in range(len(examples))]


def unshared(run: Callable[[], list[list[int]]]) -> list[list[int]]:
    """``run`` with the decoder's prefix sharing off (no common prompt start is long enough)."""
    from certa import decoding

    saved, decoding.MIN_SHARED_PREFIX = decoding.MIN_SHARED_PREFIX, 10**9
    try:
        return run()
    finally:
        decoding.MIN_SHARED_PREFIX = saved


def load_before(path: str) -> Any:
    """certa's generation module as it was in ``path``, imported beside today's package."""
    spec = importlib.util.spec_from_file_location("certa._generation_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = generation_parser(__doc__.splitlines()[0], dataset="capitals-phrased", count=64, max_new_tokens=32)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the batched phases (median taken)")
    parser.add_argument("--before", default=None, help="a copy of generation.py from before the engine")
    parser.add_argument("--unshared", action="store_true", help="add the phase without prefix sharing")
    parser.add_argument("--skip-per-example", action="store_true", help="skip the slow per-example phase")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device)
    examples: list[Example] = load_dataset(args.dataset, split="test", limit=args.count)
    print(f"model {lm.name} on {lm.device} ({lm.dtype}); torch {torch.__version__}; "
          f"threads {torch.get_num_threads()}; {platform.processor() or platform.machine()}")
    print(f"{len(examples)} {args.dataset} questions, greedy, max_new_tokens={args.max_new_tokens}, "
          f"batch {args.batch_size}, hidden states and log-probs kept by certa's phases")

    options = dict(max_new_tokens=args.max_new_tokens, hidden_states=True, progress=False)
    before = load_before(args.before) if args.before else None
    phases: dict[str, Callable[[], list[list[int]]]] = {
        "certa": lambda: [g.token_ids for g in generate(lm, examples, batch_size=args.batch_size, **options)],
        "hf-generate": lambda: hf_generate(lm, examples, args.batch_size, args.max_new_tokens),
    }
    if args.unshared:
        phases["certa-unshared"] = lambda: unshared(lambda: phases["certa"]())
    if before is not None:
        phases["before"] = lambda: [g.token_ids for g in
                                    before.generate(lm, examples, batch_size=args.batch_size, **options)]
    generate(lm, examples[:4], batch_size=2, **options)  # warm-up: first-call allocations and kernels
    hf_generate(lm, examples[:4], 2, args.max_new_tokens)

    wall: dict[str, list[float]] = {name: [] for name in phases}
    cpu: dict[str, list[float]] = {name: [] for name in phases}
    answers: dict[str, list[list[int]]] = {}
    for _ in range(args.repeats):
        for name, run in phases.items():
            w, c, answers[name] = timed(run)
            wall[name].append(w)
            cpu[name].append(c)
    if not args.skip_per_example:
        w, c, single = timed(lambda: [g.token_ids for ex in examples
                                      for g in generate(lm, [ex], batch_size=1, **options)])
        wall["per-example"], cpu["per-example"], answers["per-example"] = [w], [c], single

    n = len(examples)
    lengths = sorted(len(a) for a in answers["certa"])
    print(f"answer tokens: median {lengths[n // 2]}, max {lengths[-1]}, total {sum(lengths)}; "
          f"{args.repeats} round(s), medians")
    med = {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in wall}
    print(f"{'':16}{'examples/s (wall)':>19}{'examples/s (cpu)':>18}{'same answers as certa':>24}")
    for name, (w, c) in med.items():
        same = sum(a == b for a, b in zip(answers[name], answers["certa"], strict=True))
        print(f"{name:16}{n / w:19.2f}{n / c:18.2f}{f'{same}/{n}':>24}")

    def ratio(a: str, b: str, label: str, goal: str) -> None:
        if a in med and b in med:
            print(f"{label:44}{med[a][0] / med[b][0]:7.2f}x wall{med[a][1] / med[b][1]:7.2f}x cpu   ({goal})")

    ratio("per-example", "certa", "certa batched over per-example (speed-up)", "goal >= 5x")
    ratio("certa", "hf-generate", "certa over plain model.generate (time)", "goal <= 1.10x")
    ratio("before", "certa", "before the engine over certa (speed-up)", "was one generate call per batch")


if __name__ == "__main__":
    main()
