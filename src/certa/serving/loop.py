"""The server's feedback loop: every served answer recorded, labels taken, the calibration map refitted.

:class:`FeedbackLoop` joins the feedback store (:mod:`certa.serving.feedback`, SQLite) and the
online recalibrator (:mod:`certa.serving.recalibration`) for one served model and method:

- :meth:`FeedbackLoop.served` maps a raw confidence to the one a client sees (the current map, or
  the raw value when recalibration is off);
- :meth:`FeedbackLoop.record` stores the choices of one completion (served and raw confidence,
  abstention, optionally question and answer text) before the response goes out, so any id a
  client receives can be labelled;
- :meth:`FeedbackLoop.label` stores a label (durable when it returns) and, when ``every`` new
  labels have arrived, schedules a refit on a background thread: the refit reads the stored
  labels, fits on the raw confidences and swaps the map in atomically; answers served after the
  swap use it. Refits never run on fewer than the recalibrator's ``min_labels``.

Every method here blocks (SQLite, fitting): the HTTP layer calls them through a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..errors import InputError
from ..metrics import ece
from .feedback import FeedbackStore, Label, ServedAnswer
from .recalibration import OnlineRecalibrator

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ServedChoice:
    """One choice as it went out: the method's raw confidence, the served one, and whether it was withheld."""

    raw: float
    served: float
    abstained: bool
    answer: str


def parse_recalibrate(spec: str) -> OnlineRecalibrator:
    """``--recalibrate every=N[,min=M][,kind=isotonic|platt|beta][,max=K]`` → an :class:`OnlineRecalibrator`.

    ``every`` (required): refit after this many new labels; ``min`` (default ``max(every, 50)``):
    never fit on fewer labels; ``kind``: the map (default isotonic); ``max``: fit on the most
    recent labels only, to follow drift.
    """
    fields: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise InputError(f"--recalibrate {spec!r}: expected comma-separated key=value pairs, e.g. every=50,min=100")
        fields[key.strip()] = value.strip()
    unknown = set(fields) - {"every", "min", "kind", "max"}
    if unknown:
        raise InputError(f"--recalibrate: unknown key {sorted(unknown)[0]!r}; use every, min, kind, max")
    if "every" not in fields:
        raise InputError("--recalibrate needs every=N (refit after every N new labels)")

    def integer(key: str) -> int:
        try:
            return int(fields[key])
        except ValueError:
            raise InputError(f"--recalibrate: {key} must be an integer, got {fields[key]!r}") from None

    every = integer("every")
    min_labels = integer("min") if "min" in fields else max(every, 50)
    max_labels = integer("max") if "max" in fields else None
    return OnlineRecalibrator(fields.get("kind", "isotonic"), every=every, min_labels=min_labels,  # type: ignore[arg-type]
                              max_labels=max_labels)


