"""Handing committed event ids to the queue, off the request path."""

from __future__ import annotations

import queue as queue_mod
import threading
import time
from collections.abc import Callable
from typing import Any

from reconcile.redact import redact
from worker import metrics
from worker.logs import get_logger

__all__ = ["Enqueue", "Publisher"]

log = get_logger(__name__)

Enqueue = Callable[[str], None]


class Publisher:
    """Hands committed event ids to the queue from a thread of its own.

    A request only drops its id here (after its commit) and is answered at once: waiting
    for the broker would add a thread hop and a network round trip to every webhook, and a
    broker failure changes nothing in the answer anyway.  The thread sends whatever ids
    have gathered in one go.  When a send fails, ids are counted and logged as not
    enqueued and, for a second, further ids are not even tried (a dead broker would
    otherwise hold each batch for its publish retries while the backlog grows): all of
    them are committed ``pending`` rows that ``inbox.redrive`` re-sends."""

    _STOP = object()
    BACKOFF = 1.0

    def __init__(
        self,
        *,
        send_one: Enqueue | None = None,
        send_many: Callable[[list[str]], None] | None = None,
        max_batch: int = 200,
    ) -> None:
        if (send_one is None) == (send_many is None):
            raise ValueError("give exactly one of send_one, send_many")
        self.send_one, self.send_many, self.max_batch = send_one, send_many, max_batch
        self._q: queue_mod.SimpleQueue[Any] = queue_mod.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0

    def put(self, event_id: str) -> None:
        self.put_many([event_id])

    def put_many(self, event_ids: list[str]) -> None:
        """Hand over the ids of committed rows (one queue entry and one wake-up for all)."""
        if not event_ids:
            return
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="intake-publisher", daemon=True
                    )
                    self._thread.start()
        self._q.put(event_ids)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every id put so far has been sent (or counted as failed)."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._q.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._q.put(self._STOP)
            thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            ids: list[str] = []
            marker: Any = self._q.get()
            while isinstance(marker, list):
                ids.extend(marker)
                if len(ids) >= self.max_batch:
                    marker = None
                    break
                try:
                    marker = self._q.get_nowait()
                except queue_mod.Empty:
                    marker = None
            if ids:
                self._send(ids)
            if isinstance(marker, threading.Event):
                marker.set()
            elif marker is self._STOP:
                return

    def _send(self, ids: list[str]) -> None:
        if time.monotonic() < self._down_until:
            self._failed(ids, None)
            return
        if self.send_many is not None:
            try:
                self.send_many(ids)
            except Exception as exc:
                self._failed(ids, exc)
            return
        assert self.send_one is not None
        for n, event_id in enumerate(ids):
            try:
                self.send_one(event_id)
            except Exception as exc:
                self._failed(ids[n:], exc)
                return

    def _failed(self, ids: list[str], exc: Exception | None) -> None:
        metrics.count_enqueue_failure(len(ids))
        if exc is not None:
            self._down_until = time.monotonic() + self.BACKOFF
        log.warning(
            "enqueue failed; events stay pending for redrive",
            events=len(ids),
            first_event_id=ids[0],
            error=redact(f"{type(exc).__name__}: {exc}")[:300] if exc else "broker backoff",
        )
