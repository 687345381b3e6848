"""Load test for ``certa serve``: the micro-batcher vs the continuous-batching decode loop, in one run.

For each scheduler (``--schedulers``, default ``micro,continuous``) it starts the
server in a child process on 127.0.0.1 (loopback only), then:

1. sequential: one client sends ``--sequential`` requests one after another (0: skipped);
2. concurrent: ``--clients`` clients each send ``--requests`` requests.

Prints errors (goal: 0), p50/p95 latency of each phase, throughput in
requests/s, the server's batches (micro: batches and their mean size;
continuous: decoding steps and the most rows in one), then the two schedulers
side by side: continuous/micro throughput and p50/p95 ratios. ``--long-every N``
makes every N-th request ask for ``--long-tokens`` (mixed answer lengths, where a
micro-batch keeps its short answers waiting for its long one); the p50 of the
short requests is then printed too. Every phase uses
the same prompts and settings, and the schedulers run one after the other in
the same invocation (``--rounds`` alternates them more than once), so the
machine's load weighs on both alike; the sequential phase runs a prefix of the
request list because its throughput is a rate.

    python benchmarks/server_load.py                # bundled default model, 64 clients x 20 requests
    python benchmarks/server_load.py --clients 16 --requests 5 --sequential 0
    python benchmarks/server_load.py --clients 16 --requests 5 --long-every 4 --long-tokens 64   # mixed lengths
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
from common import wait_healthy  # benchmarks/common.py, beside this script

HOST = "127.0.0.1"  # never anything but loopback
QUESTIONS = ["What is {a} + {b}?", "Name a colour that starts with {c}.", "Is {a} bigger than {b}?",
             "Spell the letter {c}."]


Job = tuple[str, int]
"""A request to send: its prompt and its ``max_tokens``."""


def build_jobs(count: int, max_tokens: int, long_every: int = 0, long_tokens: int = 0, clients: int = 1) -> list[Job]:
    """Short, distinct prompts, deterministic across runs; one in ``long_every`` asks for ``long_tokens``,
    spread so that each client (who sends jobs ``c, c + clients, ...``) gets its share of long ones."""
    def long(i: int) -> bool:
        return bool(long_every) and (i + i // clients) % long_every == long_every - 1

    return [(QUESTIONS[i % len(QUESTIONS)].format(a=i % 17, b=(i * 7) % 13, c="ABCDEFGH"[i % 8]),
             long_tokens if long(i) else max_tokens) for i in range(count)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, scheduler: str) -> subprocess.Popen:
    """The server in its own interpreter, so it shares no GIL with the clients."""
    command = [sys.executable, __file__, "--model", args.model, "--max-batch", str(args.max_batch),
               "--threads", str(args.threads), "--clients", str(args.clients), "--serve-on", str(port),
               "--schedulers", scheduler]
    return subprocess.Popen(command, env={**os.environ, "CERTA_NUM_THREADS": str(args.threads)})


def run_server(args: argparse.Namespace) -> None:
    """Child-process entry point (``--serve-on PORT``)."""
    import torch

    torch.set_num_threads(args.threads)
    from certa.serving.server import serve
    from certa.serving.settings import ServerSettings

    serve(args.model, host=HOST, port=args.serve_on, model_name="bench",
          settings=ServerSettings(max_batch=args.max_batch, max_queue=2 * args.clients, scheduler=args.schedulers),
          log_level="warning")


async def one_request(client: httpx.AsyncClient, job: Job) -> tuple[float, str | None]:
    """(latency in s, error or None); an answer without a confidence in [0, 1] counts as an error."""
    prompt, max_tokens = job
    start = time.perf_counter()
    try:
        response = await client.post("/v1/chat/completions", json={
            "model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens})
        if response.status_code != 200:
            return time.perf_counter() - start, f"HTTP {response.status_code}: {response.text[:120]}"
        confidence = response.json()["choices"][0]["confidence"]
        if not 0.0 <= confidence <= 1.0:
            return time.perf_counter() - start, f"confidence out of range: {confidence}"
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return time.perf_counter() - start, f"{type(exc).__name__}: {exc}"
    return time.perf_counter() - start, None


async def sequential(client: httpx.AsyncClient, jobs: list[Job]) -> tuple[list, float]:
    start = time.perf_counter()
    results = [await one_request(client, job) for job in jobs]
    return results, time.perf_counter() - start


async def concurrent(client: httpx.AsyncClient, jobs: list[Job], clients: int) -> tuple[list, float]:
    """Each client sends its share of ``jobs`` one after another; results in the order of ``jobs``."""
    async def worker(mine: list[Job]) -> list:
        return [await one_request(client, job) for job in mine]

    start = time.perf_counter()
    per_client = await asyncio.gather(*(worker(jobs[i::clients]) for i in range(clients)))
    results: list = [None] * len(jobs)
    for i, mine in enumerate(per_client):
        results[i::clients] = mine
    return results, time.perf_counter() - start


@dataclass
class Phase:
    """One phase's results: latencies (s), errors, wall time."""

    name: str
    results: list[tuple[float, str | None]]
    elapsed: float
    short: list[float] | None = None  # latencies of the short requests, when some are long

    @property
    def errors(self) -> list[str]:
        return [err for _, err in self.results if err]

    def percentile(self, q: float) -> float:
        latencies = sorted(lat for lat, _ in self.results)
        return statistics.median(latencies) if q == 0.5 else latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    @property
    def throughput(self) -> float:
        return len(self.results) / self.elapsed

    def line(self) -> str:
        text = (f"{self.name:>22}: {len(self.results)} requests in {self.elapsed:.1f} s, errors {len(self.errors)}, "
                f"p50 {self.percentile(0.5) * 1000:.0f} ms, p95 {self.percentile(0.95) * 1000:.0f} ms, "
                f"{self.throughput:.2f} req/s")
        if self.short:
            text += f"; short requests p50 {statistics.median(self.short) * 1000:.0f} ms"
        return "\n".join([text] + [f"{'':>24}error: {err}" for err in self.errors[:5]])


