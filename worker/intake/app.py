"""The intake's ASGI app: ``POST /webhooks/stripe``, ``/healthz``, ``/readyz``, ``/metrics``.

Order of work per webhook: verify the signature -> parse once -> store and COMMIT
(worker/intake/store.py), which then hands the id of a new, pending row to the publisher
(worker/intake/publisher.py) -> answer.  4xx only for what can never become valid; 503
when the database is down so Stripe retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine, text
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from reconcile import inbox
from reconcile.redact import redact
from worker import metrics
from worker.db import engine_for
from worker.intake.publisher import Enqueue, Publisher
from worker.intake.signature import SignatureChecker
from worker.intake.store import Store, make_store
from worker.logs import configure_logging, get_logger
from worker.settings import Settings, get_settings

__all__ = ["WEBHOOK_PATH", "IntakeApp", "Webhook", "create_app"]

log = get_logger(__name__)

DB_ERRORS: tuple[type[BaseException], ...] = (OperationalError, DBAPIError, PoolTimeout)
# What the database refuses in the row itself: retrying never helps, so it is bad input
# (400), not an outage (503).  Validation catches these kinds first; this is the backstop.
UNSTORABLE: tuple[type[BaseException], ...] = (DataError, IntegrityError)
# More v1= entries than any rotation needs: refused before any HMAC is computed.
MAX_SIGNATURES = 16
READY_TIMEOUT = 5.0


WEBHOOK_PATH = "/webhooks/stripe"


class _Reject(Exception):
    """A webhook refused: ``outcome`` labels recon_webhooks_received_total, ``reason``
    (one of metrics.REJECTION_REASONS) recon_webhooks_rejected_total."""

    def __init__(
        self,
        status: int,
        message: str,
        outcome: str,
        event_type: str = "unknown",
        reason: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.outcome, self.event_type = (
            status,
            message,
            outcome,
            event_type,
        )
        self.reason = reason or outcome


class _Disconnected(Exception):
    """The client went away before its body was read: nobody is left to answer."""


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


def _json_start(status: int, body: bytes) -> dict[str, Any]:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }


_ACCEPTED = b'{"received":true,"duplicate":false}'
_DUPLICATE = b'{"received":true,"duplicate":true}'


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send(_json_start(status, body))
    await send({"type": "http.response.body", "body": body})


class Webhook:
    """``POST /webhooks/stripe`` as a plain ASGI callable.

    Starlette's Request/Response objects, its routing and its middleware stack cost more
    CPU per webhook than everything else the handler does, so the hot route reads the
    ASGI messages itself: headers from the scope, the body from ``receive``, the answer
    as two ``send`` calls.  Order of work: verify the signature -> parse the JSON once
    (orjson) -> store and COMMIT the body as received (store.py) -> answer."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.store = store
        self.max_bytes = settings.webhook_max_bytes
        self.tolerance = settings.webhook_tolerance.total_seconds()
        self.signatures = SignatureChecker(settings.webhook_secrets, self.tolerance)
        self.body_timeout = settings.intake_body_timeout.total_seconds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        event_type = "unknown"
        try:
            event, raw = await self._verified_event(scope, receive)
            event_type = event["type"]
            try:
                new = await self.store.store(event, raw)
            except UNSTORABLE as exc:
                raise _Reject(400, "unstorable event", "invalid", event_type, "unstorable") from exc
            except DB_ERRORS as exc:
                raise _Reject(503, "database unavailable", "db_unavailable", event_type) from exc
        except _Reject as rej:
            metrics.count_webhook(rej.event_type, rej.outcome)
            if rej.status < 500 or rej.reason == "no_secret":
                metrics.count_rejection(rej.reason)
            if rej.status >= 500:
                cause = rej.__cause__
                log.warning(
                    "webhook not stored",
                    status=rej.status,
                    reason=rej.message,
                    error=redact(f"{type(cause).__name__}: {cause}")[:300] if cause else None,
                )
            else:
                log.info("webhook rejected", status=rej.status, reason=rej.reason)
            await _answer(send, rej.status, orjson.dumps({"error": rej.message}))
            return
        except _Disconnected:
            metrics.count_webhook(event_type, "disconnected")
            log.info("webhook abandoned: the client disconnected before its body was read")
            return
        except Exception as exc:
            metrics.count_webhook(event_type, "error")
            log.exception("webhook failed", error_type=type(exc).__name__)
            await _answer(send, 500, b'{"error":"internal error"}')
            return
        # Committed by now, and a new pending row's id already handed to the publisher.
        metrics.count_webhook(event_type, "accepted" if new else "duplicate")
        await _answer(send, 200, _ACCEPTED if new else _DUPLICATE)

    async def _read_body(self, declared: bytes | None, receive: Receive) -> bytes:
        max_bytes = self.max_bytes
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise _Reject(
                    400, "invalid Content-Length", "invalid", reason="bad_length"
                ) from None
            if size > max_bytes:
                raise _Reject(413, f"body larger than {max_bytes} bytes", "too_large")
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Disconnected
            chunk = message.get("body", b"")
            # Chunked bodies announce no length: count as they come and stop at the limit.
            received += len(chunk)
            if received > max_bytes:
                raise _Reject(413, f"body larger than {max_bytes} bytes", "too_large")
            if not message.get("more_body", False):
                if not chunks:
                    return bytes(chunk)
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)

    async def _verified_event(self, scope: Scope, receive: Receive) -> tuple[dict[str, Any], bytes]:
        if not self.signatures:
            # A server fault, not bad input: never 2xx (Stripe would drop events nobody
            # checked), and a 5xx says so to Stripe's retries and to the alerts on them.
            log.error("webhook rejected: no webhook secret configured (STRIPE_WEBHOOK_SECRET)")
            raise _Reject(500, "webhook secret not configured", "error", reason="no_secret")
        declared: bytes | None = None
        header: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"stripe-signature" and header is None:
                header = value
        try:
            # A client that trickles its body holds a socket and a task: a deadline (408).
            async with asyncio.timeout(self.body_timeout):
                body = await self._read_body(declared, receive)
        except TimeoutError:
            raise _Reject(408, "body not received in time", "timeout", reason="slow_body") from None
        if not header:
            raise _Reject(
                400, "missing Stripe-Signature header", "bad_signature", reason="no_signature"
            )
        try:
            payload = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject(400, "body is not UTF-8", "invalid", reason="not_utf8") from None
        now = time.time()
        signed_at = _signed_at(header)
        if signed_at is not None and signed_at > now + self.tolerance:
            # The library only bounds the past: a timestamp ahead of our clock would make a
            # captured delivery replayable for as long as it is ahead.
            raise _Reject(400, "signature timestamp in the future", "stale", reason="future")
        if header.count(b"v1=") > MAX_SIGNATURES or not header.isascii():
            raise _Reject(400, "bad signature: malformed header", "bad_signature")
        verdict = self.signatures.check(payload, header.decode("ascii"))
        if verdict == "stale":
            raise _Reject(
                400, f"stale timestamp: signed more than {int(self.tolerance)}s ago", "stale"
            )
        if verdict != "ok":
            raise _Reject(400, "bad signature: matches no configured secret", "bad_signature")
        try:
            # The one parse: the stored payload is ``body`` itself, never this object re-encoded.
            return inbox.parse_event(body, now=now, future=self.tolerance), body
        except inbox.InvalidEvent as exc:
            raise _Reject(400, f"not a Stripe event: {exc}", "invalid", reason=exc.reason) from None


