"""Continuous batching for the server: a request joins the running decode loop at the next step.

The micro-batcher (:mod:`certa.serving.batcher`) runs one batch at a time, so a
request that arrives while a batch decodes waits for that batch's longest
answer. :class:`ContinuousScheduler` instead keeps one
:class:`certa.decoding.Decoder` stepping in a worker thread (iteration-level
scheduling, Yu et al. 2022, "Orca", OSDI): between two decoding steps it hands
waiting requests' rows to the decoder, which prefills them and joins them to
the batch, and a row that ends leaves it at once. When all rows of a request
have ended, its answers are built as the micro-batched path builds them — the
read-out hooks over the rows' KV cache (GrACE), stop strings, the served
method's confidence (:meth:`ConfidenceEngine.results`) — and its future is
resolved on the event loop.

The engine it drives needs ``lm``, ``answer_rows(request, key)`` (one
:class:`certa.generation.AnswerRow` per row to decode) and
``results(requests, generations)``: :class:`certa.serving.engine.ConfidenceEngine`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..decoding import Decoder, FinishedRow, run_hooks
from .batcher import BatchStats, QueueFullError, ShuttingDownError

if TYPE_CHECKING:
    from ..generation import AnswerRow
    from ..models import LoadedModel
    from ..records import Generation

logger = logging.getLogger(__name__)


class RowEngine(Protocol):
    """What the scheduler needs from an engine (:class:`certa.serving.engine.ConfidenceEngine` has it)."""

    lm: LoadedModel

    def answer_rows(self, request: Any, key: Any) -> list[AnswerRow]: ...

    def results(self, requests: Sequence[Any], generations: Sequence[Generation]) -> list[Any]: ...


@dataclass(eq=False)
class _Job:
    """A submitted request: its rows once admitted, the generations of those that ended, its future."""

    id: int
    request: Any
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    rows: list[AnswerRow] = field(default_factory=list)
    done: dict[int, Generation] = field(default_factory=dict)
    cancelled: bool = False


class ContinuousScheduler:
    """The :class:`~certa.serving.batcher.Scheduler` of a continuous-batching decode loop.

    ``max_rows`` rows decode together (a greedy request is one row whatever its
    ``n``; a sampled one has ``n``). Requests wait in a queue of at most
    ``max_queue`` (beyond it :class:`QueueFullError`, a 429) until the batch has
    room, and are admitted at the next step. A caller that goes away (its task
    cancelled: a client that hung up) has its rows dropped from the batch at the
    next step. ``stats`` records one "batch" per decoding step, of the rows it
    advanced. Call ``start()`` and ``stop()`` from the event loop that submits.
    """

    def __init__(self, engine: RowEngine, *, max_rows: int = 16, max_queue: int = 256):
        if max_rows < 1 or max_queue < 1:
            raise ValueError("max_rows and max_queue must be >= 1")
        self.engine = engine
        self.max_rows = max_rows
        self.max_queue = max_queue
        self.stats = BatchStats()
        self.decoder = Decoder(engine.lm, max_rows=max_rows)
        self._inbox: deque[_Job] = deque()   # submitted, not yet handed to the decoder
        self._jobs: dict[int, _Job] = {}     # handed to the decoder, not yet answered
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._stopping = False

    @property
    def queued(self) -> int:
        """Requests waiting for room in the batch."""
        return len(self._inbox)

    @property
    def running(self) -> int:
        """Requests whose rows are in the decoder (decoding or about to join)."""
        return len(self._jobs)

    @property
    def accepting(self) -> bool:
        """Started, not stopping, and the decode loop still running."""
        return self._accepting and self._alive()

    def start(self) -> None:
        self._accepting = True
        self._thread = threading.Thread(target=self._work, name="certa-decode-loop", daemon=True)
        self._thread.start()

    async def submit(self, request: Any) -> Any:
        """Queue one request and wait for its result; raises at once when the queue is full or stopping."""
        if not self._accepting:
            raise ShuttingDownError("the server is shutting down")
        loop = asyncio.get_running_loop()
        job = _Job(next(self._ids), request, loop.create_future(), loop)
        with self._cond:
            if len(self._inbox) >= self.max_queue:
                raise QueueFullError(f"the request queue is full ({self.max_queue} waiting)")
            self._inbox.append(job)
            self._cond.notify()
        job.future.add_done_callback(lambda fut: self._cancel(job) if fut.cancelled() else None)
        return await job.future

    async def stop(self, timeout: float = 60.0) -> None:
        """Refuse new requests, let the submitted ones finish (up to ``timeout`` s), fail the rest, stop."""
        self._accepting = False
        deadline = time.monotonic() + timeout
        while (self._inbox or self._jobs) and time.monotonic() < deadline and self._alive():
            await asyncio.sleep(0.02)
        if self._inbox or self._jobs:
            logger.warning("shutdown: %d requests dropped after %.0f s", len(self._inbox) + len(self._jobs), timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        self._fail_all(ShuttingDownError("the server shut down before this request was answered"))

    # --- the worker thread ----------------------------------------------------------------------

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _work(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self._inbox and self.decoder.idle:
                        self._cond.wait()
                    if self._stopping:
                        return
                    admitted = self._take_admissible()
                self._admit(admitted)
                if not self.decoder.idle:
                    self._step()
        except BaseException as exc:  # noqa: BLE001 — whatever kills the loop fails the waiting callers
            logger.exception("the decode loop stopped")
            self._accepting = False
            self._fail_all(exc if isinstance(exc, Exception) else RuntimeError("the decode loop stopped"))

    def _take_admissible(self) -> list[_Job]:
        """Waiting jobs, oldest first, while the decoder has room (one job at least when it is empty)."""
        taken: list[_Job] = []
        room = self.max_rows - self.decoder.running - self.decoder.queued
        while self._inbox and (room > 0 or (not taken and self.decoder.idle)):
            job = self._inbox.popleft()
            taken.append(job)
            room -= job.request.rows
        return taken

    def _admit(self, jobs: list[_Job]) -> None:
        for job in jobs:
            try:
                rows = self.engine.answer_rows(job.request, job.id)
            except Exception as exc:  # a request the model cannot take (prompt, settings) fails alone
                _resolve(job, exc=exc)
                continue
            with self._cond:
                if job.cancelled:
                    continue
                try:
                    self.decoder.extend(row.request for row in rows)
                except Exception as exc:  # a row the decoder refuses fails its request, not the loop
                    _resolve(job, exc=exc)
                    continue
                job.rows = rows
                self._jobs[job.id] = job

    def _step(self) -> None:
        try:
            finished = self.decoder.step()
        except Exception as exc:
            # The decoder dropped the rows in flight (out of memory, ...): their requests fail, the rest go on.
            logger.exception("decoding step failed")
            lost = {key[0] for key in self.decoder.lost_keys}
            self._fail([self._jobs[i] for i in lost if i in self._jobs], exc)
            return
        self.stats.record(self.decoder.running + len(finished))
        live = [row for row in finished if row.key[0] in self._jobs and not self._jobs[row.key[0]].cancelled]
        if live:
            self._finish_rows(live)
        self._forget_cancelled()

    def _finish_rows(self, rows: list[FinishedRow]) -> None:
        """Read the hooks over the ended rows, file their generations; answer the requests now whole."""
        jobs = {row.key[0]: self._jobs[row.key[0]] for row in rows}
        try:
            hooks = next(iter(jobs.values())).rows[0].hooks
            start = time.perf_counter()
            values = run_hooks(self.engine.lm, hooks, rows)  # every row kept its cache when there are hooks
            share = (time.perf_counter() - start) / len(rows)
            for j, row in enumerate(rows):
                job = jobs[row.key[0]]
                choice = row.key[1]
                job.done[choice] = job.rows[choice].generation(
                    self.engine.lm, row, {name: v[j] for name, v in values.items()}, share)
        except Exception as exc:
            logger.exception("reading %d finished rows failed", len(rows))
            self._fail(list(jobs.values()), exc)
            return
        whole = [job for job in jobs.values() if len(job.done) == len(job.rows)]
        if not whole:
            return
        try:
            results = self._results(whole)
        except Exception:  # one request's answers failed to score: score each alone, fail only the culprit
            logger.exception("scoring %d finished requests together failed; scoring each alone", len(whole))
            for job in whole:
                try:
                    self._answer(job, self._results([job])[0])
                except Exception as exc:
                    self._fail([job], exc)
            return
        for job, result in zip(whole, results, strict=True):
            self._answer(job, result)

    def _results(self, jobs: list[_Job]) -> list[Any]:
        return self.engine.results([job.request for job in jobs],
                                   [job.done[c] for job in jobs for c in range(len(job.rows))])

    def _answer(self, job: _Job, result: Any) -> None:
        with self._cond:
            self._jobs.pop(job.id, None)
        _resolve(job, result=result)

    # --- cancelling and failing -------------------------------------------------------------------

    def _cancel(self, job: _Job) -> None:
        """The caller went away: drop its request from the queue or its rows from the batch."""
        with self._cond:
            job.cancelled = True
            if job in self._inbox:
                self._inbox.remove(job)
            elif job.id in self._jobs:
                for choice in range(len(job.rows)):
                    self.decoder.cancel((job.id, choice))

    def _forget_cancelled(self) -> None:
        with self._cond:
            for job_id in [i for i, job in self._jobs.items() if job.cancelled]:
                del self._jobs[job_id]

    def _fail(self, jobs: list[_Job], exc: BaseException) -> None:
        with self._cond:
            for job in jobs:
                self._jobs.pop(job.id, None)
                for choice in range(len(job.rows)):
                    self.decoder.cancel((job.id, choice))
        for job in jobs:
            _resolve(job, exc=exc)

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            jobs = list(self._inbox) + list(self._jobs.values())
            self._inbox.clear()
        self._fail(jobs, exc)


def _resolve(job: _Job, *, result: Any = None, exc: BaseException | None = None) -> None:
    """Set the job's future from any thread (a caller that has gone away is skipped)."""

    def settle() -> None:
        if job.future.done():
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the event loop has closed: nobody is waiting any more
        pass
