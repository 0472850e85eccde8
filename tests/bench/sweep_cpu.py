"""CPU seconds the sweep process spends on N dense stale payments (issue 13).

    python -m tests.bench.sweep_cpu [--entries 10000] [--profile out.prof]

The Stripe stand-in runs in a process of its own, unthrottled and without added latency, so
the time measured (user + system of this process, every thread) is the sweep's own: claims,
Stripe pages, set apply, customer index.  The machine is shared: compare versions run
alternately in one session (e.g. ``PYTHONPATH=<other checkout>``), never absolute figures.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from reconcile.usecases import run_sweep
from tests.bench import backlog as b
from tests.support import throwaway_schema
from worker.db import make_engine


def measure(entries: int, profile: str | None = None) -> dict[str, Any]:
    pis, books = b.backlog(entries)
    with b.stripe_process(rate=None, latency_ms=0.0) as srv:
        srv.seed(pis)
        with throwaway_schema("recon_cpu_") as url:
            engine = make_engine(url, pool_size=4, max_overflow=4)
            try:
                b.seed_books(engine, books)
                svc = b._services(engine, srv, 10_000.0)
                prof = cProfile.Profile() if profile else None
                cpu0, t0 = time.process_time(), time.perf_counter()
                if prof:
                    prof.enable()
                result = run_sweep(svc, trigger="bench", actor="bench", older_than=timedelta(0))
                if prof and profile:
                    prof.disable()
                    prof.dump_stats(profile)
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
                checked = b.check_books(engine, entries)
            finally:
                engine.dispose()
    return {
        "entries": entries,
        "run_status": result.status,
        "sweep_cpu_seconds": round(cpu, 2),
        "cpu_seconds_per_10k": round(cpu / entries * 10_000, 2),
        "wall_seconds": round(wall, 2),
        **checked,
    }


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--profile", default=None)
    a = ap.parse_args(argv)
    print(json.dumps(measure(a.entries, a.profile)))


if __name__ == "__main__":
    main()
