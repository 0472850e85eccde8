"""``make bench``: the ledger, reconciliation and intake benchmarks, one summary.

    python -m tests.bench [--only ledger|reconcile|backlog|scaleout|intake|customer] [--quick]
                          [--out PATH]

Everything runs on localhost against the test PostgreSQL (throwaway databases/schemas,
dropped after).  The full run is sized to finish in about three minutes on 2 cores;
``--quick`` is a smoke run of a few seconds per benchmark.  Results go to
``bench-results/latest.json`` (gitignored) as well as to stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "bench-results" / "latest.json"
NAMES = ("ledger", "reconcile", "backlog", "scaleout", "intake", "customer")


def _ledger(quick: bool) -> tuple[dict[str, Any], str]:
    from tests.bench import ledger

    if quick:
        res = ledger.run(count=300, batch=50, pgbench_seconds=2, max_phase_seconds=3)
    else:
        # per-wallet sources: `python -m tests.bench.ledger` (no stable effect at 1 connection)
        res = ledger.run(
            count=5000,
            batch=50,
            pgbench_seconds=6,
            max_phase_seconds=6,
            layouts=("hot_source",),
        )
    return res, ledger.table(res)


def _reconcile(quick: bool) -> tuple[dict[str, Any], str]:
    from tests.bench import reconcile

    if quick:
        res = reconcile.run(dense=300, sparse=20, stripe_total=1000)
    else:
        res = reconcile.run(dense=10_000, sparse=200, stripe_total=10_000)
    return res, reconcile.table(res)


def _backlog(quick: bool) -> tuple[dict[str, Any], str]:
    from tests.bench import backlog

    if quick:
        res = backlog.run(entries=3000, naive_sample=100)
    else:
        res = backlog.run(entries=100_000, naive_sample=2000)
    return res, backlog.table(res)


def _scaleout(quick: bool) -> tuple[dict[str, Any], str]:
    from tests.bench import scaleout

    if quick:
        res = scaleout.run(entries=3000, workers=(1, 2))
    else:
        res = scaleout.run(entries=100_000, workers=(1, 2, 4))
    return res, scaleout.table(res)


def _intake(quick: bool) -> tuple[dict[str, Any], str]:
    from tests.bench import intake, intake_phases

    if quick:
        res = intake.run(seconds=1.0, concurrency=8, workers=(1,), batches=(100,), warmup=0.3)
        res["phases"] = intake_phases.run(n=2000)
    else:
        res = intake.run(seconds=4.0, warmup=1.0)
        res["phases"] = intake_phases.run(n=20_000)
    return res, intake.table(res) + "\n" + intake_phases.table(res["phases"])


def _customer(quick: bool) -> tuple[dict[str, Any], str]:
    from tests.bench import customer

    res = customer.run(transactions=50_000, samples=40) if quick else customer.run()
    return res, customer.table(res)


RUNNERS: dict[str, Callable[[bool], tuple[dict[str, Any], str]]] = {
    "ledger": _ledger,
    "reconcile": _reconcile,
    "backlog": _backlog,
    "scaleout": _scaleout,
    "intake": _intake,
    "customer": _customer,
}


def summary(results: dict[str, Any]) -> str:
    rows = [("benchmark", "figure", "value")]
    led = results.get("ledger") or {}
    if "hot_source_single" in led:
        pg = led["pgbench_simple_update_tps"]["mean"]
        rows.append(("ledger", "pgbench simple-update tps (1 conn)", f"{pg:.0f}"))
        for key in ("hot_source_single", "hot_source_batched"):
            if key in led:
                v = led[key]
                rows.append(
                    (
                        "ledger",
                        f"{key} commits/s",
                        f"{v['per_second']:.0f} ({v['ratio_to_pgbench']:.2f}x pgbench)",
                    )
                )
        rows.append(("ledger", "target single >= 0.5x pgbench", str(led.get("meets_target"))))
    rec = results.get("reconcile") or {}
    for case, r in rec.items():
        if isinstance(r, dict) and "calls_per_payment" in r:
            rows.append(
                (
                    "reconcile",
                    f"{case}: calls/payment ({r['reconciled']}/{r['ledger_entries']} applied)",
                    f"{r['calls_per_payment']:.4f}",
                )
            )
            rows.append(
                (
                    "reconcile",
                    f"{case}: calls/payment ceiling",
                    "0.011" if case == "dense" else "1 (a retrieve each)",
                )
            )
            rows.append(
                (
                    "reconcile",
                    f"{case}: wall s vs floor 25/100 rps",
                    f"{r['wall_seconds']:.1f} vs {r['floor_test_mode_s']:.1f}/"
                    f"{r['floor_live_mode_s']:.1f}",
                )
            )
    back = results.get("backlog") or {}
    if "sweep" in back:
        s = back["sweep"]
        ok = s["all_applied"] and s["invariants_ok"]
        rows.append(
            (
                "backlog",
                f"{s['entries']:,} stale: calls/payment (ceiling 0.011)",
                f"{s['calls_per_payment']:.4f}",
            )
        )
        met = "met" if s["wall_over_floor"] <= 1.3 else "MISSED"
        rows.append(
            (
                "backlog",
                "wall s vs floor at 25 req/s (target x1.3)",
                f"{s['wall_seconds']:.1f} vs {s['floor_seconds']:.1f} "
                f"(x{s['wall_over_floor']:.2f}, {met}; applied+invariants {'ok' if ok else 'NO'})",
            )
        )
        n = back.get("naive")
        if n:
            rows.append(
                (
                    "backlog",
                    f"naive (1 retrieve/entry) extrapolated from {n['entries']:,}",
                    f"{n['extrapolated_seconds']:.0f} s (sweep x{back['sweep_speedup_over_naive']} "
                    "faster)",
                )
            )
    out = results.get("scaleout") or {}
    for c in out.get("cases", []):
        rows.append(
            (
                "scaleout",
                f"{c['workers']} worker(s): pmt/s, busiest s (budget 25)",
                f"{c['payments_per_second']:.0f} (x{c['speedup']}), "
                f"wall x{c['wall_over_floor']:.2f} floor, max {c['busiest_second']}/s "
                f"{'held' if c['budget_held'] else 'EXCEEDED'}, "
                f"CPU/proc {max(c['worker_cpu_seconds'], default=0)} s",
            )
        )
    ink = results.get("intake") or {}
    if "unavailable" in ink:
        rows.append(("intake", "status", "unavailable"))
    raw = ink.get("raw_psycopg_one_txn_per_row")
    if raw:
        rows.append(
            (
                "intake",
                "raw insert ceiling, best /s (p50/p99 ms)",
                f"{raw['per_second']:.0f} ({raw['p50_ms']}/{raw['p99_ms']})",
            )
        )
    if ink.get("target"):
        met = ink["target"]["met_by"]
        rows.append(("intake", "target x0.8, p99 < 50 ms met by", ", ".join(met) or "none"))
    for key, val in ink.items():
        if key.startswith("intake_") and isinstance(val, dict) and "per_second" in val:
            rows.append(
                (
                    "intake",
                    f"{key} /s (x ceiling around it, x best; p50/p99 ms)",
                    f"{val['per_second']:.0f} (x{val.get('ratio_to_ceiling')}, "
                    f"x{val.get('ratio_to_best_ceiling')}; "
                    f"{val.get('p50_ms')}/{val.get('p99_ms')})",
                )
            )
    cus = results.get("customer") or {}
    if "by_email" in cus:
        rows.append(
            (
                "customer",
                f"lookup by email, {cus['transactions']:,} txns, p95 (target < 100 ms)",
                f"{cus['by_email']['p95_ms']:.1f} ms (median {cus['by_email']['median_ms']:.1f})",
            )
        )
    for name, err in (results.get("errors") or {}).items():
        rows.append((name, "ERROR", err.splitlines()[-1][:60]))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:<{w[0]}}  {b:<{w[1]}}  {c}" for a, b, c in rows)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=NAMES, action="append", help="run just this (repeatable)")
    ap.add_argument("--quick", action="store_true", help="smoke run: small and short")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args(argv)
    names = a.only or list(NAMES)
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": a.quick,
        "python": platform.python_version(),
        "host": platform.node(),
        "errors": {},
        "seconds": {},
    }
    t_all = time.perf_counter()
    for name in names:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            res, text = RUNNERS[name](a.quick)
        except Exception:  # noqa: BLE001 - one failed benchmark must not hide the others
            results["errors"][name] = traceback.format_exc()
            print(results["errors"][name], file=sys.stderr, flush=True)
            continue
        finally:
            results["seconds"][name] = round(time.perf_counter() - t0, 1)
        results[name] = res
        print(text, f"({results['seconds'][name]} s)", sep="\n", flush=True)
    results["total_seconds"] = round(time.perf_counter() - t_all, 1)
    print("\n== summary")
    print(summary(results))
    print(f"total {results['total_seconds']} s")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {a.out}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
