"""A cheap load generator for the intake benchmark, run as a process of its own.

    python -m tests.bench.loadgen --port 8000 --concurrency 16 --seconds 5 --secret whsec_...

It shares the machine's two cores with the server and PostgreSQL, so it does as little as
it can while measuring: every request (a distinct event, signed the way Stripe signs) is
built and signed *before* the clock starts; during the run each of ``concurrency``
keep-alive connections sends one request, waits for the whole answer, and sends the next,
with uvloop's C transports and asyncio Protocol callbacks (no streams, no HTTP library).
After ``warmup`` seconds of the same traffic it prints ``ready`` and waits for a line on
stdin, so the caller can start its CPU meters; then it runs for ``seconds`` and prints one
JSON line: counts, rate, latency percentiles, and the CPU seconds it used itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import sys
import time
from typing import Any

# Requests built ahead of a phase: at most this many per second of it (the harness's
# machine does ~5,000/s); a phase that runs out stops early and says so.
BUILD_RATE = 12_000
MAX_REQUESTS = 200_000

_TEMPLATE = json.dumps(
    {
        "id": "evt_%s",
        "object": "event",
        "api_version": "2024-06-20",
        "created": 0,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": "pi_%s",
                "object": "payment_intent",
                "amount": 2000,
                "amount_received": 2000,
                "currency": "usd",
                "status": "succeeded",
                "created": 1700000000,
                "metadata": {"order": "bench"},
            }
        },
    },
    indent=2,
)

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


def make_event_body(n: int, run: str, created: int | None = None) -> bytes:
    """A ``payment_intent.succeeded`` event as Stripe sends it (pretty-printed JSON)."""
    key = f"{run}{n:010d}"
    created = int(time.time()) if created is None else created
    return (_TEMPLATE % (key, key)).replace('"created": 0', f'"created": {created}').encode()


def signed_request(host: str, body: bytes, secret: str, timestamp: int) -> bytes:
    """The whole HTTP/1.1 request, signed as Stripe signs (HMAC-SHA256 of "{t}.{body}")."""
    sig = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    head = (
        f"POST /webhooks/stripe HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json; charset=utf-8\r\n"
        f"User-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)\r\n"
        f"Stripe-Signature: t={timestamp},v1={sig}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def build_requests(host: str, count: int, run: str, secret: str) -> list[bytes]:
    now = int(time.time())
    return [signed_request(host, make_event_body(n, run, now), secret, now) for n in range(count)]


class _Client(asyncio.Protocol):
    """One keep-alive connection: one request in flight at a time."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buf = b""
        self.sent_at = 0.0
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send_next(self) -> None:
        request = self.run.next_request()
        if request is None:
            self.transport.close()
            return
        self.sent_at = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        match = _CONTENT_LENGTH.search(buf, 0, end + 2)
        length = int(match.group(1)) if match else 0
        if len(buf) < end + 4 + length:
            self.buf = buf
            return
        self.buf = buf[end + 4 + length :]
        self.run.done(int(buf[9:12]), time.perf_counter() - self.sent_at)
        self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Run:
    def __init__(self, requests: list[bytes], seconds: float) -> None:
        self.requests = requests
        self.index = 0
        self.deadline = time.monotonic() + seconds
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.exhausted = False

    def next_request(self) -> bytes | None:
        if self.index >= len(self.requests):
            self.exhausted = True
            return None
        # The clock is read once per request: cheap next to a syscall.
        if time.monotonic() >= self.deadline:
            return None
        request = self.requests[self.index]
        self.index += 1
        return request

    def done(self, status: int, latency: float) -> None:
        self.latencies.append(latency)
        self.statuses[status] = self.statuses.get(status, 0) + 1


async def _phase(
    host: str, port: int, concurrency: int, seconds: float, requests: list[bytes]
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    run = _Run(requests, seconds)
    clients: list[_Client] = []
    for _ in range(concurrency):
        _, client = await loop.create_connection(lambda: _Client(run), host, port)
        clients.append(client)
    cpu0 = time.process_time()
    started = time.perf_counter()
    for client in clients:
        client.send_next()
    await asyncio.gather(*(c.closed for c in clients))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    lat = sorted(run.latencies)
    ok = run.statuses.get(200, 0)

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(len(lat) * q))] * 1000, 2) if lat else None

    return {
        "ok": ok,
        "errors": len(lat) - ok,
        "statuses": {str(k): v for k, v in sorted(run.statuses.items())},
        "seconds": round(elapsed, 3),
        "per_second": round(ok / elapsed, 1) if elapsed else 0.0,
        "mean_ms": round(sum(lat) / len(lat) * 1000, 2) if lat else None,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(lat[-1] * 1000, 2) if lat else None,
        "ran_out_of_requests": run.exhausted,
        "loadgen_cpu_s": round(cpu, 3),
        "loadgen_cpu_us": round(cpu / max(len(lat), 1) * 1e6, 1),
        "loadgen_cores": round(cpu / elapsed, 3) if elapsed else 0.0,
    }


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.loadgen", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--run", required=True, help="event id prefix, unique per phase")
    ap.add_argument("--no-wait", action="store_true", help="start without waiting for stdin")
    a = ap.parse_args(argv)
    host = f"{a.host}:{a.port}"
    loop = _new_loop()
    try:
        if a.warmup > 0:
            warm = build_requests(host, int(a.warmup * BUILD_RATE), "w" + a.run, a.secret)
            loop.run_until_complete(_phase(a.host, a.port, a.concurrency, a.warmup, warm))
            del warm
        count = min(MAX_REQUESTS, int(a.seconds * BUILD_RATE) + a.concurrency)
        requests = build_requests(host, count, a.run, a.secret)
        print("ready", flush=True)
        if not a.no_wait:
            sys.stdin.readline()
        result = loop.run_until_complete(_phase(a.host, a.port, a.concurrency, a.seconds, requests))
    finally:
        with contextlib.suppress(Exception):
            loop.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
