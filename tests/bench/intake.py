"""Intake throughput: sustained signed webhooks/s into PostgreSQL through the real HTTP
intake, beside the raw insert rate of the same rows by plain psycopg (one transaction per
row, same concurrency): the one-commit-per-row ceiling that DESIGN.md "Targets" names.

    python -m tests.bench.intake [--seconds 5] [--concurrency 16] [--workers 1,2]

Everything stays on localhost: a throwaway schema in the test database (dropped after),
uvicorn in a subprocess (so the load generator does not share its GIL), and a small
keep-alive HTTP/1.1 client on asyncio (httpx would spend more CPU than the server on 2
cores).  Every phase is bounded in time and in request count.  Enqueueing is a no-op here:
this measures verify + store + commit + answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from tests.support import throwaway_schema

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_bench_0123456789abcdef"
MAX_REQUESTS_PER_PHASE = 200_000


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free port in a daemon thread; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def bench_app() -> Any:
    """uvicorn --factory target: the real intake, with a no-op enqueue."""
    from worker.intake import create_app

    return create_app(enqueue=lambda _event_id: None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_subprocess(
    db_url: str,
    *,
    workers: int,
    batch: int,
    via_uvicorn_cli: bool = False,
    secret: str = SECRET,
) -> Iterator[tuple[str, int]]:
    """The intake in a subprocess, through ``worker.intake.serve`` (what production runs)
    or, for comparison, the plain ``uvicorn --workers`` command line."""
    port = _free_port()
    env = {
        **os.environ,
        "RECON_DATABASE_URL": db_url,
        "STRIPE_WEBHOOK_SECRET": secret,
        "RECON_INTAKE_BATCH": str(batch),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("RECON_BROKER_URL", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if via_uvicorn_cli:
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "--no-access-log"]
    else:
        cmd = [sys.executable, "-m", "worker.intake", "--app"]
    cmd += ["tests.bench.intake:bench_app", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    try:
        _wait_ready(port, workers, proc)
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(port: int, workers: int, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 30
    ok = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                ok += 1
                # With several workers, give each a moment to finish booting.
                if ok >= workers * 3:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("intake did not become ready")


# --------------------------------------------------------------------------- CPU


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
    return out


def _cpu_by_pid(pids: list[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def _cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    # Only processes alive at both ends: a backend that exited mid-phase (another client's)
    # must not turn the sum negative.
    return sum(after[p] - before[p] for p in before.keys() & after.keys())


def _postgres_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/comm") as fh:
                if fh.read().strip() == "postgres":
                    pids.append(int(entry))
    return pids


class CpuMeter:
    """CPU seconds spent by the server's processes, PostgreSQL's (all of it, on a shared
    host: an upper bound) and this process (the load generator), over a phase."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    def __enter__(self) -> CpuMeter:
        self.server_pids = _descendants(self.server_pid) if self.server_pid else []
        self._server0 = _cpu_by_pid(self.server_pids)
        self._pg0 = _cpu_by_pid(_postgres_pids())
        self._client0 = time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.server = _cpu_delta(self._server0, _cpu_by_pid(self.server_pids))
        self.postgres = _cpu_delta(self._pg0, _cpu_by_pid(list(self._pg0)))
        self.client = time.process_time() - self._client0

    def per_request(self, n: int) -> dict[str, float]:
        n = max(n, 1)
        return {
            "server_cpu_us": round(self.server / n * 1e6),
            "postgres_cpu_us": round(self.postgres / n * 1e6),
            "loadgen_cpu_us": round(self.client / n * 1e6),
        }


# --------------------------------------------------------------------------- load


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


def make_event_body(n: int, run: str) -> bytes:
    key = f"{run}{n:010d}"
    return (
        (_TEMPLATE % (key, key)).replace('"created": 0', f'"created": {int(time.time())}').encode()
    )


