"""Ledger commits per second on PostgreSQL from one process, beside pgbench.

    python -m tests.bench.ledger [--count 5000] [--batch 50] [--pgbench-seconds 10]

A throwaway database (``recon_bench_<hex>``, dropped after) holds both pgbench's tables and
the ledger's, so both run on the same server, the same disk and one connection each.
N INFLIGHT transactions are pre-created by bulk insert (balances kept consistent, so
``check_invariants()`` holds), then committed through ``SqlLedger.commit``:

- ``single``: one database transaction per ledger commit (the honest rate: one fsync each);
- ``batched``: ``--batch`` ledger commits per database transaction.

Both layouts of source balance are measured: one hot ``@stripe`` row that every transaction
debits (the production shape), and one source per wallet.  With one connection the hot row
cannot contend; it is measured so that the table says so rather than assumes it.

pgbench ``simple-update`` (``-n -c 1 -j 1 -b simple-update``) runs before and after the
ledger phases; the mean of the two is the reference, to cancel drift.  Every phase is
bounded in time as well as in count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, create_engine, event, insert, text
from sqlalchemy.engine import make_url

from ledger.sql import SqlLedger, balances, postings, transactions
from tests.support import PG_URL
from worker.db import make_engine, normalize_url
from worker.schema import all_metadata

PGBENCH = os.environ.get("PGBENCH", shutil.which("pgbench") or "/usr/bin/pgbench")
TARGET_RATIO = 0.5


# --------------------------------------------------------------------------- database


@contextlib.contextmanager
def throwaway_database(prefix: str = "recon_bench_") -> Iterator[str]:
    """A fresh database on the test server; yields its URL and drops it afterwards."""
    name = prefix + uuid.uuid4().hex[:8]
    admin = create_engine(normalize_url(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(normalize_url(PG_URL)).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def create_schema(engine: Engine) -> None:
    for md in all_metadata():
        md.create_all(engine)


def bulk_seed_inflight(
    conn: Any,
    entries: Sequence[tuple[str, str, str, int, datetime]],
    currency: str = "USD",
    metadata: Sequence[dict[str, Any]] | None = None,
) -> None:
    """Insert INFLIGHT transactions (reference, source, destination, amount, created) fast.

    Exactly what ``SqlLedger.create(inflight=True)`` would leave behind (a transaction row,
    a ``create`` posting, the amounts reserved on both balances), in a few multi-row
    statements instead of eight round trips each.  Balances must not exist yet.
    """
    credit: dict[str, int] = defaultdict(int)
    debit: dict[str, int] = defaultdict(int)
    txns: list[dict[str, Any]] = []
    posts: list[dict[str, Any]] = []
    first: dict[str, datetime] = {}
    for n, (ref, src, dst, amount, created) in enumerate(entries):
        txn_id = "txn_" + uuid.uuid4().hex
        meta = dict(metadata[n]) if metadata else {}
        txns.append(
            {
                "id": txn_id,
                "reference": ref,
                "source": src,
                "destination": dst,
                "amount": amount,
                "currency": currency,
                "status": "INFLIGHT",
                "committed_amount": 0,
                "voided_amount": 0,
                "link": meta.get("stripe_payment_intent") or ref,
                "meta": meta,
                "expires_at": None,
                "claimed_until": None,
                "created_at": created,
                "updated_at": created,
            }
        )
        posts.append(
            {
                "transaction_id": txn_id,
                "kind": "create",
                "amount": amount,
                "idempotency_key": None,
                "created_at": created,
            }
        )
        debit[src] += amount
        credit[dst] += amount
        for name in (src, dst):
            first[name] = min(created, first.get(name, created))
    bals = [
        {
            "name": name,
            "currency": currency,
            "balance": 0,
            "inflight_credit": credit.get(name, 0),
            "inflight_debit": debit.get(name, 0),
            "created_at": first[name],
        }
        for name in sorted(first)
    ]
    for rows, table in ((bals, balances), (txns, transactions), (posts, postings)):
        for start in range(0, len(rows), 2000):
            conn.execute(insert(table), rows[start : start + 2000])


# --------------------------------------------------------------------------- pgbench


def _libpq_args(url: str) -> list[str]:
    u = make_url(url)
    args = ["-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres"]
    return [*args, u.database or "postgres"]


def _pgbench_env(url: str) -> dict[str, str]:
    env = dict(os.environ)
    pw = make_url(url).password
    if pw:
        env["PGPASSWORD"] = str(pw)
    return env


def pgbench_init(url: str) -> None:
    subprocess.run(
        [PGBENCH, "-i", "-s", "1", "-q", *_libpq_args(url)],
        check=True,
        capture_output=True,
        env=_pgbench_env(url),
        timeout=120,
    )


def pgbench_simple_update(url: str, seconds: int, clients: int = 1) -> float:
    out = subprocess.run(
        [
            PGBENCH,
            "-n",
            "-c",
            str(clients),
            "-j",
            str(clients),
            "-T",
            str(seconds),
            "-b",
            "simple-update",
            *_libpq_args(url),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=_pgbench_env(url),
        timeout=seconds + 60,
    ).stdout
    m = re.search(r"tps = ([0-9.]+)", out)
    if not m:
        raise RuntimeError(f"no tps in pgbench output:\n{out}")
    return float(m.group(1))


# --------------------------------------------------------------------------- profiling


class StatementProfile:
    """Wall time spent inside the driver per statement kind, and in COMMIT."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._t0: float = 0.0

    @staticmethod
    def _kind(statement: str) -> str:
        s = " ".join(statement.split()[:6]).upper()
        for table in ("LEDGER_TRANSACTIONS", "LEDGER_BALANCES", "LEDGER_POSTINGS"):
            if table in s or table in statement.upper()[:200]:
                verb = s.split()[0]
                lock = " FOR UPDATE" if "FOR UPDATE" in statement.upper() else ""
                return f"{verb} {table.lower()}{lock}"
        return s.split()[0] if s else "?"

    def _before(self, *a: Any, **k: Any) -> None:
        self._t0 = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, *a: Any, **k: Any) -> None:
        kind = self._kind(statement)
        self.seconds[kind] += time.perf_counter() - self._t0
        self.counts[kind] += 1

    def __enter__(self) -> StatementProfile:
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        return self

    def __exit__(self, *exc: Any) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)

    def report(self, commits: int, wall: float, commit_s: float) -> dict[str, Any]:
        in_db = sum(self.seconds.values())
        self.seconds["COMMIT (fsync)"] = commit_s
        self.counts["COMMIT (fsync)"] = commits
        per = {
            k: {
                "per_commit": round(self.counts[k] / commits, 2),
                "us_per_commit": round(self.seconds[k] / commits * 1e6, 1),
            }
            for k in sorted(self.seconds, key=lambda k: -self.seconds[k])
        }
        return {
            "statements_per_commit": round(sum(self.counts.values()) / commits, 2),
            "us_per_commit_total": round(wall / commits * 1e6, 1),
            "us_per_commit_in_statements": round(in_db / commits * 1e6, 1),
            "us_per_commit_in_db_commit": round(commit_s / commits * 1e6, 1),
            "us_per_commit_python": round((wall - in_db - commit_s) / commits * 1e6, 1),
            "by_statement": per,
        }


