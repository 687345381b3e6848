"""Micro-batching: many concurrent requests, one batched model call at a time.

Requests wait in a bounded asyncio queue. A single background task takes the
first waiting request, keeps collecting for up to ``batch_wait_ms`` or until
``max_batch`` requests are in hand, and runs the batch function in one worker
thread — the model is not thread-safe, and one thread also keeps the event
loop free to accept and validate new requests while a batch runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

logger = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")


class QueueFullError(RuntimeError):
    """The request queue is at capacity; the client should retry later."""


class ShuttingDownError(RuntimeError):
    """The server is draining and no longer accepts new requests."""


@dataclass
class BatchStats:
    """What the worker has done so far (for /health, tests and benchmarks)."""

    batches: int = 0
    requests: int = 0
    max_batch_seen: int = 0
    sizes: list[int] = field(default_factory=list)

    def record(self, size: int) -> None:
        self.batches += 1
        self.requests += size
        self.max_batch_seen = max(self.max_batch_seen, size)
        if len(self.sizes) < 10_000:  # bounded: a long-running server must not grow this forever
            self.sizes.append(size)


class Scheduler(Protocol[Req, Res]):
    """What the app needs from whatever runs requests on the model: the micro-batcher below, or an
    engine's own scheduler (``Engine.make_scheduler``), e.g. a continuous-batching decode loop where a
    request joins the running batch at the next decoding step.

    ``submit`` raises :class:`QueueFullError` (→ 429) or :class:`ShuttingDownError` (→ 503);
    ``queued`` and ``stats`` feed ``/health``, which answers 503 while ``accepting`` is false (stopping,
    or the worker died).
    """

    stats: BatchStats

    @property
    def queued(self) -> int: ...

    @property
    def accepting(self) -> bool: ...

    def start(self) -> None: ...

    async def submit(self, request: Req) -> Res: ...

    async def stop(self, timeout: float = 60.0) -> None: ...


class MicroBatcher(Generic[Req, Res]):
    """Collects requests into batches for ``run_batch(requests) -> results`` (same order).

    Call ``start()`` and ``stop()`` from the event loop that will ``submit``.
    """

    def __init__(self, run_batch: Callable[[Sequence[Req]], list[Res]], *, max_queue: int = 256,
                 max_batch: int = 16, batch_wait_ms: float = 10.0):
        if max_queue < 1 or max_batch < 1 or batch_wait_ms < 0:
            raise ValueError("max_queue and max_batch must be >= 1 and batch_wait_ms >= 0")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.batch_wait = batch_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: asyncio.Queue[tuple[Req, asyncio.Future[Res]]] = asyncio.Queue(maxsize=max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="certa-model")
        self._worker: asyncio.Task[None] | None = None
        self._accepting = False

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def accepting(self) -> bool:
        """Started, not stopping, and its worker still running."""
        return self._accepting and self._worker is not None and not self._worker.done()

    def start(self) -> None:
        self._accepting = True
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="certa-batcher")

    async def submit(self, request: Req) -> Res:
        """Queue one request and wait for its result; raises at once when full or stopping."""
        if not self._accepting:
            raise ShuttingDownError("the server is shutting down")
        future: asyncio.Future[Res] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((request, future))
        except asyncio.QueueFull:
            raise QueueFullError(f"the request queue is full ({self._queue.maxsize} waiting)") from None
        return await future

    async def stop(self, timeout: float = 60.0) -> None:
        """Refuse new requests, finish the queued ones (up to ``timeout`` s), then stop the worker."""
        self._accepting = False
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except asyncio.TimeoutError:
            logger.warning("shutdown: %d queued requests dropped after %.0f s", self.queued, timeout)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._fail_queued(ShuttingDownError("the server shut down before this request ran"))
        await asyncio.to_thread(self._executor.shutdown, wait=True)  # a batch still running must not block the loop

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            try:
                await self._execute(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _collect(self) -> list[tuple[Req, asyncio.Future[Res]]]:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.batch_wait
        while len(batch) < self.max_batch:
            # Take whatever is already waiting without sleeping, then wait out the window.
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _execute(self, batch: list[tuple[Req, asyncio.Future[Res]]]) -> None:
        live = [(req, fut) for req, fut in batch if not fut.done()]  # callers that hung up are skipped
        if not live:
            return
        self.stats.record(len(live))
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, [req for req, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} requests")
        except Exception as exc:  # one failing batch must not kill the worker
            logger.exception("batch of %d requests failed", len(live))
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), result in zip(live, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    def _fail_queued(self, exc: Exception) -> None:
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            self._queue.task_done()
            if not fut.done():
                fut.set_exception(exc)
