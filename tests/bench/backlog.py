"""A webhook outage's backlog drained by the sweep, against Stripe's rate limit.

    python -m tests.bench.backlog [--entries 100000] [--naive-sample 2000]

The local Stripe server runs in a process of its own, limited as Stripe's test mode is
(25 requests per second over all endpoints and 25 per endpoint, tests/stripe_server/FACTS.md
[L1][L2]) and answering every call 30 ms late.  N succeeded PaymentIntents over 12 hours,
each with its INFLIGHT ledger entry in a throwaway PostgreSQL schema; one ``run_sweep``
must commit them all, its client paced at the server's own limit.

Reported: Stripe calls per payment (counted by the server), the wall time beside the floor
those calls set at 25 per second, the busiest second the server saw, and the naive approach
(one retrieve and one per-payment apply per entry, as the sweep was before it listed)
measured on a sample and extrapolated to N, all from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Engine, func, select, text

from ledger.sql import SqlLedger, transactions
from reconcile.engine import Pass, linked_payment_id
from reconcile.ports import Services
from reconcile.ratelimit import LocalRateLimiter
from reconcile.stripe_gateway import StripeGateway
from reconcile.usecases import run_sweep
from tests.bench.ledger import bulk_seed_inflight
from tests.stripe_server import DEFAULT_API_KEY
from tests.support import make_services, throwaway_schema
from worker.db import make_engine
from worker.schema import all_metadata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STRIPE_RPS = 25  # test mode, global and per endpoint [L1][L2]
LATENCY_MS = 30.0
SPAN = 12 * 3600
# Entries claimed and applied together (RECON_SWEEP_BATCH): the service's default.
SWEEP_BATCH = Services.sweep_batch


# -- the Stripe server, in a process of its own -----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class StripeProcess:
    url: str
    proc: subprocess.Popen[bytes]

    def post(self, path: str, body: Any) -> Any:
        r = httpx.post(self.url + path, json=body, timeout=120)
        r.raise_for_status()
        return r.json()

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(self.url + path, params=params, timeout=120)
        r.raise_for_status()
        return r.json()

    def seed(self, pis: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(pis), 10_000):
            self.post("/_test/payment_intents/bulk", list(pis[start : start + 10_000]))

    def reset_stats(self) -> None:
        self.post("/_test/stats/reset", {})

    def stats(self) -> dict[str, Any]:
        return dict(self.get("/_test/stats", per_second="1"))

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def stripe_process(
    rate: float | None = STRIPE_RPS, latency_ms: float = LATENCY_MS
) -> Iterator[StripeProcess]:
    port = _free_port()
    cmd = [sys.executable, "-m", "tests.stripe_server", "--port", str(port)]
    if rate is not None:
        cmd += ["--rate-limit", str(rate), "--endpoint-rate-limit", str(rate)]
    cmd += ["--latency-ms", str(latency_ms)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)  # noqa: S603
    srv = StripeProcess(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                srv.get("/_test/health")
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the Stripe server did not start") from None
                time.sleep(0.1)
        yield srv
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the data ---------------------------------------------------------------------------------


def backlog(n: int, seed: int = 11) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    """n succeeded PaymentIntents over 12 hours that ended an hour ago, and their entries."""
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    end = int(datetime.now(UTC).timestamp()) - 3600
    created = sorted(end - SPAN + rng.randrange(SPAN) for _ in range(n))
    pis = [
        {
            "id": f"pi_{tag}_{i:07}",
            "amount": 1000 + i % 997,
            "currency": "usd",
            "status": "succeeded",
            "created": c,
            "customer": f"cus_{i % 500}",
        }
        for i, c in enumerate(created)
    ]
    entries = [
        (
            p["id"],
            "@stripe",
            f"wallet:cus_{i % 500}",
            p["amount"],
            datetime.fromtimestamp(p["created"], UTC),
        )
        for i, p in enumerate(pis)
    ]
    return pis, entries


def seed_books(engine: Engine, entries: Sequence[tuple[Any, ...]]) -> None:
    for md in all_metadata():
        md.create_all(engine)
    with engine.begin() as conn:
        for start in range(0, len(entries), 20_000):
            # bulk_seed_inflight creates the balances: only with the first slice
            if start == 0:
                bulk_seed_inflight(conn, entries[:20_000])
            else:
                _append_inflight(conn, entries[start : start + 20_000])
        conn.execute(text("ANALYZE ledger_transactions, ledger_balances"))


def _append_inflight(conn: Any, entries: Sequence[tuple[Any, ...]]) -> None:
    """More INFLIGHT entries on balances that exist: rows, postings and reservations."""
    from collections import defaultdict

    from ledger.sql import balances, postings

    credit: dict[str, int] = defaultdict(int)
    debit: dict[str, int] = defaultdict(int)
    txns, posts = [], []
    for ref, src, dst, amount, created in entries:
        tid = "txn_" + uuid.uuid4().hex
        txns.append(
            {
                "id": tid,
                "reference": ref,
                "source": src,
                "destination": dst,
                "amount": amount,
                "currency": "USD",
                "status": "INFLIGHT",
                "committed_amount": 0,
                "voided_amount": 0,
                "link": ref,
                "meta": {},
                "expires_at": None,
                "claimed_until": None,
                "created_at": created,
                "updated_at": created,
            }
        )
        posts.append(
            {
                "transaction_id": tid,
                "kind": "create",
                "amount": amount,
                "idempotency_key": None,
                "created_at": created,
            }
        )
        credit[dst] += amount
        debit[src] += amount
    conn.execute(transactions.insert(), txns)
    conn.execute(postings.insert(), posts)
    b = balances.c
    for name in sorted(set(credit) | set(debit)):
        conn.execute(
            balances.update()
            .where(b.name == name, b.currency == "USD")
            .values(
                inflight_credit=b.inflight_credit + credit[name],
                inflight_debit=b.inflight_debit + debit[name],
            )
        )


def check_books(engine: Engine, n: int) -> dict[str, Any]:
    with engine.connect() as conn:
        by_status = dict(
            conn.execute(
                select(transactions.c.status, func.count()).group_by(transactions.c.status)
            ).all()
        )
        violations = SqlLedger(conn).check_invariants()
    applied = int(by_status.get("APPLIED", 0))
    return {
        "applied": applied,
        "all_applied": applied == n,
        "invariants_ok": not violations,
        "violations": [str(v) for v in violations[:5]],
    }


def busiest_second(stats: dict[str, Any]) -> int:
    return max((int(v) for v in (stats.get("per_second") or {}).values()), default=0)


# -- the two ways ---------------------------------------------------------------------------


def _services(engine: Engine, srv: StripeProcess, rate: float) -> Any:
    # The client is paced at the server's own budget (burst 1: evenly spaced), so that the
    # floor below is the one the run could reach; production runs at 80% of it.
    limiter = LocalRateLimiter(rate, 1)
    endpoint = LocalRateLimiter(rate, 1)
    svc = make_services(engine, srv.url, DEFAULT_API_KEY, rate=rate, sweep_batch=SWEEP_BATCH)
    svc.new_gateway = lambda: StripeGateway(
        DEFAULT_API_KEY,
        srv.url,
        limiter,
        endpoint_limiter=lambda _: endpoint,
        backoff_initial=0.05,
        backoff_max=1.0,
    )
    return svc


def sweep_case(srv: StripeProcess, n: int, rate: float) -> dict[str, Any]:
    pis, entries = backlog(n)
    srv.post("/_test/reset", {})
    srv.seed(pis)
    with throwaway_schema("recon_backlog_") as url:
        engine = make_engine(url, pool_size=4, max_overflow=4)
        try:
            t0 = time.perf_counter()
            seed_books(engine, entries)
            seed_s = time.perf_counter() - t0
            svc = _services(engine, srv, rate)
            srv.reset_stats()
            cpu0 = time.process_time()
            srv_cpu0 = srv.cpu_seconds()
            t0 = time.perf_counter()
            result = run_sweep(svc, trigger="bench", actor="bench", older_than=timedelta(0))
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            srv_cpu = srv.cpu_seconds() - srv_cpu0
            stats = srv.stats()
            books = check_books(engine, n)
        finally:
            engine.dispose()
    calls = _calls(stats)
    floor = calls / STRIPE_RPS
    return {
        "entries": n,
        "run_status": result.status,
        "stripe_calls": calls,
        "http_429": _calls(stats, "429"),
        "calls_per_payment": round(calls / n, 5),
        "wall_seconds": round(wall, 2),
        "floor_seconds": round(floor, 2),
        "wall_over_floor": round(wall / floor, 3) if floor else None,
        "busiest_second": busiest_second(stats),
        "sweep_cpu_seconds": round(cpu, 1),
        "stripe_server_cpu_seconds": round(srv_cpu, 1),
        "seed_seconds": round(seed_s, 1),
        **books,
    }


def _calls(stats: dict[str, Any], outcome: str | None = None) -> int:
    """Calls the server saw (every /v1 call, 429s included), or those of one outcome."""
    if outcome is None:
        return int(stats.get("total", 0))
    return int((stats.get("by_outcome") or {}).get(outcome, 0))


def naive_case(srv: StripeProcess, n: int, rate: float) -> dict[str, Any]:
    """One retrieve per entry, then the per-payment apply: what the sweep did per entry
    before it listed.  Measured on ``n`` entries."""
    pis, entries = backlog(n, seed=12)
    srv.post("/_test/reset", {})
    srv.seed(pis)
    with throwaway_schema("recon_naive_") as url:
        engine = make_engine(url, pool_size=4, max_overflow=4)
        try:
            seed_books(engine, entries)
            svc = _services(engine, srv, rate)
            srv.reset_stats()
            gw = svc.new_gateway()
            p = Pass(svc, run=None)
            t0 = time.perf_counter()
            with engine.connect() as conn:
                txns = list(SqlLedger(conn).list_inflight(datetime.now(UTC), n))
            for txn in txns:
                pid = linked_payment_id(txn)
                p.apply(pid, gw.retrieve(pid))
            wall = time.perf_counter() - t0
            stats = srv.stats()
            books = check_books(engine, n)
        finally:
            engine.dispose()
    calls = _calls(stats)
    return {
        "entries": n,
        "stripe_calls": calls,
        "calls_per_payment": round(calls / n, 4),
        "wall_seconds": round(wall, 2),
        "seconds_per_payment": round(wall / n, 5),
        **books,
    }


def run(
    entries: int = 100_000, naive_sample: int = 2000, rate: float = STRIPE_RPS
) -> dict[str, Any]:
    with stripe_process() as srv:
        sweep = sweep_case(srv, entries, rate)
        naive = naive_case(srv, naive_sample, rate) if naive_sample else None
    out: dict[str, Any] = {
        "stripe_limit_rps": STRIPE_RPS,
        "latency_ms": LATENCY_MS,
        "client_rate_rps": rate,
        "sweep": sweep,
    }
    if naive:
        naive["extrapolated_seconds"] = round(naive["seconds_per_payment"] * entries, 1)
        out["naive"] = naive
        out["sweep_speedup_over_naive"] = round(
            naive["extrapolated_seconds"] / max(sweep["wall_seconds"], 1e-9), 1
        )
    return out


def table(res: dict[str, Any]) -> str:
    s = res["sweep"]
    ok = s["all_applied"] and s["invariants_ok"]
    lines = [
        f"Backlog of {s['entries']:,} stale entries, local Stripe at {res['stripe_limit_rps']} "
        f"req/s + {res['latency_ms']:.0f} ms per call (client paced at {res['client_rate_rps']}, "
        f"sets of {SWEEP_BATCH})",
        f"{'way':22} {'calls':>7} {'calls/pmt':>9} {'wall s':>8} {'floor s':>8} "
        f"{'x floor':>7} {'max/s':>5} {'429':>4} {'ok':>3}",
        f"{'sweep (list + sets)':22} {s['stripe_calls']:>7} {s['calls_per_payment']:>9.4f} "
        f"{s['wall_seconds']:>8.1f} {s['floor_seconds']:>8.1f} {s['wall_over_floor']:>7.2f} "
        f"{s['busiest_second']:>5} {s['http_429']:>4} {'yes' if ok else 'NO':>3}",
    ]
    n = res.get("naive")
    if n:
        lines.append(
            f"{'naive, ' + format(n['entries'], ',') + ' sample':22} {n['stripe_calls']:>7} "
            f"{n['calls_per_payment']:>9.4f} {n['wall_seconds']:>8.1f} "
            f"{'':>8} {'':>7} {'':>5} {'':>4} "
            f"{'yes' if n['all_applied'] and n['invariants_ok'] else 'NO':>3}"
        )
        lines.append(
            f"naive extrapolated to {s['entries']:,}: {n['extrapolated_seconds']:.0f} s "
            f"(the sweep: {s['wall_seconds']:.0f} s, x{res['sweep_speedup_over_naive']} faster)"
        )
    lines.append(
        f"CPU: sweep process {s['sweep_cpu_seconds']} s, Stripe server "
        f"{s['stripe_server_cpu_seconds']} s (target: wall <= 1.3x floor)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--naive-sample", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = run(a.entries, a.naive_sample)
    print(json.dumps(res, indent=2) if a.json else table(res))


if __name__ == "__main__":
    main()