# --------------------------------------------------------------------------- phases


def _seed(engine: Engine, tag: str, n: int, hot_source: bool, wallets: int = 500) -> list[str]:
    now = datetime.now(UTC) - timedelta(hours=1)
    entries = []
    for i in range(n):
        w = i % wallets
        src = "@stripe" if hot_source else f"@stripe:{tag}:w{w}"
        entries.append((f"{tag}_{i:06}", src, f"wallet:{tag}:cus_{w}", 1000 + i % 997, now))
    with engine.begin() as conn:
        bulk_seed_inflight(conn, entries)
    return [e[0] for e in entries]


def commit_phase(
    engine: Engine,
    refs: Sequence[str],
    batch: int,
    max_seconds: float,
    profile: bool = False,
) -> dict[str, Any]:
    """Commit ``refs`` in order, ``batch`` per database transaction, until done or timed out."""
    done = 0
    commit_s = 0.0
    prof = StatementProfile(engine) if profile else None
    with engine.connect() as conn, prof or contextlib.nullcontext():
        start = time.perf_counter()
        deadline = start + max_seconds
        while done < len(refs) and time.perf_counter() < deadline:
            chunk = refs[done : done + batch]
            trans = conn.begin()
            ledger = SqlLedger(conn)
            for ref in chunk:
                ledger.commit(ref)
            t0 = time.perf_counter()
            trans.commit()
            commit_s += time.perf_counter() - t0
            done += len(chunk)
        wall = time.perf_counter() - start
    res: dict[str, Any] = {
        "commits": done,
        "seconds": round(wall, 3),
        "per_second": round(done / wall, 1) if wall else 0.0,
        "batch": batch,
    }
    if prof is not None and done:
        res["profile"] = prof.report(done, wall, commit_s)
    return res


