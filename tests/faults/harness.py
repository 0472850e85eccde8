"""One campaign run: the real pieces, in processes of their own, and the faults done to them.

- PostgreSQL: a throwaway schema, built by the migrations (``recon db upgrade``'s code).
- Redis: a ``redis-server`` of this run, on a free port (tests/procs.py).
- Stripe: the local Stripe-compatible server (tests/stripe_server), in this process.
- A Celery worker (``celery -A worker.celery_app worker``, prefork, as deployed) and the
  webhook intake (``python -m worker.intake``), each a process group of its own, configured
  by the environment as in production.
- This process plays Stripe's webhook sender (retrying what was not answered 2xx, as Stripe
  does) and Celery beat (it sends the periodic tasks through the broker).

Faults (when asked): a storm of 429 and 500 on a fifth of Stripe calls; the worker
SIGKILLed (process group: main process and children, as the OOM killer or a lost node)
while a sweep holds claims mid-batch, then started again; the intake SIGKILLed during a
burst of webhooks, then started again; Redis SIGKILLed and restarted; every database
connection of the worker and the intake terminated once (``pg_terminate_backend``).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, func, select, text

from ledger.sql import SqlLedger, postings, transactions
from reconcile.tables import audit, runs, tickets
from reconcile.tables import inbox as inbox_table
from tests import procs
from tests.faults.workload import (
    FAILED_GRACE,
    PROCESSING_SLA,
    SWEEP_MIN_AGE,
    EndState,
    Workload,
    deliveries,
    seed,
)
from tests.stripe_server import run_server
from tests.stripe_server.webhook import signed_webhook
from worker.celery_app import make_app
from worker.db import make_engine, upgrade
from worker.settings import Settings

SECRET = "whsec_fault_campaign_secret"
JOBS = {"sweep": "recon.sweep", "catch_up": "recon.catch_up", "scan_missing": "recon.scan_missing"}
STORM = {"error_rate": 0.2, "error_statuses": (429, 500)}


def _seconds(td: Any) -> str:
    return f"{int(td.total_seconds())}s"


@dataclass
class Report:
    """What happened to one run: faults done, what the sender saw, the runs recorded."""

    faults: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    acked: set[str] = field(default_factory=set)
    never_delivered: set[str] = field(default_factory=set)
    retries: int = 0
    stripe_calls: int = 0
    stripe_429: int = 0
    stripe_5xx: int = 0
    outage_calls: int = 0
    killed_runs: list[int] = field(default_factory=list)
    cut_runs: list[int] = field(default_factory=list)  # cut short by Stripe
    seconds: float = 0.0


class Campaign:
    def __init__(self, workload: Workload, db_url: str, workdir: Path, *, faults: bool) -> None:
        self.workload = workload
        self.faults = faults
        self.workdir = workdir
        self.app_name = f"recon-faults-{uuid.uuid4().hex[:8]}"
        self.db_url = db_url
        self.engine: Engine = make_engine(db_url)
        self.report = Report()
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.hostname = socket.gethostname()

    # -- the pieces ------------------------------------------------------------------------

    @contextmanager
    def running(self) -> Iterator[Campaign]:
        upgrade(self.db_url)
        self.redis = procs.RedisServer(self.workdir / "redis").start()
        try:
            with run_server() as stripe:
                self.stripe = stripe
                self.events = seed(self.engine, stripe.state, self.workload)
                self.broker = make_app(Settings(broker_url=self.redis.url), set_as_current=False)
                env = self._env()
                logs = self.workdir / "logs"
                self.worker = procs.celery_worker(env, logs)
                self.intake_port = procs.free_port()
                self.intake = procs.intake(env, logs, self.intake_port)
                try:
                    self._start_worker()
                    self._start_intake()
                    yield self
                finally:
                    self.broker.close()
                    self.intake.terminate(10)
                    self.worker.terminate(30)
        finally:
            self.redis.stop()
            self.engine.dispose()

    def _env(self) -> dict[str, str]:
        sep = "&" if "?" in self.db_url else "?"
        return {
            "RECON_DATABASE_URL": f"{self.db_url}{sep}application_name={self.app_name}",
            "RECON_BROKER_URL": self.redis.url,
            "STRIPE_API_KEY": self.stripe.api_key,
            "STRIPE_WEBHOOK_SECRET": SECRET,
            "RECON_STRIPE_API_BASE": self.stripe.url,
            "RECON_STRIPE_RATE_LIMIT": "500",
            "RECON_STRIPE_ENDPOINT_RATE_LIMIT": "500",
            "RECON_FAILED_GRACE": _seconds(FAILED_GRACE),
            "RECON_PROCESSING_SLA": _seconds(PROCESSING_SLA),
            "RECON_SWEEP_MIN_AGE": _seconds(SWEEP_MIN_AGE),
            # The whole workload is discrepancies by design: the guard must not stop it.
            "RECON_MAX_VOIDS": "100000",
            "RECON_MAX_VOID_SHARE": "1",
            "RECON_MAX_NEW_TICKETS": "100000",
            "RECON_MAX_TICKET_SHARE": "1",
            # Small batches, so that a sweep is killed with a batch in hand.
            "RECON_SWEEP_BATCH": "3",
            "RECON_REDRIVE_AGE": "2s",
            "RECON_RUN_HEARTBEAT": "1s",
            "RECON_RUN_STALE_AFTER": "5s",
        }

    def _start_worker(self) -> None:
        self.worker.start()
        node = f"worker@{self.hostname}"
        procs.wait_until(
            lambda: self._ping(node), timeout=90, every=0.5, what=f"{node} answering ping"
        )

    def _ping(self, node: str) -> bool:
        if not self.worker.alive():
            raise AssertionError(f"the worker exited:\n{self.worker.tail()}")
        try:
            return bool(self.broker.control.ping(destination=[node], timeout=1))
        except Exception:
            return False

    def _start_intake(self) -> None:
        self.intake.start()

        def ready() -> bool:
            if not self.intake.alive():
                raise AssertionError(f"the intake exited:\n{self.intake.tail()}")
            try:
                return httpx.get(f"{self.intake_url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        procs.wait_until(ready, timeout=60, every=0.2, what="the intake answering /healthz")

    @property
    def intake_url(self) -> str:
        return f"http://127.0.0.1:{self.intake_port}"

    # -- beat ------------------------------------------------------------------------------

    def send(self, task: str, **kwargs: Any) -> None:
        """Send a task through the broker, as beat does (retrying while Redis is away)."""

        def sent() -> bool:
            try:
                self.broker.send_task(task, kwargs=kwargs)
            except Exception:
                return False
            return True

        procs.wait_until(sent, timeout=60, every=0.2, what=f"sending {task}")

    def last_run_id(self, job: str | None = None) -> int:
        with self.engine.connect() as conn:
            q = select(func.max(runs.c.id))
            if job:
                q = q.where(runs.c.job == job)
            return int(conn.execute(q).scalar() or 0)

    def run_job(self, job: str, *, timeout: float = 180, attempt: float = 30) -> dict[str, Any]:
        """Send a periodic job and wait for the run it records to end; send it again after
        ``attempt`` seconds without one (skipped behind a lock, lost with the broker)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            after = self.last_run_id(job)
            self.send(JOBS[job])
            try:
                return procs.wait_until(
                    lambda: self._ended_after(job, after),
                    timeout=max(1.0, min(attempt, deadline - time.monotonic())),
                    every=0.2,
                    what=f"a {job} run",
                )
            except AssertionError:
                continue  # skipped behind a live lock, or lost with the broker: send again
        raise AssertionError(f"no {job} run ended within {timeout}s\n{self.worker.tail()}")

    def _ended_after(self, job: str, after: int) -> dict[str, Any] | None:
        if not self.worker.alive():
            raise AssertionError(f"the worker died:\n{self.worker.tail()}")
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(runs)
                    .where(runs.c.job == job, runs.c.id > after, runs.c.status != "running")
                    .order_by(runs.c.id)
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    # -- Stripe's webhook sender -----------------------------------------------------------

    def deliver_all(self, *, chaos: bool) -> None:
        groups, never = deliveries(self.workload, self.events, faults=self.faults)
        self.report.never_delivered = never
        self.report.sent = sum(len(g) for g in groups)
        total = len(groups)
        done = Counter[str]()
        lock = threading.Lock()

        def one(group: list[dict[str, Any]]) -> None:
            if len(group) == 1:
                self._post(group[0])
            else:
                # Together: the succeeded event and the refund reach two workers at once.
                threads = [threading.Thread(target=self._post, args=(e,)) for e in group]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            with lock:
                done["groups"] += 1

        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(one, g) for g in groups]
            if chaos:
                self._chaos(lambda: done["groups"] / max(1, total))
            for f in futures:
                f.result()

    def _post(self, event: dict[str, Any]) -> None:
        """Stripe's retries, compressed: anything but 2xx is sent again with backoff."""
        delay = 0.05
        deadline = time.monotonic() + 180
        while True:
            body, headers = signed_webhook(event, SECRET)
            try:
                r = httpx.post(
                    f"{self.intake_url}/webhooks/stripe", content=body, headers=headers, timeout=10
                )
                if 200 <= r.status_code < 300:
                    with self._acked_lock:
                        self.report.acked.add(event["id"])
                    return
                if r.status_code < 500 and r.status_code not in (408, 429):
                    raise AssertionError(f"{event['id']}: {r.status_code} {r.text}")
            except httpx.HTTPError:
                pass
            with self._acked_lock:
                self.report.retries += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"{event['id']} never answered 2xx")
            time.sleep(delay)
            delay = min(1.0, delay * 2)

    _acked_lock = threading.Lock()

    def _chaos(self, progress: Any) -> None:
        """During the burst: kill the intake, restart Redis, cut the database connections."""
        procs.wait_until(lambda: progress() >= 0.2, timeout=120, what="20% delivered")
        self.intake.kill()
        self.report.faults["intake SIGKILLed during a burst"] += 1
        time.sleep(1.0)
        self._start_intake()
        procs.wait_until(lambda: progress() >= 0.45, timeout=120, what="45% delivered")
        self.redis.restart(down_for=1.5)
        self.report.faults["Redis SIGKILLed and restarted"] += 1
        procs.wait_until(lambda: progress() >= 0.7, timeout=120, what="70% delivered")
        procs.wait_until(self.open_connections, timeout=60, what="connections to cut")
        cut = self.cut_database_connections()
        assert cut > 0, "no connection of the worker or intake was open to cut"
        self.report.faults["database connections terminated"] += cut

    def open_connections(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                    {"name": self.app_name},
                ).scalar_one()
            )

    def cut_database_connections(self) -> int:
        with self.engine.connect() as conn:
            n = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name AND pid <> pg_backend_pid()"
                ),
                {"name": self.app_name},
            ).scalar_one()
            conn.commit()
        return int(n)

    # -- the worker killed mid-batch -------------------------------------------------------

    def kill_a_sweep_mid_batch(self) -> int:
        """SIGKILL the worker while a sweep has acted on part of its work and holds the
        claims of a batch; start it again.  The dead run's id."""
        after = self.last_run_id()
        self.send(JOBS["sweep"])

        def mid_batch() -> int | None:
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(runs.c.id).where(
                        runs.c.job == "sweep",
                        runs.c.id > after,
                        runs.c.status == "running",
                        runs.c.claimed.is_not(None),
                    )
                ).first()
                if row is None:
                    return None
                acted = conn.execute(
                    select(func.count()).select_from(audit).where(audit.c.run_id == row[0])
                ).scalar_one()
            return int(row[0]) if acted >= 2 else None

        run_id = procs.wait_until(mid_batch, timeout=120, every=0.02, what="a sweep mid-batch")
        self.worker.kill()
        self.report.faults["worker SIGKILLed mid-batch"] += 1
        self.report.killed_runs.append(run_id)
        self._start_worker()
        return int(run_id)

    # -- waiting for quiet -----------------------------------------------------------------

    def inbox_settled(self) -> bool:
        with self.engine.connect() as conn:
            left = conn.execute(
                select(func.count())
                .select_from(inbox_table)
                .where(inbox_table.c.status.not_in(("processed", "ignored")))
            ).scalar_one()
        return left == 0

    def recover(self, *, rounds: int = 8) -> list[dict[str, Any]]:
        """Beat's jobs until a whole round is clean: every event processed, catch-up, sweep
        and scan each ``succeeded``, nothing left running."""
        history: list[dict[str, Any]] = []
        for _ in range(rounds):
            self.send("inbox.redrive", older_than_seconds=0)
            ended = [self.run_job(job) for job in ("catch_up", "sweep", "scan_missing")]
            history.extend(ended)
            self.send("inbox.redrive", older_than_seconds=0)
            try:
                procs.wait_until(self.inbox_settled, timeout=60, every=0.3, what="inbox settled")
            except AssertionError:
                continue
            if all(r["status"] == "succeeded" for r in ended) and not self.running_runs():
                return history
        raise AssertionError(
            f"no clean round after {rounds}: runs {[r['status'] for r in history]}, "
            f"still running {self.running_runs()}, inbox settled: {self.inbox_settled()}"
        )

    def run_statuses(self) -> Counter[str]:
        with self.engine.connect() as conn:
            return Counter(str(r[0]) for r in conn.execute(select(runs.c.status)))

    def running_runs(self) -> list[int]:
        with self.engine.connect() as conn:
            return [
                int(r[0]) for r in conn.execute(select(runs.c.id).where(runs.c.status == "running"))
            ]

    # -- the end state ---------------------------------------------------------------------

    def end_state(self) -> EndState:
        with self.engine.connect() as conn:
            ledger = {
                r[0]: (r[1], int(r[2]), int(r[3]))
                for r in conn.execute(
                    select(
                        transactions.c.reference,
                        transactions.c.status,
                        transactions.c.committed_amount,
                        transactions.c.voided_amount,
                    )
                )
            }
            by_payment: dict[str, list[str]] = {}
            for pid, kind in conn.execute(
                select(tickets.c.payment_id, tickets.c.kind).where(tickets.c.status == "open")
            ):
                by_payment.setdefault(pid, []).append(kind)
        return EndState(ledger, {pid: tuple(sorted(k)) for pid, k in by_payment.items()})

    def money_checks(self) -> list[str]:
        """Nothing committed or voided twice: every posting adds up to the entry's state,
        one commit audit row per payment at most, the ledger invariants hold."""
        problems: list[str] = []
        with self.engine.connect() as conn:
            problems += [str(v) for v in SqlLedger(conn).check_invariants()]
            sums = conn.execute(
                select(
                    transactions.c.reference,
                    transactions.c.committed_amount,
                    transactions.c.voided_amount,
                    func.coalesce(
                        func.sum(postings.c.amount).filter(postings.c.kind == "commit"), 0
                    ),
                    func.coalesce(func.sum(postings.c.amount).filter(postings.c.kind == "void"), 0),
                )
                .select_from(transactions.outerjoin(postings))
                .group_by(transactions.c.id)
            ).all()
            for ref, committed, voided, posted_c, posted_v in sums:
                if (posted_c, posted_v) == (0, 0) and not voided:
                    continue  # created APPLIED: credited by its create posting
                if (int(committed), int(voided)) != (int(posted_c), int(posted_v)):
                    problems.append(f"{ref}: state {committed}/{voided} != postings")
            twice = conn.execute(
                select(audit.c.payment_id, audit.c.action, func.count())
                .where(audit.c.action.in_(("commit", "void", "create")))
                .group_by(audit.c.payment_id, audit.c.action)
                .having(func.count() > 1)
            ).all()
            problems += [f"{pid}: {action} recorded {n} times" for pid, action, n in twice]
            dup_tickets = conn.execute(
                select(tickets.c.payment_id, tickets.c.kind, func.count())
                .where(tickets.c.status == "open")
                .group_by(tickets.c.payment_id, tickets.c.kind)
                .having(func.count() > 1)
            ).all()
            problems += [f"{pid}: {n} open {kind} tickets" for pid, kind, n in dup_tickets]
        return problems

    def inbox_checks(self) -> list[str]:
        """Every acknowledged webhook processed; every event Stripe has, stored and processed
        (the ones never delivered came through catch-up)."""
        with self.engine.connect() as conn:
            rows = dict(conn.execute(select(inbox_table.c.event_id, inbox_table.c.status)).all())
            sources = dict(conn.execute(select(inbox_table.c.event_id, inbox_table.c.source)).all())
        problems = [
            f"acknowledged {e} is {rows.get(e, 'missing')}"
            for e in sorted(self.report.acked)
            if rows.get(e) not in ("processed", "ignored")
        ]
        from reconcile.usecases import CATCH_UP_TYPES

        for evs in self.events.values():
            for e in evs:
                if e["type"] in CATCH_UP_TYPES and rows.get(e["id"]) not in (
                    "processed",
                    "ignored",
                ):
                    problems.append(f"Stripe event {e['id']} ({e['type']}) is {rows.get(e['id'])}")
        for e in self.report.never_delivered:
            if e in rows and sources[e] == "webhook":
                problems.append(f"{e} was never delivered, yet came in by webhook")
        return problems

    def run_checks(self) -> list[str]:
        """No run left running; no run with errors or cut short recorded as succeeded; every
        run whose worker was killed recorded partial, and found by the run after it."""
        problems: list[str] = []
        with self.engine.connect() as conn:
            all_runs = [dict(r) for r in conn.execute(select(runs)).mappings()]
        for r in all_runs:
            if r["status"] == "running":
                problems.append(f"run {r['id']} ({r['job']}) left running")
            cut = (r["params"] or {}).get("cut_short")
            if r["status"] == "succeeded" and (r["errors"] or cut):
                problems.append(f"run {r['id']} succeeded with {r['errors'] or cut}")
        recovered = {i for r in all_runs for i in (r["params"] or {}).get("recovered_runs", [])}
        for killed in self.report.killed_runs:
            run = next(r for r in all_runs if r["id"] == killed)
            if run["status"] != "partial" or "worker" not in (run["params"] or {}).get(
                "cut_short", ""
            ):
                problems.append(f"killed run {killed}: {run['status']} {run['params']}")
            if killed not in recovered:
                problems.append(f"killed run {killed} is listed by no later run")
        return problems

    def process_checks(self) -> list[str]:
        problems = []
        for svc in (self.worker, self.intake):
            if not svc.alive():
                problems.append(f"{svc.name} is dead:\n{svc.tail()}")
        if "Unrecoverable error" in self.worker.log_text():
            problems.append("the worker logged an unrecoverable error")
        try:
            # Our own client's first try may meet a connection the Redis restart reset.
            procs.wait_until(lambda: self._ping(f"worker@{self.hostname}"), timeout=20)
        except AssertionError:
            problems.append(f"the worker does not answer ping:\n{self.worker.tail()}")
        return problems
