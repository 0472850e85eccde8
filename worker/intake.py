"""Webhook intake: the ASGI app behind ``POST /webhooks/stripe`` (and the health, readiness
and metrics endpoints).

Served by uvicorn through :func:`serve` (``python -m worker.intake``, or ``recon serve``).
Prefer it to ``uvicorn --workers N``: uvicorn binds that shared socket without naming
the TCP protocol, so asyncio never sets TCP_NODELAY on the connections, and Nagle plus
delayed ACKs then add ~40 ms to every response (the headers and the body go out as two
writes): measured here, 2 workers served 20x fewer webhooks than 1.  :func:`serve` binds
the socket itself and, with several workers, points ``PROMETHEUS_MULTIPROC_DIR`` at a
fresh directory unless one is set, so /metrics adds up every process.

The one promise: an event answered 2xx is committed in the inbox.  So the order is
verify -> store and COMMIT -> answer, and only after the commit is the id (of a new,
pending row only) handed to the queue, by a publisher thread (:class:`Publisher`).  A
broker that fails after the commit changes nothing in the answer (the row is there;
``inbox.redrive`` re-sends it); a database that fails gets a 503 so that Stripe retries.
4xx only for what can never become valid (bad signature, stale timestamp, not an event,
too large).

SQLAlchemy is synchronous here, so database work runs off the event loop.  By default
(``RECON_INTAKE_BATCH``, 100; 0 or 1 turns it off) concurrent webhooks are grouped: each
request hands its event to a writer thread and waits; a writer drains up to that many
waiting events, inserts them in one statement, commits, and only then answers each of
them.  One commit then serves many webhooks, and the per-statement overhead (most of the
CPU of a webhook) is paid once per batch.  A lone webhook never waits for company:
batches form only from requests that arrived during the previous commit.  With batching
off, each webhook is one INSERT in its own transaction, in the threadpool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue as queue_mod
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import stripe
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconcile import inbox
from worker import metrics
from worker.db import engine_for
from worker.logs import configure_logging, get_logger, redact_text
from worker.settings import Settings, get_settings

log = get_logger(__name__)

DB_ERRORS: tuple[type[BaseException], ...] = (OperationalError, DBAPIError, PoolTimeout)
SOURCE = "webhook"
DEFAULT_BATCH_WRITERS = 2
READY_TIMEOUT = 5.0

Enqueue = Callable[[str], None]


class _Reject(Exception):
    def __init__(self, status: int, message: str, outcome: str, event_type: str = "unknown"):
        super().__init__(message)
        self.status, self.message, self.outcome, self.event_type = (
            status,
            message,
            outcome,
            event_type,
        )


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- signature


def verify_signature(payload: str, header: str, secrets: list[str], tolerance: float) -> str:
    """``"ok"``, ``"stale"`` (a secret matches but the timestamp is too old) or ``"bad"``.

    Every configured secret is tried: while a secret is being rolled, Stripe signs with
    both and either may be the one we still (or already) hold."""
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
            return "ok"
        except stripe.SignatureVerificationError:
            continue
    # Tell "stale" from "wrong" by checking again without the tolerance: the library does
    # the HMAC, we never parse its messages.
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, None)
            return "stale"
        except stripe.SignatureVerificationError:
            continue
    return "bad"


# --------------------------------------------------------------------------- stores


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


# --------------------------------------------------------------------------- publisher


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
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="intake-publisher", daemon=True
                    )
                    self._thread.start()
        self._q.put(event_id)

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
            while isinstance(marker, str):
                ids.append(marker)
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
            error=redact_text(f"{type(exc).__name__}: {exc}")[:300] if exc else "broker backoff",
        )


# --------------------------------------------------------------------------- app


DEFAULT_BATCH = 100


def _batch_setting(settings: Settings, batch: int | None) -> int:
    if batch is not None:
        return batch
    value = getattr(settings, "intake_batch", None)
    if value is None:
        value = os.environ.get("RECON_INTAKE_BATCH", "") or DEFAULT_BATCH
    return int(value)


def _default_enqueue_many(event_ids: list[str]) -> None:
    from worker.queue import enqueue_events

    enqueue_events(event_ids)


_ACCEPTED = b'{"received":true,"duplicate":false}'
_DUPLICATE = b'{"received":true,"duplicate":true}'


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    enqueue: Enqueue | None = None,
    batch: int | None = None,
) -> Starlette:
    """The intake app.  ``enqueue`` receives one event id, after its commit, only for new
    pending rows (default: ``worker.queue``); ``batch`` is the most webhooks grouped into
    one commit, 0 or 1 for one commit each (default: ``RECON_INTAKE_BATCH``, else 100)."""
    configure_logging()
    settings = settings or get_settings()
    engine = engine if engine is not None else engine_for(settings.database_url)
    publisher = (
        Publisher(send_one=enqueue)
        if enqueue is not None
        else Publisher(send_many=_default_enqueue_many)
    )
    batch_size = _batch_setting(settings, batch)
    store: DirectStore | BatchStore = (
        BatchStore(engine, max_batch=batch_size) if batch_size > 1 else DirectStore(engine)
    )
    max_bytes = settings.webhook_max_bytes
    tolerance = settings.webhook_tolerance.total_seconds()
    broker_url = settings.broker_url

    async def _read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise _Reject(400, "invalid Content-Length", "invalid") from None
            if size > max_bytes:
                raise _Reject(413, f"body larger than {max_bytes} bytes", "too_large")
        chunks: list[bytes] = []
        received = 0
        # Chunked bodies announce no length: count as they come and stop at the limit.
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise _Reject(413, f"body larger than {max_bytes} bytes", "too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _verified_event(request: Request) -> dict[str, Any]:
        secrets = settings.webhook_secrets
        if not secrets:
            # A server fault, not bad input: never 2xx (Stripe would drop events nobody
            # checked), and a 5xx says so to Stripe's retries and to the alerts on them.
            log.error("webhook rejected: no webhook secret configured (STRIPE_WEBHOOK_SECRET)")
            raise _Reject(500, "webhook secret not configured", "error")
        body = await _read_body(request)
        header = request.headers.get("stripe-signature")
        if not header:
            raise _Reject(400, "missing Stripe-Signature header", "bad_signature")
        try:
            payload = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject(400, "body is not UTF-8", "invalid") from None
        verdict = verify_signature(payload, header, secrets, tolerance)
        if verdict == "stale":
            raise _Reject(400, f"stale timestamp: signed more than {int(tolerance)}s ago", "stale")
        if verdict != "ok":
            raise _Reject(400, "bad signature: matches no configured secret", "bad_signature")
        try:
            return inbox.parse_event(body)
        except inbox.InvalidEvent as exc:
            raise _Reject(400, f"not a Stripe event: {exc}", "invalid") from None

    async def webhook(request: Request) -> Response:
        event_type = "unknown"
        try:
            event = await _verified_event(request)
            event_type = event["type"]
            try:
                new = await store.store(event)
            except DB_ERRORS as exc:
                raise _Reject(503, "database unavailable", "db_unavailable", event_type) from exc
        except _Reject as rej:
            metrics.count_webhook(rej.event_type, rej.outcome)
            if rej.status >= 500:
                cause = rej.__cause__
                log.warning(
                    "webhook not stored",
                    status=rej.status,
                    reason=rej.message,
                    error=redact_text(f"{type(cause).__name__}: {cause}")[:300] if cause else None,
                )
            else:
                log.info("webhook rejected", status=rej.status, reason=rej.message)
            return _error(rej.status, rej.message)
        except Exception as exc:
            metrics.count_webhook(event_type, "error")
            log.exception("webhook failed", error_type=type(exc).__name__)
            return _error(500, "internal error")

        if new and inbox.initial_status(event) == "pending":
            # Committed by now; a nudge lost from here on is re-sent by redrive.
            publisher.put(event["id"])
        metrics.count_webhook(event_type, "accepted" if new else "duplicate")
        return Response(_DUPLICATE if not new else _ACCEPTED, media_type="application/json")

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def _check_db() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def _check_broker() -> str:
        if not broker_url:
            return "in-process"
        if broker_url.startswith(("redis://", "rediss://", "unix://")):
            import redis

            client = redis.Redis.from_url(broker_url, socket_connect_timeout=2, socket_timeout=2)
            try:
                client.ping()
            finally:
                client.close()
            return "ok"
        import kombu

        connection: Any = kombu.Connection(broker_url, connect_timeout=2)  # type: ignore[attr-defined,no-untyped-call]
        with connection as conn:
            conn.ensure_connection(max_retries=1)
        return "ok"

    async def _check(fn: Callable[[], Any]) -> tuple[bool, str]:
        try:
            result = await asyncio.wait_for(run_in_threadpool(fn), READY_TIMEOUT)
        except Exception as exc:
            return False, f"unavailable ({type(exc).__name__})"
        return True, result if isinstance(result, str) else "ok"

    async def readyz(_: Request) -> Response:
        (db_ok, db), (broker_ok, broker) = await asyncio.gather(
            _check(_check_db), _check(_check_broker)
        )
        ready = db_ok and broker_ok
        body: dict[str, Any] = {
            "status": "ready" if ready else "unavailable",
            "database": db,
            "broker": broker,
        }
        if not ready:
            body["failed"] = [n for n, ok in (("database", db_ok), ("broker", broker_ok)) if not ok]
        return JSONResponse(body, status_code=200 if ready else 503)

    def _refresh_lag() -> None:
        try:
            with engine.connect() as conn:
                count, age = inbox.lag(conn, _now())
        except Exception as exc:
            # A scrape must still answer: the request counters matter most when the DB is down.
            log.debug("inbox lag unavailable", error=type(exc).__name__)
            return
        metrics.set_inbox_lag(count, age)

    async def metrics_endpoint(_: Request) -> Response:
        body = await run_in_threadpool(metrics.render, _refresh_lag)
        return Response(body, media_type=metrics.CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await run_in_threadpool(store.close)
            await run_in_threadpool(publisher.close)

    app = Starlette(
        routes=[
            Route("/webhooks/stripe", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.publisher = publisher
    app.state.settings = settings
    return app


# --------------------------------------------------------------------------- serving


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio only sets TCP_NODELAY on accepted connections
    # whose socket says it is TCP, and proto=0 (uvicorn's own bind) does not.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    app: str = "worker.intake:create_app",
    log_level: str = "info",
) -> None:
    """Run the intake (``app`` is a factory import string) until interrupted."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    if workers > 1 and not metrics.multiprocess_dir():
        # Set before the workers start: each reads it when it imports prometheus_client.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="recon-metrics-")
    config = uvicorn.Config(
        app,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    sock = listening_socket(host, port)
    try:
        if workers > 1:
            Multiprocess(config, sockets=[sock]).run()
        else:
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m worker.intake", description="webhook intake")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--app", default="worker.intake:create_app", help="factory import path")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    serve(
        host=args.host,
        port=args.port,
        workers=args.workers,
        app=args.app,
        log_level=args.log_level,
    )


if __name__ == "__main__":
    main()