async def run_scheduler(args: argparse.Namespace, scheduler: str, jobs: list[Job]) -> tuple[Phase | None, Phase, str]:
    """Start a server with ``scheduler``, run both phases, stop it; the phases and a line on its batches."""
    port = free_port()
    process = start_server(args, port, scheduler)
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    try:
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=args.timeout, limits=limits) as client:
            await wait_healthy(client, process, args.startup_timeout)
            await one_request(client, jobs[0])  # warm-up, not measured
            seq = None
            if args.sequential:
                print(f"{scheduler}: sequential phase, {args.sequential} requests", flush=True)
                results, elapsed = await sequential(client, jobs[: args.sequential])
                seq = Phase(f"{scheduler} sequential", results, elapsed)
            before = (await client.get("/health")).json()
            print(f"{scheduler}: concurrent phase, {args.clients} clients x {args.requests} requests", flush=True)
            results, elapsed = await concurrent(client, jobs, args.clients)
            short = [lat for (lat, _), (_, tokens) in zip(results, jobs, strict=True) if tokens == args.max_tokens]
            con = Phase(f"{scheduler} concurrent", results, elapsed, short if args.long_every else None)
            after = (await client.get("/health")).json()
    finally:
        process.terminate()  # SIGTERM: uvicorn's graceful shutdown
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    batches = after["batches"] - before["batches"]
    if scheduler == "micro":
        note = f"mean batch {len(con.results) / max(batches, 1):.1f} requests (largest {after['max_batch_seen']})"
    else:
        note = f"{batches} decoding steps, at most {after['max_batch_seen']} rows in one"
    return seq, con, f"{scheduler:>22}: {note}"


async def main(args: argparse.Namespace) -> None:
    jobs = build_jobs(args.clients * args.requests, args.max_tokens, args.long_every, args.long_tokens, args.clients)
    schedulers = args.schedulers.split(",")
    runs: dict[str, list[tuple[Phase | None, Phase, str]]] = {s: [] for s in schedulers}
    for _ in range(args.rounds):
        for scheduler in schedulers:
            runs[scheduler].append(await run_scheduler(args, scheduler, jobs))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    mixed = f" (1 in {args.long_every}: {args.long_tokens})" if args.long_every else ""
    print(f"model {args.model!r}, max_tokens {args.max_tokens}{mixed}, torch threads {args.threads}, max_batch "
          f"{args.max_batch}, {os.cpu_count()} CPUs, load average {load:.1f} at the end")
    for scheduler in schedulers:
        for seq, con, note in runs[scheduler]:
            print("\n".join(p.line() for p in (seq, con) if p is not None))
            print(note)
    if {"micro", "continuous"} <= set(schedulers):
        micro = [con for _, con, _ in runs["micro"]]
        cont = [con for _, con, _ in runs["continuous"]]
        ratio = lambda f: statistics.median(f(c) / f(m) for c, m in zip(cont, micro, strict=True))  # noqa: E731
        print(f"continuous / micro (concurrent phase, median over {args.rounds} round(s)): "
              f"throughput {ratio(lambda p: p.throughput):.2f}x, p50 {ratio(lambda p: p.percentile(0.5)):.2f}x, "
              f"p95 {ratio(lambda p: p.percentile(0.95)):.2f}x; errors "
              f"{sum(len(p.errors) for p in micro)} / {sum(len(p.errors) for p in cont)}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--sequential", type=int, default=32, help="requests in the sequential phase")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--long-every", type=int, default=0,
                        help="make every N-th request a long one (0: all alike), to mix answer lengths")
    parser.add_argument("--long-tokens", type=int, default=64, help="max_tokens of the long requests")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--schedulers", default="micro,continuous",
                        help="comma-separated schedulers to compare, each in its own server, in this order")
    parser.add_argument("--rounds", type=int, default=1, help="times to run the schedulers, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in the server")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, s")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--total-timeout", type=float, default=1800.0, help="whole benchmark, s")
    parser.add_argument("--serve-on", type=int, help=argparse.SUPPRESS)  # internal: run the server child
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    if args.serve_on is not None:
        run_server(args)
        sys.exit(0)
    asyncio.run(asyncio.wait_for(main(args), args.total_timeout))