class FeedbackLoop:
    """Records served answers and labels in ``store`` and keeps ``recalibrator`` fitted on them.

    ``store=None`` disables feedback (nothing recorded, labels refused); ``recalibrator=None`` serves
    raw confidences. ``store_text`` keeps each question and answer with its record (for labelling
    and audits); off, only ids, confidences and times are stored.
    """

    def __init__(self, store: FeedbackStore | None = None, recalibrator: OnlineRecalibrator | None = None, *,
                 method: str, model: str, store_text: bool = True):
        if recalibrator is not None and store is None:
            raise InputError("recalibration learns from stored labels: give the server a database (--db FILE)")
        self.store, self.recalibrator = store, recalibrator
        self.method, self.model, self.store_text = method, model, store_text
        self.record_failures = 0
        self._lock = threading.Lock()
        self._refitting = False
        self._last_trigger = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="certa-recalibrate") \
            if recalibrator is not None else None
        # One thread does every store call of the HTTP layer (the store serialises writes anyway), so the
        # server's thread count is fixed: a shared pool would grow with bursts of concurrent labels.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="certa-feedback") \
            if store is not None else None

    @property
    def enabled(self) -> bool:
        return self.store is not None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking method of this loop off the event loop, on the feedback thread."""
        if self._io is None:
            return fn(*args)
        return await asyncio.wrap_future(self._io.submit(fn, *args))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Fit on the labels already stored (a restarted server keeps its calibration)."""
        if self.recalibrator is not None and self.store is not None:
            self.recalibrator.refresh(self.store, method=self.method)
            self._last_trigger = self.store.label_count()

    def close(self) -> None:
        for executor in (self._executor, self._io):
            if executor is not None:
                executor.shutdown(wait=True)
        if self.store is not None:
            self.store.close()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no refit is running or scheduled (tests, shutdown); True when idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._refitting:
                    return True
            time.sleep(0.01)
        return False

    # ------------------------------------------------------------------ serving

    def served(self, raw: float) -> float:
        """The confidence a client sees for a raw one: the current map's value, in [0, 1]."""
        value = float(self.recalibrator.apply([raw])[0]) if self.recalibrator is not None else float(raw)
        return min(1.0, max(0.0, value))

    def record(self, completion_id: str, question: str, choices: Sequence[ServedChoice],
               created: float | None = None) -> None:
        """Store one completion's choices in one transaction (a no-op without a store)."""
        if self.store is None:
            return
        when = time.time() if created is None else created
        keep = self.store_text
        self.store.record_answers([
            ServedAnswer(completion_id, i, c.served, self.method, self.model, when, raw_confidence=c.raw,
                         question=question if keep else None, answer=c.answer if keep else None,
                         abstained=c.abstained)
            for i, c in enumerate(choices)])

    def label(self, completion_id: Any, choice: Any, correct: Any) -> Label:
        """Store a label (durable on return) and schedule a refit when one is due."""
        if self.store is None:
            raise InputError("feedback is not enabled on this server")
        label = self.store.record_label(completion_id, choice, correct)
        self._maybe_refit()
        return label

    # ------------------------------------------------------------------ recalibration

    def _due(self, total: int) -> bool:
        rec = self.recalibrator
        assert rec is not None
        if total - self._last_trigger >= rec.every:
            return True
        # the first fit comes as soon as the minimum is reached, not at the next multiple of `every`
        return rec.report().refits == 0 and total >= rec.min_labels and total > self._last_trigger

    def _maybe_refit(self) -> None:
        if self.recalibrator is None or self.store is None or self._executor is None:
            return
        total = self.store.label_count()
        with self._lock:
            if self._refitting or not self._due(total):
                return
            self._refitting = True
        self._executor.submit(self._refit_until_settled)

    def _refit_until_settled(self) -> None:
        assert self.recalibrator is not None and self.store is not None
        try:
            while True:
                total = self.store.label_count()
                if self.recalibrator.refresh(self.store, method=self.method):
                    logger.info("recalibrated on %d labels", self.recalibrator.report().n_labels_at_fit)
                with self._lock:
                    self._last_trigger = total
                    if not self._due(self.store.label_count()):
                        self._refitting = False
                        return
        except Exception:
            logger.exception("recalibration failed; the previous map stays in use")
            with self._lock:
                self._refitting = False

    # ------------------------------------------------------------------ reporting

    def report(self) -> dict[str, Any]:
        """Label counts, ECEs on the stored labels and the recalibrator's state (``GET /v1/calibration``)."""
        out: dict[str, Any] = {"feedback": self.enabled, "answers": None, "labels": None, "ece_raw": None,
                               "ece_served": None, "recalibration": None}
        if self.store is None:
            return out
        pairs = self.store.labelled(method=self.method)
        out.update(answers=self.store.answer_count(), labels=self.store.label_count())
        if len(pairs):
            out.update(ece_raw=_finite(ece(pairs.raw_confidence, pairs.correct)),
                       ece_served=_finite(ece(pairs.confidence, pairs.correct)))
        if self.recalibrator is not None:
            rec = self.recalibrator.report().to_dict()
            rec["ece_current_map"] = (_finite(ece(np.clip(self.recalibrator.apply(pairs.raw_confidence), 0, 1),
                                                  pairs.correct)) if len(pairs) else None)
            out["recalibration"] = rec
        return out


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
