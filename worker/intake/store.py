"""Storing verified webhooks in the inbox: one commit each, or grouped into shared commits.

The one promise of the intake (an event answered 2xx is committed in the inbox) rests here:
a store's future resolves only after the commit that holds its event.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue as queue_mod
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool

from reconcile import inbox

__all__ = ["BatchStore", "DirectStore"]

SOURCE = "webhook"
DEFAULT_BATCH_WRITERS = 2


def _now() -> datetime:
    return datetime.now(UTC)


@contextlib.contextmanager
def _one_statement(engine: Engine) -> Iterator[Connection]:
    """A connection for a single INSERT that commits by itself.

    PostgreSQL: autocommit, so the statement is its own transaction, committed (durably,
    with synchronous_commit) by the time execute returns; that saves the BEGIN and COMMIT
    round trips, a third of a webhook's CPU.  SQLite keeps its explicit BEGIN IMMEDIATE."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")
    else:
        with engine.begin() as conn:
            yield conn


class DirectStore:
    """One transaction per webhook."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _store(self, event: Mapping[str, Any]) -> bool:
        with _one_statement(self.engine) as conn:
            return inbox.store_event(conn, event, source=SOURCE, now=_now())

    async def store(self, event: Mapping[str, Any]) -> bool:
        return await run_in_threadpool(self._store, event)

    def close(self) -> None:
        pass


class BatchStore:
    """Group concurrent webhooks into one commit; each is answered after *its* commit.

    Writers block on the queue for a first event, then take whatever else is already
    waiting (up to ``max_batch``), so a lone webhook is never delayed waiting for company:
    batches form only from requests that arrived while the previous commit was running.
    Two writers let one batch gather while the other is in its fsync."""

    _STOP = object()

    def __init__(
        self, engine: Engine, *, max_batch: int = 100, writers: int = DEFAULT_BATCH_WRITERS
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.n_writers = writers
        self._q: queue_mod.SimpleQueue[Any] = queue_mod.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def _ensure_started(self) -> None:
        if self._threads:
            return
        with self._lock:
            if self._threads or self._closed:
                return
            for i in range(self.n_writers):
                thread = threading.Thread(target=self._run, name=f"intake-writer-{i}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def submit(self, event: Mapping[str, Any]) -> concurrent.futures.Future[bool]:
        if self._closed:
            raise RuntimeError("intake store is closed")
        self._ensure_started()
        future: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._q.put((event, future))
        return future

    async def store(self, event: Mapping[str, Any]) -> bool:
        return await asyncio.wrap_future(self.submit(event))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, []
        for _ in threads:
            self._q.put(self._STOP)
        for thread in threads:
            thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is self._STOP:
                return
            batch = [item]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._q.get_nowait()
                except queue_mod.Empty:
                    break
                if item is self._STOP:
                    stop = True
                    break
                batch.append(item)
            try:
                self._write(batch)
            except BaseException as exc:
                # Never leave a request waiting on a future nobody will resolve.
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            if stop:
                return

    def _write(
        self, batch: list[tuple[Mapping[str, Any], concurrent.futures.Future[bool]]]
    ) -> None:
        try:
            with _one_statement(self.engine) as conn:
                new = inbox.store_events(conn, [e for e, _ in batch], source=SOURCE, now=_now())
        except (OperationalError, PoolTimeout) as exc:
            for _, future in batch:
                future.set_exception(exc)
            return
        except Exception:
            # Something in one row (not the connection) failed the statement: store them one
            # by one so a single bad event cannot take its neighbours down with it.
            self._write_each(batch)
            return
        answered: set[str] = set()
        for event, future in batch:
            event_id = event["id"]
            # Two deliveries of one event in the same batch: the first is the new one.
            future.set_result(event_id in new and event_id not in answered)
            answered.add(event_id)

    def _write_each(
        self, batch: list[tuple[Mapping[str, Any], concurrent.futures.Future[bool]]]
    ) -> None:
        for event, future in batch:
            try:
                with _one_statement(self.engine) as conn:
                    result = inbox.store_event(conn, event, source=SOURCE, now=_now())
            except Exception as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
