"""Data parallelism on CPU: 2 processes x 1 thread (`accelerate launch`) against 1 process x 2 threads.

Both configurations run the same `certa generate` command on the same questions
(greedy, hidden states on, as the pipeline does), one after the other in this
one run and interleaved when repeated, so load from other work on the machine
affects both alike; the load average before and after is printed. Times are
whole commands (start-up and model loading included, as a user sees them:
the ratio the issue asks for) and the generation phase alone, as the busy
seconds per process (the records' per-example seconds summed, divided by the
processes: a mean, which equals the wall time when the shards are balanced).
It also checks that both wrote the same answers.

    python benchmarks/data_parallel.py                      # default model, 128 arithmetic questions
    python benchmarks/data_parallel.py --model PATH --count 256 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--dataset", default="arithmetic")
    parser.add_argument("--count", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        common = ["generate", "-m", args.model, "-d", args.dataset, "--split", "test", "--limit", str(args.count),
                  "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens)]
        run(common[:-6] + ["--limit", "2", "-o", f"{tmp}/warm.jsonl"], processes=1, threads=1)  # model cache
        print(f"model {args.model}; {args.count} {args.dataset} questions, greedy, batch {args.batch_size}, "
              f"max_new_tokens={args.max_new_tokens}, hidden states on; {os.cpu_count()} CPUs; "
              f"load average before: {load()}")
        results: dict[str, list[tuple[float, float]]] = {"2 processes x 1 thread": [], "1 process x 2 threads": []}
        answers = {}
        for repeat in range(args.repeats):
            for name, processes, threads in (("2 processes x 1 thread", 2, 1), ("1 process x 2 threads", 1, 2)):
                out = Path(tmp) / f"{processes}-{repeat}.jsonl"
                wall = run(common + ["-o", str(out)], processes=processes, threads=threads)
                rows = [json.loads(line) for line in out.read_text().splitlines()]
                results[name].append((wall, generation_seconds(rows, processes, args.batch_size)))
                answers[name] = [r["response"] for r in rows]
        print(f"load average after: {load()}")
        print(f"{'':24}{'command wall s':>16}{'generation s/process':>22}")
        for name, times in results.items():
            walls, gens = zip(*times, strict=True)
            print(f"{name:24}{min(walls):16.1f}{min(gens):22.1f}")
        (w2, g2), (w1, g1) = (min(t) for t in zip(*results["2 processes x 1 thread"], strict=True)), \
            (min(t) for t in zip(*results["1 process x 2 threads"], strict=True))
        print(f"ratio (1 process x 2 threads) / (2 processes x 1 thread): command {w1 / w2:.2f}x, "
              f"generation {g1 / g2:.2f}x  (> 1: data parallelism is faster)")
        same = sum(a == b for a, b in zip(*answers.values(), strict=True))
        print(f"identical answers: {same}/{args.count}")


def run(args: list[str], *, processes: int, threads: int) -> float:
    env = {**os.environ, "CERTA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    if processes == 1:
        command = [sys.executable, "-m", "certa.cli", *args]
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(port), "-m", "certa.cli", *args]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def generation_seconds(rows: list[dict], processes: int, batch_size: int) -> float:
    """Busy seconds of the generation phase per process: the per-example seconds (each a share of its batch's
    wall time) summed over all answers and divided by the processes (a mean over processes)."""
    total = sum(sum(r["meta"].get("seconds", {}).values()) for r in rows)
    return total / processes


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
