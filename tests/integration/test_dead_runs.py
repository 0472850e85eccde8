"""A run whose worker died: detected, recorded partial with the reason, its claims given back,
and the next run proceeds and says so (issue 14).

The sweep that dies here is a real process (``python -c``) SIGKILLed while it holds a batch
of claims and waits on a slow Stripe: no ``finally`` runs, exactly as when the OOM killer or
a rollout past its grace period takes a Celery worker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from ledger.sql import transactions
from reconcile.runs import start_run
from reconcile.tables import runs
from reconcile.usecases import run_sweep
from reconcile.usecases.lifecycle import holder_is_dead, reap_dead_runs
from tests.stripe_server import run_server
from tests.support import ago, epoch, make_services, seed_entry
from worker import tasks
from worker.locks import DbLocks, job_lock, new_token
from worker.settings import Settings

pytestmark = [pytest.mark.integration]

ENTRIES = 30
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = textwrap.dedent(
    """
    import sys
    from tests.support import make_services
    from reconcile.usecases import run_sweep
    from worker.db import make_engine

    url, stripe_url, key = sys.argv[1:4]
    svc = make_services(make_engine(url), stripe_url, key, sweep_batch=10)
    run_sweep(svc, trigger="beat", actor="system")
    """
)


def wait_for(predicate: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _run(engine: Engine, run_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(select(runs).where(runs.c.id == run_id)).mappings().one())


def _claimed_run(engine: Engine) -> tuple[int, list[str]] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(runs.c.id, runs.c.claimed).where(
                runs.c.status == "running", runs.c.claimed.is_not(None)
            )
        ).first()
    return (int(row[0]), list(row[1])) if row and row[1] else None


def _entries(engine: Engine) -> dict[str, tuple[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(transactions.c.reference, transactions.c.status, transactions.c.claimed_until)
        )
        return {r[0]: (r[1], r[2]) for r in rows}


def _seed(engine: Engine, stripe: Any) -> None:
    for n in range(ENTRIES):
        created = ago(hours=2, seconds=n)
        pid = f"pi_dead_{n:03}"
        stripe.state.create_payment_intent(
            id=pid,
            amount=100,
            currency="usd",
            status="succeeded",
            created=epoch(created),
            record_events=False,
        )
        seed_entry(engine, pid, 100, created=created)


def _kill_a_sweep_holding_claims(engine: Engine, url: str, stripe: Any) -> tuple[int, list[str]]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, stripe.url, stripe.api_key], env=env, cwd=ROOT
    )
    try:
        claimed = wait_for(lambda: _claimed_run(engine), what="the child's claimed batch")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    return claimed


def test_a_killed_sweep_is_recorded_partial_its_claims_released_and_the_next_sweep_finishes(
    pg_engine: Engine, pg_schema: str
) -> None:
    with run_server(latency_ms=400) as stripe:
        _seed(pg_engine, stripe)
        dead_id, claimed = _kill_a_sweep_holding_claims(pg_engine, pg_schema, stripe)
        # The batch being applied, and the next once it is claimed ahead (jobs._Claims).
        assert len(claimed) in (10, 20)
        assert _run(pg_engine, dead_id)["status"] == "running"
        held = _entries(pg_engine)
        assert all(held[ref][1] is not None for ref in claimed), "the dead sweep's claims"

        stripe.configure(latency_ms=0)
        svc = make_services(pg_engine, stripe.url, stripe.api_key, sweep_batch=10)
        result = run_sweep(svc, trigger="beat", actor="system")

    dead = _run(pg_engine, dead_id)
    assert dead["status"] == "partial"
    assert dead["finished_at"] is not None
    assert "worker died" in dead["params"]["cut_short"]
    assert dead["errors"] and "worker died" in dead["errors"][-1]
    assert dead["claimed"] is None
    # The next run went ahead, took every entry (the dead run's claims included) and says
    # what it recovered.
    assert result.status == "succeeded"
    assert result.counts["recovered_runs"] == 1
    assert _run(pg_engine, result.run_id)["params"]["recovered_runs"] == [dead_id]
    assert result.counts["commit"] == ENTRIES
    assert {status for status, _ in _entries(pg_engine).values()} == {"APPLIED"}
    with pg_engine.connect() as conn:
        running = conn.execute(select(runs.c.id).where(runs.c.status == "running")).all()
    assert running == []


def test_a_run_of_another_host_is_presumed_dead_only_once_its_heartbeat_is_stale(
    pg_engine: Engine,
) -> None:
    with run_server() as stripe:
        svc = make_services(
            pg_engine,
            stripe.url,
            stripe.api_key,
            run_heartbeat=timedelta(seconds=1),
            run_stale_after=timedelta(seconds=60),
        )
        now = ago(seconds=0)
        fresh = start_run(
            pg_engine,
            job="sweep",
            trigger="beat",
            actor="system",
            dry_run=False,
            now=now - timedelta(seconds=30),
            holder="other-host:4242",
        )
        stale = start_run(
            pg_engine,
            job="catch_up",
            trigger="beat",
            actor="system",
            dry_run=False,
            now=now - timedelta(seconds=90),
            holder="other-host:4343",
        )
        seed_entry(pg_engine, "pi_held", 100, created=ago(hours=1))
        with pg_engine.begin() as conn:
            conn.execute(update(runs).where(runs.c.id == stale.id).values(claimed=["pi_held"]))
            conn.execute(
                update(transactions)
                .where(transactions.c.reference == "pi_held")
                .values(claimed_until=now + timedelta(minutes=10))
            )

        assert not holder_is_dead(svc, "other-host:4242:abc")
        assert holder_is_dead(svc, "other-host:4343:abc")
        assert not holder_is_dead(svc, "other-host:9999:abc"), "no run: it may be starting one"
        assert reap_dead_runs(svc) == [stale.id]
        assert reap_dead_runs(svc) == [], "recorded once"

    assert _run(pg_engine, fresh.id)["status"] == "running"
    reaped = _run(pg_engine, stale.id)
    assert reaped["status"] == "partial"
    assert "no heartbeat since" in reaped["params"]["cut_short"]
    assert _entries(pg_engine)["pi_held"] == ("INFLIGHT", None)


def test_a_running_run_keeps_beating_and_is_never_reaped(pg_engine: Engine) -> None:
    with run_server(latency_ms=300) as stripe:
        _seed(pg_engine, stripe)
        svc = make_services(
            pg_engine,
            stripe.url,
            stripe.api_key,
            sweep_batch=5,
            run_heartbeat=timedelta(milliseconds=100),
            run_stale_after=timedelta(milliseconds=600),
        )
        import threading

        results: list[Any] = []
        sweeper = threading.Thread(
            target=lambda: results.append(run_sweep(svc, trigger="cli", actor="a"))
        )
        sweeper.start()
        run_id = wait_for(lambda: _claimed_run(pg_engine), what="a batch claimed")[0]
        beats = set()
        while sweeper.is_alive():
            # A second worker starting a run meanwhile must not take this one for dead.
            assert reap_dead_runs(svc) == []
            beats.add(_run(pg_engine, run_id)["heartbeat_at"])
            time.sleep(0.1)
        sweeper.join()
    assert results[0].status == "succeeded" and results[0].run_id == run_id
    assert len(beats) >= 3, "the heartbeat moved while the run worked"


def test_a_dead_holder_of_the_job_lock_does_not_make_the_next_sweep_skip(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with run_server() as stripe:
        _seed(pg_engine, stripe)
        svc = make_services(pg_engine, stripe.url, stripe.api_key)
        monkeypatch.setattr(tasks, "_services", lambda: svc)
        monkeypatch.setattr(tasks, "_settings", lambda: Settings(redis_url=None))
        locks = DbLocks(pg_engine)
        # A process of this host that is gone holds the lock (its TTL has not run out).
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        dead_token = f"{socket.gethostname()}:{gone.pid}:deadbeef"
        assert locks.acquire("recon.sweep", dead_token, timedelta(seconds=90))

        ran = tasks.sweep()

        # A live holder still makes it skip.
        with job_lock(locks, "recon.sweep") as held:
            assert held
            skipped = tasks.sweep()
    assert ran["status"] == "succeeded" and ran["counts"]["commit"] == ENTRIES
    assert skipped == {"status": "skipped"}
    assert not locks.release("recon.sweep", dead_token)
    assert new_token().startswith(f"{socket.gethostname()}:{os.getpid()}:")


def test_a_process_that_died_unreaped_counts_as_gone_and_a_live_one_does_not() -> None:
    from reconcile.usecases.lifecycle import process_gone

    host = socket.gethostname()
    # A zombie: what a SIGKILLed worker child stays when its parent died with it and PID 1
    # does not reap (as in this test environment; tini does in the image).
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    try:
        wait_for(lambda: process_gone(f"{host}:{pid}"), timeout=5, what="the zombie seen")
    finally:
        os.waitpid(pid, 0)
    assert process_gone(f"{host}:{pid}:token")
    assert not process_gone(f"{host}:{os.getppid()}")
    assert not process_gone(f"{host}:{os.getpid()}")
    assert not process_gone(f"another-host:{pid}")
