"""The intake benchmark's ceiling: raw inserts of the same rows by plain psycopg, one
transaction per row, in a process of its own.

    python -m tests.bench.rawinsert --url URL --connections 16 --seconds 4 --run ID

Each of ``connections`` threads holds one connection and inserts its own rows, one
autocommit INSERT each (the statement is the transaction: one round trip, committed when
it returns), prepared, the rows built before the clock starts so the timed loop is psycopg
and the server alone.  Prints ``ready``, waits for a line on stdin, runs for ``seconds``,
prints one JSON line (rows, rate, p50/p99 per INSERT, its own CPU), then keeps its
connections until a second line on stdin so the caller can read their backends' CPU.

Layouts measured on this 2-core machine with 16 connections (rows/s): 1 process ~7,500,
2 processes ~7,000, 4 ~6,500, 16 ~4,600 (more processes, more context switches); BEGIN +
INSERT + COMMIT instead of one autocommit INSERT, ~4,300.  The fastest is the ceiling.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from tests.bench.loadgen import BUILD_RATE, make_event_body

RAW_SQL = (
    "INSERT INTO recon_inbox (event_id, type, payment_id, livemode, event_created, payload,"
    " source, status, attempts, received_at) VALUES (%s, %s, %s, false, %s, %s, 'webhook',"
    " 'pending', 0, now()) ON CONFLICT (event_id) DO NOTHING"
)


def rows(count: int, run: str) -> list[tuple[Any, ...]]:
    out = []
    for n in range(count):
        body = make_event_body(n, run)
        event = json.loads(body)
        out.append(
            (
                event["id"],
                event["type"],
                event["data"]["object"]["id"],
                event["created"],
                body.decode(),
            )
        )
    return out


def main(argv: list[str] | None = None) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    ap = argparse.ArgumentParser(prog="python -m tests.bench.rawinsert", description=__doc__)
    ap.add_argument("--url", required=True, help="database URL (SQLAlchemy form accepted)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--run", required=True, help="event id prefix, unique per run")
    a = ap.parse_args(argv)
    conninfo = make_url(a.url).set(drivername="postgresql").render_as_string(hide_password=False)
    # Enough rows for any connection at the fastest rate seen here, with room to spare.
    per = int(a.seconds * BUILD_RATE / 4) + 10
    work = [rows(per, f"{a.run}c{c:02d}") for c in range(a.connections)]
    conns = [psycopg.connect(conninfo, autocommit=True) for _ in range(a.connections)]
    latencies: list[list[float]] = [[] for _ in range(a.connections)]
    errors: list[str] = []
    exhausted = [False]
    print("ready", flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + a.seconds

    def worker(i: int) -> None:
        conn, mine, lat = conns[i], work[i], latencies[i]
        try:
            for row in mine:
                if time.monotonic() >= deadline:
                    return
                t0 = time.perf_counter()
                conn.execute(RAW_SQL, row, prepare=True)
                lat.append(time.perf_counter() - t0)
            exhausted[0] = True
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    cpu0, started = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
    lat = sorted(x for part in latencies for x in part)

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(len(lat) * q))] * 1000, 2) if lat else None

    result = {
        "ok": len(lat),
        "seconds": round(elapsed, 3),
        "per_second": round(len(lat) / elapsed, 1) if elapsed else 0.0,
        "mean_ms": round(sum(lat) / len(lat) * 1000, 2) if lat else None,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "connections": a.connections,
        "ran_out_of_rows": exhausted[0],
        "client_own_cpu_s": round(cpu, 3),
        "errors": errors[:3],
    }
    print(json.dumps(result), flush=True)
    sys.stdin.readline()
    for conn in conns:
        conn.close()


if __name__ == "__main__":
    main()
