"""A verbal read-out's LM head at the read position only vs over every suffix token, in one run.

Scoring stored answers reads ConfTuner's cue (or the verbalized follow-up) after each answer over a kept
encoding of prompt + answer: a few suffix tokens through the model, then the logits at the last one.
``certa.methods.answer_cache.readout_logits`` runs the LM head at that position alone when the suffixes
are equally long (``logits_to_keep=1``); this script times it against the head over every suffix
position (the path taken before, and still taken with gradients), on the same cached answers, the two
interleaved and repeated, and checks that both give the same level probabilities.

    python benchmarks/readout_head.py                       # default model, 48 capitals answers, batch 16
    python benchmarks/readout_head.py --style follow_up     # the verbalized baseline's longer follow-up turn
"""

from __future__ import annotations

import platform
import statistics

import torch
from common import generation_parser, graded_answers, timed  # benchmarks/common.py, beside this script

from certa.methods import answer_cache
from certa.methods.prompting.verbalized import confidence_tokens, levels_after, verbal_inputs


def main() -> None:
    parser = generation_parser(__doc__.splitlines()[0], dataset="capitals-phrased", count=48, max_new_tokens=24)
    parser.add_argument("--style", default="cue", help="the verbal prompt's style: cue (ConfTuner's) or follow_up (verbalized)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    lm, records = graded_answers(args)
    tokens = confidence_tokens(lm.tokenizer)
    inputs = verbal_inputs(lm, records, tokens, args.style)
    batches = []
    with torch.no_grad():
        for start in range(0, len(inputs), args.batch_size):
            chunk = inputs[start:start + args.batch_size]
            cache = answer_cache.encode_answers(lm.model, [c[:2] for c in chunk], lm.tokenizer.pad_token_id)
            batches.append((cache, [c[2] for c in chunk]))
    print(f"model {args.model} on {lm.device} ({lm.dtype}); torch {torch.__version__}; threads "
          f"{torch.get_num_threads()}; {platform.machine()}")
    print(f"{len(records)} {args.dataset} answers, batch {args.batch_size}, style {args.style!r}, suffix "
          f"{sorted({len(c[2]) for c in inputs})} tokens, {args.repeats} interleaved repeats\n")

    def read_all(only: bool):
        answer_cache.HEAD_AT_READ_POSITION_ONLY = only
        with torch.no_grad():
            return [levels_after(lm, cache, suffixes, tokens, adapter_enabled=False) for cache, suffixes in batches]

    seconds: dict[bool, list[float]] = {True: [], False: []}
    probs: dict[bool, list] = {}
    for repeat in range(args.repeats):
        for only in ((True, False) if repeat % 2 else (False, True)):
            wall, _, probs[only] = timed(lambda only=only: read_all(only))
            seconds[only].append(wall)
    answer_cache.HEAD_AT_READ_POSITION_ONLY = True
    gap = max(float(abs(a - b).max()) for a, b in zip(probs[True], probs[False], strict=True))
    every, only = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"head over every suffix position: {every:.2f} s (median)")
    print(f"head at the read position only:  {only:.2f} s (median)")
    print(f"every / only: {every / only:.2f}x; largest level-probability difference {gap:.1e}")


if __name__ == "__main__":
    main()