def run(
    count: int = 5000,
    batch: int = 50,
    pgbench_seconds: int = 10,
    max_phase_seconds: float = 12.0,
    layouts: tuple[str, ...] = ("hot_source", "per_wallet_source"),
    profile: bool = True,
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "count": count,
        "batch": batch,
        "connections": 1,
        "cpus": os.cpu_count(),
        "pgbench_seconds": pgbench_seconds,
    }
    with throwaway_database() as url:
        pgbench_init(url)
        engine = make_engine(url, pool_size=2, max_overflow=0)
        try:
            create_schema(engine)
            pg_before = pgbench_simple_update(url, pgbench_seconds)
            for layout in layouts:
                hot = layout == "hot_source"
                prof = hot and profile
                refs = _seed(engine, layout[:3], (3 if prof else 2) * count, hot)
                single_refs, batched_refs = refs[:count], refs[count : 2 * count]
                with engine.connect() as conn:
                    conn.execute(text("ANALYZE"))
                    conn.commit()
                results[f"{layout}_single"] = commit_phase(
                    engine, single_refs, 1, max_phase_seconds
                )
                results[f"{layout}_batched"] = commit_phase(
                    engine, batched_refs, batch, max_phase_seconds
                )
                if prof:
                    # Profiled separately: the per-statement hooks cost time of their own,
                    # so the figure above is measured without them.
                    results[f"{layout}_single_profiled"] = commit_phase(
                        engine, refs[2 * count :], 1, max_phase_seconds, profile=True
                    )
            pg_after = pgbench_simple_update(url, pgbench_seconds)
            with engine.connect() as conn:
                violations = SqlLedger(conn).check_invariants()
            results["invariants_ok"] = not violations
            if violations:
                results["violations"] = [str(v) for v in violations[:5]]
        finally:
            engine.dispose()
    ref = (pg_before + pg_after) / 2
    results["pgbench_simple_update_tps"] = {
        "before": round(pg_before, 1),
        "after": round(pg_after, 1),
        "mean": round(ref, 1),
    }
    for key, val in list(results.items()):
        if isinstance(val, dict) and "per_second" in val:
            val["ratio_to_pgbench"] = round(val["per_second"] / ref, 3) if ref else None
    single = results.get("hot_source_single", {}).get("ratio_to_pgbench")
    results["target_ratio"] = TARGET_RATIO
    results["meets_target"] = single is not None and single >= TARGET_RATIO
    return results


def table(results: dict[str, Any]) -> str:
    pg = results["pgbench_simple_update_tps"]
    lines = [
        f"ledger commits/s on PostgreSQL, 1 connection, {results['count']} inflight each "
        f"(pgbench simple-update, 1 client: {pg['before']} before, {pg['after']} after)",
        f"{'phase':40} {'commits':>8} {'per s':>9} {'x pgbench':>10}",
    ]
    for key, val in results.items():
        if isinstance(val, dict) and "per_second" in val:
            label = key + (f" ({val['batch']}/txn)" if val["batch"] > 1 else " (1/txn)")
            lines.append(
                f"{label:40} {val['commits']:>8} {val['per_second']:>9.1f} "
                f"{val['ratio_to_pgbench']:>10.3f}"
            )
    lines.append(f"{'pgbench simple-update (mean)':40} {'':>8} {pg['mean']:>9.1f} {1.0:>10.3f}")
    prof = results.get("hot_source_single_profiled", {}).get("profile")
    if prof:
        lines.append(
            f"single-commit profile: {prof['statements_per_commit']} statements/commit, "
            f"{prof['us_per_commit_total']} us/commit = {prof['us_per_commit_in_statements']} "
            f"in statements + {prof['us_per_commit_in_db_commit']} in COMMIT + "
            f"{prof['us_per_commit_python']} Python/SQLAlchemy"
        )
        for kind, v in prof["by_statement"].items():
            lines.append(f"    {kind:44} x{v['per_commit']:<5} {v['us_per_commit']:>8.1f} us")
    lines.append(
        f"target single-commit >= {results['target_ratio']} x pgbench: "
        f"{'met' if results['meets_target'] else 'NOT met'}; invariants "
        f"{'hold' if results['invariants_ok'] else 'VIOLATED'}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--pgbench-seconds", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = run(a.count, a.batch, a.pgbench_seconds)
    print(json.dumps(res, indent=2) if a.json else table(res))


if __name__ == "__main__":
    main()
