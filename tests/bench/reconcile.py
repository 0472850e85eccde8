"""Stripe API calls per reconciled payment, and sweep wall time against the rate-limit floor.

    python -m tests.bench.reconcile [--dense 10000] [--sparse 200] [--stripe-total 10000]

Two cases, each in its own throwaway PostgreSQL schema (dropped after) with its own local
Stripe-compatible server in a process of its own (no rate limit: the floor is computed, not
waited for).  The server is kept out of the sweep's process because real Stripe is: in the
same process its page building took the sweep's interpreter lock, about 2 s of a 10,000
sweep that was ours to answer for.

- dense: N succeeded PaymentIntents created over ~3 hours, and the N matching INFLIGHT
  ledger entries; one ``run_sweep`` must commit every one of them;
- sparse: the same number of Stripe payments spread over 30 days, of which only a few
  hundred have an INFLIGHT ledger entry: listing would waste pages, so retrieves win.

Reported: payments reconciled, Stripe calls (counted by the server), calls per payment,
wall time, and the floor Stripe's rate limits set beside the wall time: the global budget
(25/s test, 100/s live) or the busiest endpoint's own 25/s, whichever binds.  Every entry
must end APPLIED and the ledger invariants must hold.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text

from ledger.sql import SqlLedger, transactions
from reconcile.ports import Services
from reconcile.usecases import run_sweep
from tests.bench.backlog import stripe_process
from tests.bench.ledger import bulk_seed_inflight
from tests.stripe_server import DEFAULT_API_KEY
from tests.support import make_services, throwaway_schema
from worker.db import make_engine
from worker.schema import all_metadata

TEST_MODE_RPS = 25
LIVE_MODE_RPS = 100
# Each endpoint has its own budget on top of the global one (tests/stripe_server/FACTS.md
# [L2]): 25/s by default, so calls to one endpoint cannot go faster even in live mode.
ENDPOINT_RPS = 25


def floor_seconds(by_endpoint: dict[str, int], global_rps: float) -> float:
    """The least time Stripe's limits allow for these calls: the global budget, or the
    busiest endpoint's own, whichever binds."""
    total = sum(by_endpoint.values())
    busiest = max(by_endpoint.values(), default=0)
    return max(total / global_rps, busiest / ENDPOINT_RPS)


def _case(
    label: str,
    stripe_created: Sequence[int],
    ledger_picks: Sequence[int],
    sweep_batch: int,
) -> dict[str, Any]:
    """Seed Stripe with one succeeded PaymentIntent per ``stripe_created`` second and the
    ledger with INFLIGHT entries for the indexes in ``ledger_picks``; sweep once."""
    tag = uuid.uuid4().hex[:6]
    pis = [
        {
            "id": f"pi_{tag}_{i:06}",
            "amount": 1000 + i % 997,
            "currency": "usd",
            "status": "succeeded",
            "created": created,
            "customer": f"cus_{i % 500}",
        }
        for i, created in enumerate(stripe_created)
    ]
    entries = [
        (
            pis[i]["id"],
            "@stripe",
            f"wallet:cus_{i % 500}",
            pis[i]["amount"],
            datetime.fromtimestamp(pis[i]["created"], UTC),
        )
        for i in ledger_picks
    ]
    with (
        throwaway_schema("recon_bench_") as url,
        stripe_process(rate=None, latency_ms=0.0) as srv,
    ):
        engine = make_engine(url, pool_size=4, max_overflow=2)
        try:
            for md in all_metadata():
                md.create_all(engine)
            t0 = time.perf_counter()
            srv.seed(pis)
            with engine.begin() as conn:
                bulk_seed_inflight(conn, entries)
                conn.execute(text("ANALYZE ledger_transactions, ledger_balances"))
            seed_s = time.perf_counter() - t0
            svc = make_services(
                engine,
                srv.url,
                DEFAULT_API_KEY,
                rate=10_000.0,
                sweep_batch=sweep_batch,
            )
            srv.reset_stats()
            t0 = time.perf_counter()
            result = run_sweep(svc, trigger="bench", actor="bench", older_than=timedelta(0))
            wall = time.perf_counter() - t0
            stats = srv.stats()
            calls = int(stats["total"])
            by_endpoint = {
                ep: int(stats["by_endpoint"].get(ep, {}).get("total", 0))
                for ep in ("payment_intents.list", "payment_intents.retrieve")
            }
            with engine.connect() as conn:
                by_status = dict(
                    conn.execute(
                        select(transactions.c.status, func.count()).group_by(transactions.c.status)
                    ).all()
                )
                violations = SqlLedger(conn).check_invariants()
        finally:
            engine.dispose()
    applied = int(by_status.get("APPLIED", 0))
    n = len(entries)
    return {
        "case": label,
        "stripe_payments": len(pis),
        "ledger_entries": n,
        "sweep_batch": sweep_batch,
        "run_status": result.status,
        "counts": result.counts,
        "reconciled": applied,
        "all_applied": applied == n,
        "invariants_ok": not violations,
        "violations": [str(v) for v in violations[:5]],
        "stripe_calls": calls,
        "calls_by_endpoint": by_endpoint,
        "calls_per_payment": round(calls / n, 4) if n else None,
        "wall_seconds": round(wall, 2),
        "seed_seconds": round(seed_s, 2),
        "payments_per_second": round(applied / wall, 1) if wall else None,
        "floor_test_mode_s": round(floor_seconds(by_endpoint, TEST_MODE_RPS), 2),
        "floor_live_mode_s": round(floor_seconds(by_endpoint, LIVE_MODE_RPS), 2),
        "wall_over_test_floor": (
            round(wall / floor_seconds(by_endpoint, TEST_MODE_RPS), 2) if calls else None
        ),
    }


