"""Where the intake's CPU goes: microseconds per webhook, phase by phase.

    python -m tests.bench.intake_phases [--n 20000] [--batch 8]

Each phase runs the intake's real code in a tight loop, alone, on this process's CPU clock
(``time.thread_time`` / ``time.process_time``), so the figures are CPU, not wall time:

- HTTP parse: httptools alone, fed whole requests.
- uvicorn's request cycle and its response framing: uvicorn's httptools protocol on a
  uvloop loop, fed whole requests through an in-memory transport, in front of an app that
  reads the body and sends the intake's 200 answer (what uvicorn costs beyond our handler;
  the time inside ``send`` is the response framing, the rest less the parse the cycle).
- body read, signature, JSON parse, response: the pieces of :class:`worker.intake.app.Webhook`.
- handler total: ``Webhook.__call__`` end to end with a store that answers at once.
- queue to writer and back: ``BatchStore.store`` with ``concurrency`` requests in flight
  and the database call stubbed out (thread hand-off, batching, one loop wake-up a batch).
- DB insert+commit share: ``inbox.store_events`` on the test PostgreSQL in batches of
  ``--batch`` rows, one autocommit statement each: the writer thread's CPU, and the
  PostgreSQL backend's, per row.

What it cannot isolate is the kernel's share (loopback TCP recv/send, epoll, futex wake-
ups), the event loop's own iterations and contention between threads; ``tests.bench.intake``
measures the server's total CPU per webhook under load, kernel time apart, beside which
these figures are read.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

SECRET = "whsec_bench_phases_0123456789"


def _requests(n: int) -> list[bytes]:
    from tests.bench.loadgen import build_requests

    return build_requests("127.0.0.1:8000", n, uuid.uuid4().hex[:8], SECRET)


def _split(request: bytes) -> tuple[dict[str, Any], bytes]:
    head, body = request.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")[1:]
    headers = [(k.strip().lower(), v.strip()) for k, v in (line.split(b":", 1) for line in lines)]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/webhooks/stripe",
        "headers": headers,
    }
    return scope, body


def _per_call(fn: Callable[[], Any], n: int) -> float:
    t0 = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - t0) / n * 1e6


class _Transport:
    """Enough of an asyncio transport for uvicorn's protocol: writes are kept, not sent."""

    def __init__(self) -> None:
        self.written = 0
        self.on_write: Callable[[], None] | None = None
        self._closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.on_write is not None:
            self.on_write()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, _: Any) -> None:
        pass


def httptools_parse_us(requests: list[bytes]) -> float:
    """httptools alone: the C parser fed whole requests, with callbacks that keep nothing."""
    import httptools

    class Sink:
        def on_url(self, url: bytes) -> None:
            pass

        def on_header(self, name: bytes, value: bytes) -> None:
            pass

        def on_body(self, body: bytes) -> None:
            pass

    parser = httptools.HttpRequestParser(Sink())
    t0 = time.thread_time()
    for request in requests:
        parser.feed_data(request)
    return (time.thread_time() - t0) / len(requests) * 1e6


def http_cycle_us(requests: list[bytes]) -> dict[str, float]:
    """uvicorn + httptools per request, in front of an app that does only the ASGI minimum:
    the whole cycle, and within it the time spent receiving the body and sending the
    answer (neither suspends here: the body is there, the transport takes the bytes)."""
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from worker.intake.app import _ACCEPTED, _answer

    spent = {"receive": 0.0, "send": 0.0}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        t0 = time.thread_time()
        message = await receive()
        while message.get("more_body"):
            message = await receive()
        t1 = time.thread_time()
        await _answer(send, 200, _ACCEPTED)
        t2 = time.thread_time()
        spent["receive"] += t1 - t0
        spent["send"] += t2 - t1

    loop = _new_loop()
    try:
        config = uvicorn.Config(
            app, http="httptools", loop="none", access_log=False, proxy_headers=False
        )
        config.load()
        transport = _Transport()

        async def drive() -> float:
            protocol = HttpToolsProtocol(
                config=config, server_state=ServerState(), app_state={}, _loop=loop
            )
            protocol.connection_made(transport)  # type: ignore[arg-type]
            t0 = time.thread_time()
            for request in requests:
                done = loop.create_future()
                writes = [0]

                def wrote(done: Any = done, writes: list[int] = writes) -> None:
                    writes[0] += 1
                    if writes[0] == 2 and not done.done():  # headers, then body
                        done.set_result(None)

                transport.on_write = wrote
                protocol.data_received(request)
                await done
            n = len(requests)
            return {
                "cycle": (time.thread_time() - t0) / n * 1e6,
                "receive": spent["receive"] / n * 1e6,
                "send": spent["send"] / n * 1e6,
            }

        return loop.run_until_complete(drive())
    finally:
        loop.close()


