"""The backlog split over 1, 2 and 4 real Celery workers sharing one Stripe budget.

    python -m tests.bench.scaleout [--entries 100000] [--workers 1,2,4]

The same backlog as tests/bench/backlog.py (succeeded PaymentIntents, their INFLIGHT
entries), the local Stripe server in its own process at 25 requests per second and 30 ms a
call.  For each worker count k: a fresh schema, k ``celery -A worker.celery_app worker``
processes (one task at a time each) on Redis (database 11 of the local server, a queue of
this run's own), and k ``recon.sweep`` tasks, one per part of ``split_sweep`` (what
``recon sweep --parts k`` sends).  Every worker paces itself through the Redis-shared limiter
(reconcile/ratelimit.py), set to 24 per second, burst 1, under Stripe's 25.

Reported per k: wall time (first run's start to last run's end, from the runs table),
payments per second, the server's own busiest clock second and busiest sliding second,
429s, and the CPU seconds of each worker process and of the Stripe server, so that a
machine's cores binding before the budget does shows as such.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import Engine, select

from reconcile.tables import runs
from reconcile.usecases import split_sweep
from tests.bench.backlog import (
    STRIPE_RPS,
    SWEEP_BATCH,
    StripeProcess,
    backlog,
    check_books,
    cpu_seconds,
    seed_books,
    stripe_process,
)
from tests.procs import Service, celery_worker, wait_until
from tests.stripe_server import DEFAULT_API_KEY
from tests.support import make_services, throwaway_schema
from worker.db import make_engine

REDIS = "redis://127.0.0.1:6379/11"
CLIENT_RPS = 24  # under the 25 of the budget, spaced evenly (burst 1)


def _runs_done(engine: Engine, k: int) -> list[dict[str, Any]] | None:
    with engine.connect() as conn:
        rows = [
            dict(r)
            for r in conn.execute(select(runs).where(runs.c.job == "sweep")).mappings().all()
        ]
    if len(rows) >= k and all(r["status"] != "running" for r in rows):
        return rows
    return None


def _proc_cpu(workers: Sequence[Service]) -> dict[int, float]:
    out: dict[int, float] = {}
    for w in workers:
        assert w.proc is not None
        for pid in [w.proc.pid, *w.children()]:
            try:
                out[pid] = cpu_seconds(pid)
            except OSError:
                continue
    return out


def one(srv: StripeProcess, entries: Sequence[tuple[Any, ...]], k: int) -> dict[str, Any]:
    queue = f"bench-scaleout-{uuid.uuid4().hex[:8]}"
    logdir = Path(tempfile.mkdtemp(prefix="recon-scaleout-"))
    with throwaway_schema("recon_scaleout_") as url:
        engine = make_engine(url, pool_size=2, max_overflow=2)
        workers: list[Service] = []
        try:
            seed_books(engine, entries)
            env = {
                "RECON_DATABASE_URL": url,
                "RECON_BROKER_URL": REDIS,
                "RECON_REDIS_URL": REDIS,
                "STRIPE_API_KEY": DEFAULT_API_KEY,
                "RECON_STRIPE_API_BASE": srv.url,
                "RECON_STRIPE_RATE_LIMIT": str(CLIENT_RPS),
                "RECON_STRIPE_ENDPOINT_RATE_LIMIT": str(CLIENT_RPS),
                "RECON_STRIPE_RATE_BURST": "1",
                "RECON_SWEEP_BATCH": str(SWEEP_BATCH),
                "RECON_LOG_LEVEL": "WARNING",
            }
            for i in range(k):
                w = celery_worker(env, logdir, concurrency=1, name=f"{queue}-{i}")
                w.argv += ["-Q", queue, "--prefetch-multiplier=1"]
                workers.append(w.start())
            for w in workers:
                wait_until(lambda w=w: "ready" in w.log_text(), timeout=90, what=f"{w.name} ready")
            svc = make_services(engine, srv.url, DEFAULT_API_KEY)
            parts = split_sweep(svc, parts=k, older_than=timedelta(0))
            app = Celery(broker=REDIS)
            srv.reset_stats()
            cpu0 = _proc_cpu(workers)
            srv_cpu0 = srv.cpu_seconds()
            t0 = time.perf_counter()
            for lo, hi in parts:
                app.send_task(
                    "recon.sweep",
                    kwargs={
                        "trigger": "bench",
                        "actor": "bench",
                        "older_than_seconds": 0,
                        "newer_than": lo.isoformat() if lo else None,
                        "created_before": hi.isoformat() if hi else None,
                    },
                    queue=queue,
                )
            done = wait_until(
                lambda: _runs_done(engine, len(parts)),
                timeout=3600,
                every=0.2,
                what="the sweep runs",
            )
            observed = time.perf_counter() - t0
            cpu1 = _proc_cpu(workers)
            srv_cpu = srv.cpu_seconds() - srv_cpu0
            stats = srv.stats()
            books = check_books(engine, len(entries))
            app.close()
        finally:
            for w in workers:
                w.terminate(timeout=15)
            engine.dispose()
    start = min(r["started_at"] for r in done)
    end = max(r["finished_at"] for r in done)
    wall = (end - start).total_seconds()
    calls = int(stats.get("total", 0))
    per_second = [int(v) for v in (stats.get("per_second") or {}).values()]
    return {
        "workers": k,
        "parts": len(parts),
        "runs": [r["status"] for r in done],
        "stripe_calls": calls,
        "http_429": int((stats.get("by_outcome") or {}).get("429", 0)),
        "wall_seconds": round(wall, 2),
        "observed_seconds": round(observed, 2),
        "payments_per_second": round(books["applied"] / wall, 1) if wall else None,
        "floor_seconds": round(calls / STRIPE_RPS, 2),
        "wall_over_floor": round(wall / (calls / STRIPE_RPS), 3) if calls else None,
        "busiest_second": max(per_second, default=0),
        "busiest_sliding_second": int(stats.get("peak", 0)),
        "budget_held": max(per_second, default=0) <= STRIPE_RPS,
        "worker_cpu_seconds": sorted(
            (round(cpu1[pid] - cpu0.get(pid, 0.0), 1) for pid in cpu1), reverse=True
        ),
        "stripe_server_cpu_seconds": round(srv_cpu, 1),
        "cores": os.cpu_count(),
        **books,
    }


def run(entries: int = 100_000, workers: Sequence[int] = (1, 2, 4)) -> dict[str, Any]:
    pis, books = backlog(entries)
    out: dict[str, Any] = {
        "entries": entries,
        "stripe_limit_rps": STRIPE_RPS,
        "client_rate_rps": CLIENT_RPS,
        "cases": [],
    }
    with stripe_process() as srv:
        srv.seed(pis)
        for k in workers:
            out["cases"].append(one(srv, books, k))
    base = out["cases"][0]["payments_per_second"] if out["cases"] else None
    for case in out["cases"]:
        pps = case["payments_per_second"]
        case["speedup"] = round(pps / base, 2) if base and pps else None
    return out


def table(res: dict[str, Any]) -> str:
    lines = [
        f"Scale-out: {res['entries']:,} stale entries over k Celery workers, one shared budget "
        f"(Stripe {res['stripe_limit_rps']}/s; workers paced at {res['client_rate_rps']}/s via "
        "Redis)",
        f"{'k':>2} {'calls':>6} {'wall s':>7} {'floor s':>7} {'x floor':>7} {'pmt/s':>7} "
        f"{'speedup':>7} {'max/s':>5} {'peak':>4} {'429':>4} {'held':>4} {'ok':>3}  "
        "CPU s per worker process | Stripe server",
    ]
    for c in res["cases"]:
        ok = c["all_applied"] and c["invariants_ok"]
        lines.append(
            f"{c['workers']:>2} {c['stripe_calls']:>6} {c['wall_seconds']:>7.1f} "
            f"{c['floor_seconds']:>7.1f} {c['wall_over_floor']:>7.2f} "
            f"{c['payments_per_second']:>7.0f} {c['speedup']:>7} {c['busiest_second']:>5} "
            f"{c['busiest_sliding_second']:>4} {c['http_429']:>4} "
            f"{'yes' if c['budget_held'] else 'NO':>4} {'yes' if ok else 'NO':>3}  "
            f"{' '.join(str(x) for x in c['worker_cpu_seconds'] if x >= 0.5)} | "
            f"{c['stripe_server_cpu_seconds']}"
        )
    lines.append(
        f"(machine: {res['cases'][0]['cores'] if res['cases'] else '?'} cores, shared with "
        "PostgreSQL, the Stripe server and this process)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = run(a.entries, [int(x) for x in a.workers.split(",")])
    print(json.dumps(res, indent=2, default=str) if a.json else table(res))


if __name__ == "__main__":
    main()
