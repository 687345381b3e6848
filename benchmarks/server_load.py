"""Load test for ``certa serve``: micro-batched concurrent serving vs one request at a time.

Starts the server in a child process on 127.0.0.1 (loopback only), then in the
same run:

1. sequential: one client sends ``--sequential`` requests one after another;
2. concurrent: ``--clients`` clients each send ``--requests`` requests.

Prints errors (goal: 0), p50/p95 latency of each phase, throughput in
requests/s and the batched/sequential throughput ratio, plus the mean batch
size the server formed. Both phases use the same prompts and settings; the
sequential phase runs a prefix of the request list because its throughput is
a rate and running all of them one by one would take most of the time.

    python benchmarks/server_load.py                # bundled default model
    python benchmarks/server_load.py --model PATH --clients 8 --requests 5
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

import httpx
from common import wait_healthy  # benchmarks/common.py, beside this script

HOST = "127.0.0.1"  # never anything but loopback
QUESTIONS = ["What is {a} + {b}?", "Name a colour that starts with {c}.", "Is {a} bigger than {b}?",
             "Spell the letter {c}."]


def build_prompts(count: int) -> list[str]:
    """Short, distinct prompts, deterministic across runs."""
    return [QUESTIONS[i % len(QUESTIONS)].format(a=i % 17, b=(i * 7) % 13, c="ABCDEFGH"[i % 8])
            for i in range(count)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    """The server in its own interpreter, so it shares no GIL with the clients."""
    command = [sys.executable, __file__, "--model", args.model, "--max-batch", str(args.max_batch),
               "--threads", str(args.threads), "--clients", str(args.clients), "--serve-on", str(port)]
    return subprocess.Popen(command, env={**os.environ, "CERTA_NUM_THREADS": str(args.threads)})


def run_server(args: argparse.Namespace) -> None:
    """Child-process entry point (``--serve-on PORT``)."""
    import torch

    torch.set_num_threads(args.threads)
    from certa.serving.server import serve
    from certa.serving.settings import ServerSettings

    serve(args.model, host=HOST, port=args.serve_on, model_name="bench",
          settings=ServerSettings(max_batch=args.max_batch, max_queue=2 * args.clients), log_level="warning")


async def one_request(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> tuple[float, str | None]:
    """(latency in s, error or None); an answer without a confidence in [0, 1] counts as an error."""
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


async def sequential(client: httpx.AsyncClient, prompts: list[str], max_tokens: int) -> tuple[list, float]:
    start = time.perf_counter()
    results = [await one_request(client, p, max_tokens) for p in prompts]
    return results, time.perf_counter() - start


async def concurrent(client: httpx.AsyncClient, prompts: list[str], clients: int, max_tokens: int) -> tuple[list, float]:
    async def worker(mine: list[str]) -> list:
        return [await one_request(client, p, max_tokens) for p in mine]

    start = time.perf_counter()
    per_client = await asyncio.gather(*(worker(prompts[i::clients]) for i in range(clients)))
    return [r for rs in per_client for r in rs], time.perf_counter() - start


def summarise(name: str, results: list[tuple[float, str | None]], elapsed: float) -> float:
    latencies = sorted(lat for lat, _ in results)
    errors = [err for _, err in results if err]
    p50 = statistics.median(latencies)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    throughput = len(results) / elapsed
    print(f"{name:>10}: {len(results)} requests in {elapsed:.1f} s, errors {len(errors)}, "
          f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, {throughput:.2f} req/s")
    for err in errors[:5]:
        print(f"            error: {err}")
    return throughput


async def main(args: argparse.Namespace, port: int, process: subprocess.Popen) -> None:
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=args.timeout, limits=limits) as client:
        await wait_healthy(client, process, args.startup_timeout)
        prompts = build_prompts(args.clients * args.requests)
        await one_request(client, prompts[0], args.max_tokens)  # warm-up, not measured
        print(f"server up; sequential phase: {args.sequential} requests", flush=True)
        seq_results, seq_time = await sequential(client, prompts[: args.sequential], args.max_tokens)
        before = (await client.get("/health")).json()
        print(f"concurrent phase: {args.clients} clients x {args.requests} requests", flush=True)
        con_results, con_time = await concurrent(client, prompts, args.clients, args.max_tokens)
        after = (await client.get("/health")).json()
    print(f"model {args.model!r}, max_tokens {args.max_tokens}, torch threads {args.threads}, "
          f"max_batch {args.max_batch}, {os.cpu_count()} CPUs")
    seq = summarise("sequential", seq_results, seq_time)
    con = summarise("concurrent", con_results, con_time)
    batches = after["batches"] - before["batches"]
    print(f"mean batch size {len(con_results) / max(batches, 1):.1f} (largest {after['max_batch_seen']}); "
          f"throughput ratio batched/sequential {con / seq:.2f}x")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--sequential", type=int, default=32, help="requests in the sequential phase")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=32)
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
    port = free_port()
    process = start_server(args, port)
    try:
        asyncio.run(asyncio.wait_for(main(args, port, process), args.total_timeout))
    finally:
        process.terminate()  # SIGTERM: uvicorn's graceful shutdown
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
