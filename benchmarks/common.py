"""What the generation benchmarks share: their command-line options and a wall/CPU timer."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def generation_parser(description: str, *, dataset: str, count: int, max_new_tokens: int) -> argparse.ArgumentParser:
    """Options every generation benchmark takes; torch threads are pinned so phases compare fairly."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="default")
    parser.add_argument("--dataset", default=dataset)
    parser.add_argument("--count", type=int, default=count)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, pinned for every phase")
    parser.add_argument("--device", default=None)
    return parser


def graded_answers(args: argparse.Namespace, split: str = "train") -> tuple[Any, list[Any]]:
    """The model (threads pinned) and its graded greedy answers to ``--count`` questions of ``--dataset``."""
    import torch

    from certa.data import grade, load_dataset
    from certa.generation import generate
    from certa.models import load_model

    torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device)
    examples = load_dataset(args.dataset, split=split, limit=args.count)
    answers = generate(lm, examples, max_new_tokens=args.max_new_tokens, batch_size=16, progress=False)
    return lm, grade(answers, examples)


def timed(run: Callable[[], T]) -> tuple[float, float, T]:
    """Wall and CPU seconds of ``run`` and its result. CPU time is the fairer measure on a shared
    machine, where other processes stretch wall time; the scripts print both."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return time.perf_counter() - wall, time.process_time() - cpu, result


async def wait_healthy(client, process: subprocess.Popen, timeout: float) -> None:
    """Poll a server's ``/health`` until it answers 200; exit naming the cause if it dies or times out."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the server process exited during start-up")
        try:
            if (await client.get("/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.5)
    raise SystemExit(f"the server was not healthy after {timeout:.0f} s")