class _InstantStore:
    async def store(self, event: Any, raw: bytes) -> bool:
        return True


def handler_us(requests: list[bytes]) -> dict[str, float]:
    from worker.intake.app import Webhook, _answer
    from worker.settings import Settings

    settings = Settings(stripe_webhook_secret=SECRET, database_url="sqlite://")
    webhook = Webhook(settings, _InstantStore())  # type: ignore[arg-type]
    split = [_split(r) for r in requests]
    n = len(split)
    loop = _new_loop()

    async def sink(_: Any) -> None:
        pass

    def receiver(body: bytes) -> Callable[[], Any]:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        return receive

    async def timed() -> dict[str, float]:
        out: dict[str, float] = {}
        receives = [receiver(body) for _, body in split]
        # Body read: the declared length checked, one http.request message taken.
        t0 = time.thread_time()
        for (_, body), receive in zip(split, receives, strict=True):
            await webhook._read_body(b"%d" % len(body), receive)
        out["body read"] = (time.thread_time() - t0) / n * 1e6
        payloads = [
            (body.decode(), dict(scope["headers"])[b"stripe-signature"]) for scope, body in split
        ]
        t0 = time.thread_time()
        for payload, header in payloads:
            webhook.signatures.check(payload, header.decode("latin-1"))
        out["signature (official library, 1 HMAC)"] = (time.thread_time() - t0) / n * 1e6
        from reconcile import inbox

        t0 = time.thread_time()
        for _, body in split:
            inbox.parse_event(body)
        out["JSON parse + event checks (orjson)"] = (time.thread_time() - t0) / n * 1e6
        t0 = time.thread_time()
        for _ in range(n):
            await _answer(sink, 200, b'{"received":true,"duplicate":false}')
        out["response messages (ours)"] = (time.thread_time() - t0) / n * 1e6
        t0 = time.thread_time()
        for (scope, _), receive in zip(split, receives, strict=True):
            await webhook(scope, receive, sink)
        out["handler total (all of the above + metrics)"] = (time.thread_time() - t0) / n * 1e6
        return out

    try:
        return loop.run_until_complete(timed())
    finally:
        loop.close()


def queue_us(n: int, concurrency: int, commit_seconds: float) -> tuple[float, float]:
    """BatchStore round trip with the DB call stubbed: process CPU per event, mean batch."""
    from unittest import mock

    from sqlalchemy import create_engine

    from worker.intake import store as store_mod

    sizes: list[int] = []

    def fake_store_events(conn: Any, events: Any, **_: Any) -> set[str]:
        sizes.append(len(events))
        time.sleep(commit_seconds)  # a commit's wait, GIL released, as psycopg's would be
        return {e["id"] for e in events}

    engine = create_engine("sqlite://")
    store = store_mod.BatchStore(engine, max_batch=100)
    loop = _new_loop()
    event = {"id": "evt_x", "type": "payment_intent.succeeded", "data": {"object": {}}}

    async def one(k: int) -> None:
        for i in range(k, n, concurrency):
            await store.store({**event, "id": f"evt_{i}"}, b"{}")

    async def run() -> float:
        t0 = time.process_time()
        await asyncio.gather(*(one(k) for k in range(concurrency)))
        return (time.process_time() - t0) / n * 1e6

    with (
        mock.patch.object(store_mod.inbox, "store_events", fake_store_events),
        mock.patch.object(store_mod, "_connect", lambda _engine: contextlib.nullcontext(None)),
        mock.patch.object(store_mod, "_transaction", lambda conn: contextlib.nullcontext(conn)),
    ):
        try:
            us = loop.run_until_complete(run())
        finally:
            loop.close()
            store.close()
            engine.dispose()
    # The stubbed wait is sleep, not CPU; what is left is the hand-off and settling.
    return us, sum(sizes) / max(len(sizes), 1)