def run(
    dense: int = 10_000,
    sparse: int = 200,
    stripe_total: int = 10_000,
    sweep_batch: int = Services.sweep_batch,
    seed: int = 7,
) -> dict[str, Any]:
    rng = random.Random(seed)
    end = int(datetime.now(UTC).timestamp()) - 3600
    # dense: N payments over ~3 hours, every one in the ledger
    span = 3 * 3600
    dense_created = sorted(end - span + rng.randrange(span) for _ in range(dense))
    out: dict[str, Any] = {
        "dense": _case("dense", dense_created, range(dense), sweep_batch),
    }
    if sparse:
        span = 30 * 86400 - 7200
        sparse_created = sorted(end - span + rng.randrange(span) for _ in range(stripe_total))
        picks = sorted(rng.sample(range(stripe_total), min(sparse, stripe_total)))
        out["sparse"] = _case("sparse", sparse_created, picks, sweep_batch)
    return out


def table(results: dict[str, Any]) -> str:
    lines = [
        "Stripe API calls per reconciled payment (one run_sweep, local Stripe server)",
        f"{'case':7} {'stripe':>7} {'ledger':>7} {'applied':>7} {'calls':>6} {'calls/pmt':>9} "
        f"{'wall s':>7} {'floor25 s':>9} {'floor100 s':>10} {'ok':>3}",
    ]
    for r in results.values():
        ok = r["all_applied"] and r["invariants_ok"]
        lines.append(
            f"{r['case']:7} {r['stripe_payments']:>7} {r['ledger_entries']:>7} "
            f"{r['reconciled']:>7} {r['stripe_calls']:>6} {r['calls_per_payment']:>9.4f} "
            f"{r['wall_seconds']:>7.2f} {r['floor_test_mode_s']:>9.2f} "
            f"{r['floor_live_mode_s']:>10.2f} {'yes' if ok else 'NO':>3}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dense", type=int, default=10_000)
    ap.add_argument("--sparse", type=int, default=200)
    ap.add_argument("--stripe-total", type=int, default=10_000)
    ap.add_argument("--sweep-batch", type=int, default=Services.sweep_batch)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = run(a.dense, a.sparse, a.stripe_total, a.sweep_batch)
    print(json.dumps(res, indent=2) if a.json else table(res))


if __name__ == "__main__":
    main()
