"""Soak test for ``certa serve``: minutes of mixed traffic at a bounded rate, then the server's health.

Starts ``certa serve`` (``python -m certa.cli serve``) in a child process on 127.0.0.1 with a
feedback database, then sends a mix of requests at ``--rate`` requests per second (at most
``--max-in-flight`` open at once) for ``--minutes``:

    chat          a chat completion (greedy)                           -> 200, a confidence in [0, 1]
    stream        a streamed chat completion, read to [DONE]           -> 200, the final chunk's confidence
    sampled       n=3 at temperature 1                                  -> 200, three choices, three confidences
    completion    a legacy completion with a stop sequence              -> 200
    feedback      a label for an answer served earlier                  -> 200
    bad           malformed JSON, unknown model, n too large, wrong types, unknown label id -> the documented 4xx
    drop_stream   a stream the client closes after its first event      -> (the server must not mind)
    drop_wait     a request the client abandons before the answer       -> (likewise)

and prints requests served, errors by kind (anything but the expected outcome), p50/p95 latency per
kind, the server's RSS at start, after warm-up, at the middle and the end, and its thread and
open-file-descriptor counts at the same points; then stops the server with SIGTERM and reports
how it exited. Targets (issue 13 §5): 0 unexpected errors, RSS growth < 10% after warm-up, no
growth in threads or descriptors.

    python benchmarks/server_soak.py                          # 20 minutes, bundled default model
    python benchmarks/server_soak.py --model PATH --minutes 3 --rate 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import httpx
from common import wait_healthy  # benchmarks/common.py, beside this script

HOST = "127.0.0.1"  # never anything but loopback
MODEL = "soak"
KINDS = {"chat": 30, "stream": 18, "sampled": 10, "completion": 8, "feedback": 10, "bad": 12, "drop_stream": 7,
         "drop_wait": 5}
QUESTIONS = ["What is {a} + {b}?", "Name a colour that starts with {c}.", "Is {a} bigger than {b}?",
             "Spell the letter {c}.", "What comes after {a}?"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, db: str) -> subprocess.Popen:
    """``certa serve`` as a user runs it, in its own interpreter."""
    command = [sys.executable, "-m", "certa.cli", "serve", "--model", args.model, "--model-name", MODEL,
               "--port", str(port), "--max-batch", str(args.max_batch), "--db", db]
    env = {**os.environ, "CERTA_NUM_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class Sample:
    at: float
    rss: int
    threads: int
    fds: int


def sample(process) -> Sample:
    return Sample(time.monotonic(), process.memory_info().rss, process.num_threads(), process.num_fds())


@dataclass
class Tally:
    sent: Counter = field(default_factory=Counter)
    ok: Counter = field(default_factory=Counter)
    errors: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    served_ids: list[str] = field(default_factory=list)

    def error(self, kind: str, what: str) -> None:
        self.errors[kind][what[:100]] += 1


def question(rng: random.Random) -> str:
    return rng.choice(QUESTIONS).format(a=rng.randint(0, 99), b=rng.randint(0, 99), c=rng.choice("ABCDEFGH"))


def check_choices(body: dict, n: int) -> str | None:
    choices = body.get("choices") or []
    if len(choices) != n:
        return f"{len(choices)} choices for n={n}"
    if not all(0.0 <= c.get("confidence", -1) <= 1.0 for c in choices):
        return "confidence missing or outside [0, 1]"
    return None


BAD_REQUESTS = [
    ("malformed JSON", b'{"model": "soak", "messages": [', 400),
    ("unknown model", {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404),
    ("n too large", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 99}, 400),
    ("wrong type", {"model": MODEL, "messages": "hi"}, 400),
    ("temperature out of range", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                  "temperature": 7}, 400),
]


async def one(kind: str, client: httpx.AsyncClient, rng: random.Random, tally: Tally, max_tokens: int) -> None:
    start = time.perf_counter()
    chat = {"model": MODEL, "messages": [{"role": "user", "content": question(rng)}], "max_tokens": max_tokens}
    problem: str | None = None
    try:
        if kind == "chat":
            r = await client.post("/v1/chat/completions", json=chat)
            problem = f"HTTP {r.status_code}" if r.status_code != 200 else check_choices(r.json(), 1)
            if problem is None:
                tally.served_ids.append(r.json()["id"])
        elif kind == "sampled":
            r = await client.post("/v1/chat/completions", json={**chat, "n": 3, "temperature": 1.0})
            problem = f"HTTP {r.status_code}" if r.status_code != 200 else check_choices(r.json(), 3)
        elif kind == "completion":
            r = await client.post("/v1/completions", json={"model": MODEL, "prompt": question(rng),
                                                           "max_tokens": max_tokens, "stop": ["\n"]})
            problem = f"HTTP {r.status_code}" if r.status_code != 200 else check_choices(r.json(), 1)
        elif kind == "stream":
            async with client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as r:
                if r.status_code != 200:
                    problem = f"HTTP {r.status_code}"
                else:
                    events = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
                    if not events or events[-1] != "[DONE]":
                        problem = "stream did not end with [DONE]"
                    else:
                        final = json.loads(events[-2])["choices"][0]
                        if not 0.0 <= final.get("confidence", -1) <= 1.0:
                            problem = "final chunk without a confidence"
        elif kind == "feedback":
            if not tally.served_ids:
                return await one("chat", client, rng, tally, max_tokens)
            cid = tally.served_ids.pop(rng.randrange(len(tally.served_ids)))
            r = await client.post("/v1/feedback", json={"id": cid, "choice": 0, "correct": rng.random() < 0.3})
            problem = f"HTTP {r.status_code}: {r.text[:60]}" if r.status_code != 200 else None
        elif kind == "bad":
            name, body, status = rng.choice(BAD_REQUESTS + [("unknown label id", None, 404)])
            if body is None:
                r = await client.post("/v1/feedback", json={"id": "chatcmpl-none", "correct": True})
            elif isinstance(body, bytes):
                r = await client.post("/v1/chat/completions", content=body,
                                      headers={"content-type": "application/json"})
            else:
                r = await client.post("/v1/chat/completions", json=body)
            error = r.json().get("error", {}) if r.headers.get("content-type", "").startswith("application/json") else {}
            if r.status_code != status or not error.get("message"):
                problem = f"{name}: HTTP {r.status_code}, expected {status}"
        elif kind == "drop_stream":
            async with client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as r:
                async for _ in r.aiter_lines():
                    break               # hang up after the first line
        elif kind == "drop_wait":
            try:
                await client.post("/v1/chat/completions", json=chat, timeout=0.05)   # gone before the answer
            except httpx.TimeoutException:
                pass
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    tally.sent[kind] += 1
    if problem:
        tally.error(kind, problem)
    else:
        tally.ok[kind] += 1
        if not kind.startswith("drop"):
            tally.latency[kind].append(time.perf_counter() - start)


async def soak(args: argparse.Namespace, port: int, server: subprocess.Popen) -> tuple[Tally, dict[str, Sample]]:
    import psutil

    proc = psutil.Process(server.pid)
    tally, samples = Tally(), {}
    rng = random.Random(args.seed)
    kinds, weights = list(KINDS), list(KINDS.values())
    limits = httpx.Limits(max_connections=args.max_in_flight * 2, max_keepalive_connections=args.max_in_flight)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=10) as probe:
        await wait_healthy(probe, server, args.startup_timeout)
    await asyncio.sleep(1.0)
    samples["start"] = sample(proc)         # up, no client connected
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=args.timeout, limits=limits) as client:
        await one("chat", client, rng, Tally(), args.max_tokens)          # first answer, not counted
        duration = args.minutes * 60
        warmup = min(60.0, 0.1 * duration)
        began = time.monotonic()
        in_flight = asyncio.Semaphore(args.max_in_flight)
        tasks: set[asyncio.Task] = set()
        marks = {"after warm-up": began + warmup, "middle": began + duration / 2}

        async def guarded(kind: str) -> None:
            async with in_flight:
                await one(kind, client, rng, tally, args.max_tokens)

        k = 0
        while (now := time.monotonic()) < began + duration:
            for name, at in list(marks.items()):
                if now >= at:
                    samples[name] = sample(proc)
                    del marks[name]
            if server.poll() is not None:
                raise SystemExit(f"the server died (exit {server.returncode}) after {now - began:.0f} s")
            task = asyncio.create_task(guarded(rng.choices(kinds, weights)[0]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
            await asyncio.sleep(max(0.0, began + k / args.rate - time.monotonic()))   # bounded, even pacing
            if k % 50 == 0:
                print(f"  {now - began:5.0f} s: {sum(tally.sent.values())} done, "
                      f"{sum(sum(c.values()) for c in tally.errors.values())} errors, {len(tasks)} open", flush=True)
        await asyncio.gather(*tasks)
    await asyncio.sleep(2.0)                # every connection closed: let the server drop what they held
    samples["end"] = sample(proc)
    return tally, samples


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(args: argparse.Namespace, tally: Tally, samples: dict[str, Sample], shutdown: str) -> int:
    sent, ok = sum(tally.sent.values()), sum(tally.ok.values())
    errors = sum(sum(c.values()) for c in tally.errors.values())
    print(f"\nsoak: {args.minutes:g} min of mixed traffic at {args.rate:g} req/s (at most {args.max_in_flight} in flight)"
          f" against certa serve --model {args.model} ({args.threads} torch thread(s), max_tokens {args.max_tokens},"
          f" {os.cpu_count()} CPUs, load average {', '.join(f'{x:.1f}' for x in os.getloadavg())})")
    print(f"requests: {sent} sent, {ok} as expected, {errors} unexpected")
    print(f"{'kind':<12}{'sent':>6}{'ok':>6}{'p50 s':>9}{'p95 s':>9}")
    for kind in KINDS:
        lat = tally.latency.get(kind) or []
        p50 = f"{statistics.median(lat):9.2f}" if lat else f"{'-':>9}"
        p95 = f"{pct(lat, 0.95):9.2f}" if lat else f"{'-':>9}"
        print(f"{kind:<12}{tally.sent[kind]:>6}{tally.ok[kind]:>6}{p50}{p95}")
    all_lat = [x for v in tally.latency.values() for x in v]
    if all_lat:
        print(f"{'all':<12}{'':>12}{statistics.median(all_lat):9.2f}{pct(all_lat, 0.95):9.2f}")
    print("errors by kind: " + ("none" if not errors else ""))
    for kind, counts in tally.errors.items():
        for what, n in counts.most_common(5):
            print(f"  {kind}: {n} x {what}")
    order = [name for name in ("start", "after warm-up", "middle", "end") if name in samples]
    print("server    " + "".join(f"{name:>15}" for name in order))
    print("RSS MiB   " + "".join(f"{samples[n].rss / 2**20:15.1f}" for n in order))
    print("threads   " + "".join(f"{samples[n].threads:15d}" for n in order))
    print("open fds  " + "".join(f"{samples[n].fds:15d}" for n in order))
    # RSS and threads grow during warm-up (allocator pools, lazily started worker threads), so they are
    # compared from there; descriptors from the start, the other time no client connection is open.
    base = samples.get("after warm-up", samples["start"])
    growth = samples["end"].rss / base.rss - 1
    threads, fds = samples["end"].threads - base.threads, samples["end"].fds - samples["start"].fds
    print(f"RSS after warm-up -> end {growth:+.1%}; threads after warm-up -> end {threads:+d}; "
          f"open fds start -> end (no client connected at either) {fds:+d}")
    print(f"shutdown: {shutdown}")
    verdicts = {"0 unexpected errors": errors == 0, "RSS growth < 10%": growth < 0.10,
                "no thread growth": threads <= 0, "no descriptor growth": fds <= 0}
    print("targets: " + ", ".join(f"{k}: {'ok' if v else 'MISSED'}" for k, v in verdicts.items()))
    return 0 if all(verdicts.values()) else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=1.0, help="requests started per second")
    parser.add_argument("--max-in-flight", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in the server")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, s")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    try:
        import psutil  # noqa: F401
    except ModuleNotFoundError:
        raise SystemExit("the soak test reads the server's RSS, threads and descriptors with psutil: "
                         "pip install psutil") from None
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="certa-soak-") as tmp:
        server = start_server(args, port, os.path.join(tmp, "feedback.db"))
        try:
            tally, samples = asyncio.run(soak(args, port, server))
        finally:
            stopped = time.monotonic()
            server.send_signal(signal.SIGTERM)      # uvicorn's graceful shutdown
            try:
                code = server.wait(90)
                # uvicorn shuts down gracefully, then re-raises the signal it caught: -15 is a clean stop
                how = "graceful, then the signal re-raised" if code == -signal.SIGTERM else "exit code"
                shutdown = f"SIGTERM -> {how} ({code}) in {time.monotonic() - stopped:.1f} s"
            except subprocess.TimeoutExpired:
                server.kill()
                shutdown = "SIGTERM ignored for 90 s; killed"
        return report(args, tally, samples, shutdown)


if __name__ == "__main__":
    sys.exit(main())