def db_us(requests: list[bytes], batch: int) -> dict[str, float]:
    """store_events on the test PostgreSQL: writer-thread CPU and backend CPU per row."""
    from sqlalchemy import text

    from reconcile import inbox
    from tests.support import throwaway_schema
    from worker.db import make_engine

    bodies = [r.split(b"\r\n\r\n", 1)[1] for r in requests]
    events = [inbox.parse_event(b) for b in bodies]
    tick = os.sysconf("SC_CLK_TCK")

    def backend_cpu(pid: int) -> float:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    with throwaway_schema("bench_", tables=True) as url:
        engine = make_engine(url, pool_size=1, max_overflow=0)
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
                # Warm the prepared statement (psycopg prepares after a few executions).
                for i in range(0, min(len(events), 10 * batch), batch):
                    inbox.store_events(
                        conn,
                        events[i : i + batch],
                        source="webhook",
                        now=datetime.now(UTC),
                        raw=bodies[i : i + batch],
                    )
                start = 10 * batch
                pg0, t0, w0 = backend_cpu(pid), time.thread_time(), time.perf_counter()
                rows = 0
                for i in range(start, len(events), batch):
                    inbox.store_events(
                        conn,
                        events[i : i + batch],
                        source="webhook",
                        now=datetime.now(UTC),
                        raw=bodies[i : i + batch],
                    )
                    rows += len(events[i : i + batch])
                cpu = time.thread_time() - t0
                wall = time.perf_counter() - w0
                pg = backend_cpu(pid) - pg0
        finally:
            engine.dispose()
    return {
        "writer thread CPU per row": cpu / rows * 1e6,
        "PostgreSQL backend CPU per row": pg / rows * 1e6,
        "wall per batch (ms)": wall / (rows / batch) * 1e3,
    }


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


LABELS = {
    "http_parse_us": "HTTP parse (httptools, C)",
    "asgi_cycle_us": "uvicorn's request cycle (scope, task, receive), less the parse",
    "response_framing_us": "response (uvicorn's send: status line, headers, body)",
    "body_read_us": "body read (our handler)",
    "signature_us": "signature (official library, 1 HMAC)",
    "json_parse_us": "JSON parse + event checks (orjson)",
    "response_us": "response messages (ours)",
    "handler_total_us": "handler end to end (body+signature+JSON+response, metrics)",
    "queue_us": "queue to writer and back (DB stubbed)",
    "db_writer_us": "DB insert+commit share: writer thread",
    "db_postgres_us": "DB insert+commit share: PostgreSQL backend",
}


def run(n: int = 20_000, batch: int = 8, concurrency: int = 16) -> dict[str, Any]:
    requests = _requests(n)
    out: dict[str, Any] = {"n": n, "batch": batch}
    out["http_parse_us"] = httptools_parse_us(requests)
    cycle = http_cycle_us(requests)
    out["response_framing_us"] = cycle["send"]
    out["asgi_cycle_us"] = cycle["cycle"] - out["http_parse_us"] - cycle["send"]
    handler = handler_us(requests)
    out["body_read_us"] = handler["body read"]
    out["signature_us"] = handler["signature (official library, 1 HMAC)"]
    out["json_parse_us"] = handler["JSON parse + event checks (orjson)"]
    out["response_us"] = handler["response messages (ours)"]
    out["handler_total_us"] = handler["handler total (all of the above + metrics)"]
    db = db_us(requests[: min(n, 8000)], batch)
    out["db_writer_us"] = db["writer thread CPU per row"]
    out["db_postgres_us"] = db["PostgreSQL backend CPU per row"]
    out["db_wall_ms"] = db["wall per batch (ms)"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        queue, mean_batch = pool.submit(queue_us, n, concurrency, out["db_wall_ms"] / 1000).result()
    out["queue_us"] = queue
    out["queue_mean_batch"] = mean_batch
    out["server_user_sum_us"] = (
        out["http_parse_us"]
        + out["asgi_cycle_us"]
        + out["response_framing_us"]
        + out["handler_total_us"]
        + out["queue_us"]
        + out["db_writer_us"]
    )
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


def table(res: dict[str, Any]) -> str:
    lines = [f"intake CPU per webhook by phase, in isolation (n={res['n']}), microseconds:"]
    for key, label in LABELS.items():
        note = ""
        if key == "queue_us":
            note = f"  (mean batch {res['queue_mean_batch']})"
        elif key.startswith("db_"):
            note = f"  (batches of {res['batch']}, {res['db_wall_ms']} ms each)"
        lines.append(f"    {label:62} {res[key]:7.1f}{note}")
    lines.append(
        f"    {'sum in the server (parse+cycle+send+handler+queue+writer)':62} "
        f"{res['server_user_sum_us']:7.1f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.intake_phases", description=__doc__)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args(argv)
    print(table(run(a.n, a.batch)))


if __name__ == "__main__":
    main()