def _request(host: str, body: bytes) -> bytes:
    # Signed exactly as Stripe signs (the intake verifies with the official library).
    t = int(time.time())
    sig = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    head = (
        f"POST /webhooks/stripe HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json; charset=utf-8\r\n"
        f"Stripe-Signature: t={t},v1={sig}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _load(host: str, seconds: float, concurrency: int, run: str) -> dict[str, Any]:
    counter = iter(range(MAX_REQUESTS_PER_PHASE))
    ok = errors = 0
    latencies: list[float] = []
    h, p = host.split(":")
    deadline = time.monotonic() + seconds

    async def one_connection() -> None:
        nonlocal ok, errors
        reader, writer = await asyncio.open_connection(h, int(p))
        try:
            while time.monotonic() < deadline:
                n = next(counter, None)
                if n is None:
                    return
                started = time.perf_counter()
                writer.write(_request(host, make_event_body(n, run)))
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if status == 200:
                    ok += 1
                else:
                    errors += 1
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(one_connection() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "ok": ok,
        "errors": errors,
        "seconds": round(elapsed, 2),
        "per_second": round(ok / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
    }


def raw_insert_rate(db_url: str, seconds: float, concurrency: int) -> dict[str, Any]:
    """The ceiling: the same rows, plain psycopg, one INSERT + COMMIT per row."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(db_url)
    conninfo = u.set(drivername="postgresql").render_as_string(hide_password=False)
    run = uuid.uuid4().hex[:8]
    counter = iter(range(MAX_REQUESTS_PER_PHASE))
    lock = threading.Lock()
    done = [0]
    deadline = time.monotonic() + seconds
    sql = (
        "INSERT INTO recon_inbox (event_id, type, payment_id, livemode, event_created, payload,"
        " source, status, attempts, received_at) VALUES (%s, %s, %s, false, %s, %s, 'webhook',"
        " 'pending', 0, now()) ON CONFLICT (event_id) DO NOTHING"
    )

    def worker() -> None:
        with psycopg.connect(conninfo) as conn:
            while time.monotonic() < deadline:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                body = make_event_body(n, "raw" + run)
                event = json.loads(body)
                with conn.cursor() as cur:
                    cur.execute(
                        sql,
                        (
                            event["id"],
                            event["type"],
                            event["data"]["object"]["id"],
                            event["created"],
                            body.decode(),
                        ),
                    )
                conn.commit()
                with lock:
                    done[0] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return {"ok": done[0], "seconds": round(elapsed, 2), "per_second": round(done[0] / elapsed, 1)}


# --------------------------------------------------------------------------- driver


def run(
    seconds: float = 5.0,
    concurrency: int = 16,
    workers: tuple[int, ...] = (1, 2),
    batches: tuple[int, ...] = (0, 100),
    warmup: float = 1.0,
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "concurrency": concurrency,
        "seconds": seconds,
        "cpus": os.cpu_count(),
    }
    with throwaway_schema("bench_", tables=True) as url:
        with CpuMeter(None) as cpu:
            raw = raw_insert_rate(url, seconds, concurrency)
        raw.update(cpu.per_request(raw["ok"]))
        results["raw_psycopg_one_txn_per_row"] = raw
        ceiling = results["raw_psycopg_one_txn_per_row"]["per_second"]
        for n_workers in workers:
            for batch in batches:
                label = f"intake_{n_workers}w_{'batched' if batch > 1 else 'direct'}"
                with serve_subprocess(url, workers=n_workers, batch=batch) as (host, pid):
                    run_id = uuid.uuid4().hex[:8]
                    asyncio.run(_load(host, warmup, concurrency, "w" + run_id))
                    with CpuMeter(pid) as cpu:
                        res = asyncio.run(_load(host, seconds, concurrency, run_id))
                res.update(cpu.per_request(res["ok"]))
                res["ratio_to_ceiling"] = round(res["per_second"] / ceiling, 2) if ceiling else None
                results[label] = res
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", default="1,2", help="uvicorn worker counts, e.g. 1,2")
    parser.add_argument("--batches", default="0,100", help="RECON_INTAKE_BATCH values, 0 = off")
    args = parser.parse_args(argv)
    results = run(
        seconds=args.seconds,
        concurrency=args.concurrency,
        workers=tuple(int(w) for w in args.workers.split(",")),
        batches=tuple(int(b) for b in args.batches.split(",")),
    )
    ceiling = results["raw_psycopg_one_txn_per_row"]["per_second"]
    print(
        f"concurrency {results['concurrency']}, {results['seconds']}s per phase, "
        f"{results['cpus']} CPUs"
    )
    print(f"{'raw psycopg, 1 txn/row (ceiling)':40s} {ceiling:>9.1f}/s")
    for key, res in results.items():
        if key.startswith("intake_"):
            print(
                f"{key:40s} {res['per_second']:>9.1f}/s  x{res['ratio_to_ceiling']:<5} "
                f"p50 {res['p50_ms']} ms  p99 {res['p99_ms']} ms  errors {res['errors']}  "
                f"CPU/webhook: server {res['server_cpu_us']} us, "
                f"postgres {res['postgres_cpu_us']} us, loadgen {res['loadgen_cpu_us']} us"
            )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
