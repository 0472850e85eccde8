"""Storing verified webhooks in the inbox: one commit each, or grouped into shared commits.

The one promise of the intake (an event answered 2xx is committed in the inbox) rests here:
a store answers ``store()`` only after the commit that holds its event, and hands the ids
of the new pending rows to ``on_commit`` (the publisher) after that commit, never before.
Each event travels with its body as received, which is what the inbox stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue as queue_mod
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from reconcile import inbox

__all__ = ["BatchStore", "OnCommit", "Store", "make_store"]

SOURCE = "webhook"
DEFAULT_BATCH_WRITERS = 2
DIRECT_WRITERS = 16
# A writer keeps its connection while events keep coming (no pool checkout, no pre-ping
# round trip per batch) and gives it back after this long without any, so that a
# connection the server dropped meanwhile is pinged and replaced at the next checkout.
WRITER_IDLE_SECONDS = 1.0

OnCommit = Callable[[list[str]], None]
_Item = tuple[Mapping[str, Any], bytes, "asyncio.Future[bool]", asyncio.AbstractEventLoop]


def _now() -> datetime:
    return datetime.now(UTC)


def _pending(event: Mapping[str, Any]) -> bool:
    return inbox.initial_status(event) == "pending"


@contextlib.contextmanager
def _transaction(conn: Connection) -> Iterator[Connection]:
    """One transaction on ``conn``, committed when the block ends.

    PostgreSQL: the connection is in autocommit, so the single INSERT is its own
    transaction, committed (durably, with synchronous_commit) by the time execute
    returns; that saves the BEGIN and COMMIT round trips.  SQLite keeps its explicit
    BEGIN IMMEDIATE."""
    if conn.dialect.name == "postgresql":
        yield conn
    else:
        with conn.begin():
            yield conn


def _connect(engine: Engine) -> Connection:
    conn = engine.connect()
    if engine.dialect.name == "postgresql":
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
    return conn


class BatchStore:
    """Group concurrent webhooks into one commit; each is answered after *its* commit.

    Writers block on the queue for a first event, then take whatever else is already
    waiting (up to ``max_batch``), so a lone webhook is never delayed waiting for company:
    batches form only from requests that arrived while the previous commit was running.
    Two writers let one batch gather while the other is in its fsync.  A batch is settled
    on the event loop with one wake-up, not one per webhook."""

    _STOP = object()

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 100,
        writers: int = DEFAULT_BATCH_WRITERS,
        on_commit: OnCommit | None = None,
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.n_writers = writers
        self.on_commit = on_commit
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

    async def store(self, event: Mapping[str, Any], raw: bytes) -> bool:
        if self._closed:
            raise RuntimeError("intake store is closed")
        self._ensure_started()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._q.put((event, raw, future, loop))
        return await future

    def close(self) -> None:
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, []
        for _ in threads:
            self._q.put(self._STOP)
        for thread in threads:
            thread.join(timeout=10)

    def _run(self) -> None:
        conn: Connection | None = None
        try:
            while True:
                try:
                    item = self._q.get(timeout=WRITER_IDLE_SECONDS if conn is not None else None)
                except queue_mod.Empty:
                    conn = self._release(conn)
                    continue
                if item is self._STOP:
                    return
                batch: list[_Item] = [item]
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
                    conn = self._write(conn, batch)
                except BaseException as exc:
                    # Never leave a request waiting on a future nobody will resolve.
                    conn = self._release(conn)
                    _settle(batch, [exc] * len(batch))
                    if not isinstance(exc, Exception):
                        raise
                if stop:
                    return
        finally:
            self._release(conn)

    @staticmethod
    def _release(conn: Connection | None) -> None:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _write(self, conn: Connection | None, batch: list[_Item]) -> Connection | None:
        """Store ``batch`` and settle every request in it; the connection to keep."""
        events = [item[0] for item in batch]
        raws = [item[1] for item in batch]
        kept = conn is not None
        try:
            try:
                if conn is None:
                    conn = _connect(self.engine)
                with _transaction(conn):
                    new = inbox.store_events(conn, events, source=SOURCE, now=_now(), raw=raws)
            except OperationalError:
                if not kept:
                    raise
                # A kept connection that the server dropped (a restart, a fail-over, an
                # idle timeout): once more on a fresh, pinged one.  Safe whether or not the
                # first attempt committed: the INSERT ignores ids already there (they
                # answer "duplicate" and stay pending for redrive, as after a 503).
                conn = self._release(conn)
                conn = _connect(self.engine)
                with _transaction(conn):
                    new = inbox.store_events(conn, events, source=SOURCE, now=_now(), raw=raws)
        except (OperationalError, PoolTimeout) as exc:
            # The database is gone: every request of the batch gets the error (503), and
            # the next batch starts from a fresh, pinged connection.
            _settle(batch, [exc] * len(batch))
            return self._release(conn)
        except Exception:
            # Something in one row (not the connection) failed the statement: store them one
            # by one so a single bad event cannot take its neighbours down with it.
            self._write_each(batch)
            return conn
        results: list[Any] = []
        pending: list[str] = []
        answered: set[str] = set()
        for event in events:
            event_id = event["id"]
            # Two deliveries of one event in the same batch: the first is the new one.
            created = event_id in new and event_id not in answered
            answered.add(event_id)
            results.append(created)
            if created and _pending(event):
                pending.append(event_id)
        if pending and self.on_commit is not None:
            self.on_commit(pending)
        _settle(batch, results)
        return conn

    def _write_each(self, batch: list[_Item]) -> None:
        results: list[Any] = []
        pending: list[str] = []
        for event, raw, _, _ in batch:
            try:
                with _connect(self.engine) as one, _transaction(one):
                    # A plain INSERT: it also takes what the set-based one could not.
                    created = inbox.store_event(one, event, source=SOURCE, now=_now(), raw=raw)
            except Exception as exc:
                results.append(exc)
            else:
                results.append(created)
                if created and _pending(event):
                    pending.append(event["id"])
        if pending and self.on_commit is not None:
            self.on_commit(pending)
        _settle(batch, results)


def _settle(batch: list[_Item], results: list[Any]) -> None:
    """Resolve each request's future with its result (or exception), one loop wake-up per
    event loop rather than one per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], Any]]] = {}
    for (_, _, future, loop), result in zip(batch, results, strict=True):
        by_loop.setdefault(loop, []).append((future, result))
    for loop, pairs in by_loop.items():
        # A loop already closed (the app shutting down) has nobody left waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, pairs)


def _resolve(pairs: list[tuple[asyncio.Future[bool], Any]]) -> None:
    for future, result in pairs:
        if future.done():  # the request was cancelled meanwhile
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


Store = BatchStore


def make_store(engine: Engine, *, batch: int, writers: int, on_commit: OnCommit | None) -> Store:
    """Grouped commits, or with ``batch`` <= 1 one commit per webhook: then as many writers
    as requests are commonly in flight (each a transaction of one event on a connection it
    keeps), not a pool checkout, pre-ping and, past the pool's size, a new connection per
    webhook, which cost ~0.7 ms of CPU each."""
    if batch <= 1:
        return BatchStore(
            engine, max_batch=1, writers=max(writers, DIRECT_WRITERS), on_commit=on_commit
        )
    return BatchStore(engine, max_batch=batch, writers=writers, on_commit=on_commit)
