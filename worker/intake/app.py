"""The intake's ASGI app: ``POST /webhooks/stripe``, ``/healthz``, ``/readyz``, ``/metrics``.

Order of work per webhook: verify the signature -> store and COMMIT (worker/intake/store.py)
-> answer -> hand the id of a new, pending row to the publisher (worker/intake/publisher.py).
4xx only for what can never become valid; 503 when the database is down so Stripe retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconcile import inbox
from reconcile.redact import redact
from worker import metrics
from worker.db import engine_for
from worker.intake.publisher import Enqueue, Publisher
from worker.intake.signature import check_stripe_signature
from worker.intake.store import BatchStore, DirectStore
from worker.logs import configure_logging, get_logger
from worker.settings import Settings, get_settings

__all__ = ["create_app"]

log = get_logger(__name__)

DB_ERRORS: tuple[type[BaseException], ...] = (OperationalError, DBAPIError, PoolTimeout)
READY_TIMEOUT = 5.0


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


DEFAULT_BATCH = 100


def _batch_setting(settings: Settings, batch: int | None) -> int:
    if batch is not None:
        return batch
    value = getattr(settings, "intake_batch", None)
    if value is None:
        value = os.environ.get("RECON_INTAKE_BATCH", "") or DEFAULT_BATCH
    return int(value)


def _default_enqueue_many(event_ids: list[str]) -> None:
    from worker.celery_app import app
    from worker.queue import enqueue_events

    enqueue_events(event_ids, app=app)


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
        verdict = check_stripe_signature(payload, header, secrets, tolerance)
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
                    error=redact(f"{type(cause).__name__}: {cause}")[:300] if cause else None,
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