def _signed_at(header: bytes) -> int | None:
    """The ``t=`` of a Stripe-Signature header, when there is one integer."""
    for part in header.split(b","):
        key, _, value = part.strip().partition(b"=")
        if key == b"t":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class IntakeApp:
    """The intake's ASGI app: ``POST /webhooks/stripe`` goes straight to :class:`Webhook`;
    everything else (the probes, /metrics, other methods and paths, lifespan) through
    Starlette, whose route table also names the webhook (so GET answers 405 as before)."""

    def __init__(self, webhook: Webhook, rest: Starlette) -> None:
        self.webhook = webhook
        self.rest = rest

    @property
    def state(self) -> State:
        return self.rest.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == WEBHOOK_PATH and scope["method"] == "POST":
            await self.webhook(scope, receive, send)
        else:
            await self.rest(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    enqueue: Enqueue | None = None,
    batch: int | None = None,
) -> IntakeApp:
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
    store = make_store(
        engine,
        batch=_batch_setting(settings, batch),
        writers=settings.intake_writers,
        on_commit=publisher.put_many,
    )
    broker_url = settings.broker_url
    webhook = Webhook(settings, store)

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

    rest = Starlette(
        routes=[
            Route(WEBHOOK_PATH, webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    # No 307 from /webhooks/stripe/ to /webhooks/stripe: the redirect is built from the
    # request's Host header, and the one webhook path is exact.
    rest.router.redirect_slashes = False
    rest.state.store = store
    rest.state.publisher = publisher
    rest.state.settings = settings
    return IntakeApp(webhook, rest)
