"""The whole pipeline for real: signed webhooks over HTTP into the intake, a real Celery
worker on the real Redis (a queue of this test's own), the real PostgreSQL, the local
Stripe-compatible server.  Plus the pieces the pipeline leans on: job locks, the beat
schedule, per-task log context.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
import structlog
from celery import Celery
from celery.contrib.testing.worker import start_worker
from sqlalchemy import Engine, func, select

from ledger.sql import transactions
from reconcile import inbox
from reconcile.tables import audit, tickets
from reconcile.tables import inbox as inbox_table
from tests.bench.intake import serve_in_thread
from tests.conftest import REDIS_URL
from tests.stripe_server import run_server
from tests.stripe_server.webhook import signed_webhook
from tests.support import ago, epoch, make_services, seed_entry
from worker import celery_app as celery_module
from worker import tasks
from worker.intake import create_app
from worker.locks import DbLocks, RedisLocks, job_lock
from worker.queue import enqueue_event
from worker.settings import Settings

SECRET = "whsec_pipeline_test_secret"
DEAD_BROKER = "redis://127.0.0.1:1/15"


def wait_for(predicate: Callable[[], bool], *, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or predicate}")


@dataclass
class Pipeline:
    engine: Engine
    stripe: Any
    celery: Celery
    http: httpx.Client
    settings: Settings

    def deliver(self, event: dict[str, Any], *, http: httpx.Client | None = None) -> httpx.Response:
        body, headers = signed_webhook(event, SECRET)
        response = (http or self.http).post("/webhooks/stripe", content=body, headers=headers)
        assert response.status_code == 200, response.text
        return response

    def inbox_statuses(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(inbox_table.c.event_id, inbox_table.c.status))
            return {r[0]: r[1] for r in rows}

    def settled(self) -> bool:
        statuses = self.inbox_statuses().values()
        return bool(statuses) and all(s in ("processed", "ignored") for s in statuses)

    def entry(self, reference: str) -> tuple[str, int, int]:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    transactions.c.status,
                    transactions.c.committed_amount,
                    transactions.c.voided_amount,
                ).where(transactions.c.reference == reference)
            ).one()
            return row[0], int(row[1]), int(row[2])

    def outcome(self, reference: str) -> dict[str, Any]:
        """Everything a second delivery could have spoilt, for one payment."""
        with self.engine.connect() as conn:
            actions = conn.execute(
                select(audit.c.action, func.count())
                .where(audit.c.payment_id == reference)
                .group_by(audit.c.action)
            ).all()
            ticket_count = conn.execute(
                select(func.count()).select_from(tickets).where(tickets.c.payment_id == reference)
            ).scalar_one()
        ledger_actions = {a: n for a, n in actions if a in ("commit", "void", "create")}
        return {
            "entry": self.entry(reference),
            "ledger_actions": ledger_actions,
            "tickets": ticket_count,
        }


@contextlib.contextmanager
def celery_worker(settings: Settings) -> Iterator[Celery]:
    queue = f"test-pipeline-{uuid.uuid4().hex[:10]}"
    app = celery_module.make_app(settings, queue=queue, set_as_current=False)
    try:
        with start_worker(
            app,
            pool="threads",
            concurrency=4,
            perform_ping_check=False,
            loglevel="INFO",  # the process-wide structlog level is set once, keep it at INFO
            shutdown_timeout=20,
        ):
            yield app
    finally:
        # start_worker makes its app the current one; give the process its own back.
        celery_module.app.set_current()
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"*{queue}*"):
            client.delete(key)
        client.close()


@pytest.fixture
def pipeline(
    pg_engine: Engine, pg_schema: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pipeline]:
    settings = Settings(
        database_url=pg_schema,
        broker_url=REDIS_URL,
        redis_url=None,  # job locks in this test's own schema, not shared Redis keys
        stripe_webhook_secret=SECRET,
        redrive_age="0s",
    )
    with run_server() as stripe:
        svc = make_services(pg_engine, stripe.url, stripe.api_key)
        # The worker threads run in this process: hand them this test's wiring.
        monkeypatch.setattr(tasks, "_services", lambda: svc)
        monkeypatch.setattr(tasks, "_settings", lambda: settings)
        with celery_worker(settings) as app:
            intake = create_app(
                settings,
                engine=pg_engine,
                enqueue=lambda event_id: enqueue_event(event_id, app=app),
            )
            with serve_in_thread(intake) as url, httpx.Client(base_url=url, timeout=15) as http:
                yield Pipeline(pg_engine, stripe, app, http, settings)


def a_payment(p: Pipeline, amount: int = 5000) -> tuple[str, list[dict[str, Any]]]:
    """An INFLIGHT ledger entry and its PaymentIntent going processing -> succeeded on
    Stripe; returns the id and the events Stripe sends for it, in order."""
    pid = "pi_" + uuid.uuid4().hex[:16]
    created = ago(minutes=20)
    seed_entry(p.engine, pid, amount, created=created)
    first = p.stripe.state.create_payment_intent(
        id=pid, amount=amount, currency="usd", status="processing", created=epoch(created)
    )
    second = p.stripe.state.update_payment_intent(pid, status="succeeded")
    return pid, [*first.events, *second.events]


# --------------------------------------------------------------------------- end to end


@pytest.mark.e2e
@pytest.mark.integration
def test_a_signed_webhook_over_http_ends_as_a_committed_ledger_entry(pipeline) -> None:
    pid, events = a_payment(pipeline)

    for event in events:
        pipeline.deliver(event)

    wait_for(pipeline.settled, what="every inbox row processed")
    assert pipeline.entry(pid) == ("APPLIED", 5000, 0)
    assert set(pipeline.inbox_statuses().values()) == {"processed"}


@pytest.mark.e2e
@pytest.mark.integration
def test_duplicated_and_reordered_deliveries_end_as_one_clean_delivery(pipeline) -> None:
    clean, clean_events = a_payment(pipeline)
    duplicated, duplicated_events = a_payment(pipeline)
    reordered, reordered_events = a_payment(pipeline)

    for event in clean_events:
        pipeline.deliver(event)
    for event in duplicated_events:
        answers = [pipeline.deliver(event).json()["duplicate"] for _ in range(5)]
        assert answers == [False, True, True, True, True]
    for event in reversed(reordered_events):
        pipeline.deliver(event)

    wait_for(pipeline.settled, what="every inbox row processed")
    expected = pipeline.outcome(clean)
    assert expected["entry"] == ("APPLIED", 5000, 0)
    assert expected["ledger_actions"].get("commit") == 1
    assert pipeline.outcome(duplicated) == expected
    assert pipeline.outcome(reordered) == expected


@pytest.mark.e2e
@pytest.mark.integration
def test_webhooks_taken_while_the_broker_is_down_are_processed_by_redrive_once_it_is_back(
    pipeline,
) -> None:
    down = celery_module.make_app(
        pipeline.settings.model_copy(update={"broker_url": DEAD_BROKER}), set_as_current=False
    )
    cut_off = create_app(
        pipeline.settings,
        engine=pipeline.engine,
        enqueue=lambda event_id: enqueue_event(event_id, app=down),
    )
    payments = [a_payment(pipeline) for _ in range(3)]

    with serve_in_thread(cut_off) as url, httpx.Client(base_url=url, timeout=15) as http:
        for _, events in payments:
            for event in events:
                assert pipeline.deliver(event, http=http).json() == {
                    "received": True,
                    "duplicate": False,
                }
    statuses = pipeline.inbox_statuses()
    assert len(statuses) == 9 and set(statuses.values()) == {"pending"}
    time.sleep(1)  # nothing is coming for them: no worker ever heard of these events
    assert set(pipeline.inbox_statuses().values()) == {"pending"}

    pipeline.celery.send_task("inbox.redrive", kwargs={"older_than_seconds": 0})

    wait_for(pipeline.settled, what="redriven rows processed")
    for pid, _ in payments:
        assert pipeline.entry(pid) == ("APPLIED", 5000, 0)
    with pipeline.engine.connect() as conn:
        redriven = conn.execute(
            select(func.count())
            .select_from(inbox_table)
            .where(inbox_table.c.enqueued_at.is_not(None))
        ).scalar_one()
    assert redriven == 9


# --------------------------------------------------------------------------- job locks


@pytest.mark.integration
def test_a_db_job_lock_admits_one_holder_lapses_when_expired_and_frees_only_its_own(
    pg_engine,
) -> None:
    locks = DbLocks(pg_engine)
    assert locks.acquire("recon.sweep", "a", timedelta(seconds=30))
    assert not locks.acquire("recon.sweep", "b", timedelta(seconds=30))
    assert not locks.release("recon.sweep", "b")
    assert not locks.acquire("recon.sweep", "b", timedelta(seconds=30))
    assert locks.release("recon.sweep", "a")
    assert locks.acquire("recon.sweep", "b", timedelta(milliseconds=50))
    time.sleep(0.1)
    # b died without releasing: its lock lapsed, and b can no longer refresh or free it.
    assert locks.acquire("recon.sweep", "c", timedelta(seconds=30))
    assert not locks.refresh("recon.sweep", "b", timedelta(seconds=30))
    assert not locks.release("recon.sweep", "b")
    assert locks.release("recon.sweep", "c")


@pytest.mark.integration
def test_a_redis_job_lock_admits_one_holder_lapses_when_expired_and_frees_only_its_own(
    redis_client,
) -> None:
    locks = RedisLocks(redis_client, prefix=f"test:{uuid.uuid4().hex}:")
    try:
        assert locks.acquire("job", "a", timedelta(seconds=30))
        assert not locks.acquire("job", "b", timedelta(seconds=30))
        assert not locks.release("job", "b")
        assert locks.refresh("job", "a", timedelta(seconds=30))
        assert locks.release("job", "a")
        assert locks.acquire("job", "b", timedelta(milliseconds=50))
        time.sleep(0.1)
        assert locks.acquire("job", "c", timedelta(seconds=30))
        assert not locks.release("job", "b")
        assert locks.release("job", "c")
    finally:
        for key in redis_client.scan_iter(match=f"{locks.prefix}*"):
            redis_client.delete(key)


@pytest.mark.integration
def test_a_held_lock_is_kept_alive_by_its_heartbeat_beyond_its_ttl(pg_engine) -> None:
    locks = DbLocks(pg_engine)
    with job_lock(locks, "recon.scan_missing", ttl=timedelta(milliseconds=300)) as held:
        assert held
        time.sleep(0.8)
        assert not locks.acquire("recon.scan_missing", "other", timedelta(seconds=1))
    assert locks.acquire("recon.scan_missing", "other", timedelta(seconds=1))


@pytest.mark.integration
def test_an_overlapping_run_of_a_periodic_job_is_skipped(pg_engine, monkeypatch) -> None:
    calls: list[str] = []

    class Svc:
        engine = pg_engine

    monkeypatch.setattr(tasks, "_services", lambda: Svc())
    monkeypatch.setattr(tasks, "_settings", lambda: Settings(redis_url=None))
    import reconcile.usecases as service

    def fake_sweep(svc: Any, **kw: Any) -> Any:
        calls.append(kw["trigger"])
        return type("R", (), {"status": "succeeded", "run_id": 7, "counts": {"matched": 1}})()

    monkeypatch.setattr(service, "run_sweep", fake_sweep)

    locks = DbLocks(pg_engine)
    with job_lock(locks, "recon.sweep") as held:
        assert held
        skipped = tasks.sweep()
    ran = tasks.sweep(trigger="cli")

    assert skipped == {"status": "skipped"}
    assert ran == {"status": "succeeded", "run_id": 7, "counts": {"matched": 1}}
    assert calls == ["cli"]


# --------------------------------------------------------------------------- wiring


def test_the_beat_schedule_runs_each_periodic_job_at_its_configured_interval() -> None:
    settings = Settings(
        sweep_interval="5m",
        catch_up_interval="15m",
        scan_interval="1h",
        redrive_interval="0s",
        deliver_interval="30s",
    )
    schedule = celery_module.beat_schedule(settings)
    assert {name: entry["schedule"] for name, entry in schedule.items()} == {
        "recon.sweep": 300.0,
        "recon.catch_up": 900.0,
        "recon.scan_missing": 3600.0,
        "tickets.deliver": 30.0,
    }
    app = celery_module.make_app(settings, set_as_current=False)
    assert app.conf.beat_schedule == schedule


def test_the_celery_app_acks_late_speaks_json_only_and_runs_in_process_without_a_broker() -> None:
    app = celery_module.make_app(Settings(broker_url=None), set_as_current=False)
    conf = app.conf
    assert (conf.task_acks_late, conf.task_reject_on_worker_lost) == (True, True)
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.recon_in_process is True
    app.loader.import_default_modules()
    for name in (
        "stripe.process_event",
        "recon.sweep",
        "recon.catch_up",
        "recon.scan_missing",
        "inbox.redrive",
    ):
        assert name in app.tasks, name
    task = app.tasks["stripe.process_event"]
    assert task.max_retries is not None and task.max_retries <= 10
    from sqlalchemy.exc import OperationalError

    from reconcile.stripe_gateway import StripeUnavailable

    assert {OperationalError, StripeUnavailable} <= set(task.autoretry_for)


def test_a_task_binds_its_log_context_while_it_runs_and_leaves_none_behind(monkeypatch) -> None:
    seen: dict[str, Any] = {}
    import reconcile.usecases as service

    def fake_process(svc: Any, event_id: str, **_: Any) -> Any:
        seen.update(structlog.contextvars.get_contextvars())
        return service.ProcessOutcome("processed", "matched", "pi_123")

    monkeypatch.setattr(tasks, "_services", lambda: object())
    monkeypatch.setattr(service, "process_event", fake_process)
    structlog.contextvars.clear_contextvars()

    result = tasks.process_event("evt_123")

    assert result["status"] == "processed"
    assert seen["event_id"] == "evt_123" and seen["task"] == "stripe.process_event"
    assert structlog.contextvars.get_contextvars() == {}


@pytest.mark.integration
def test_redrive_picks_pending_and_retryable_failed_rows_old_enough_only(pg_engine) -> None:
    now = ago(seconds=0)
    rows = {
        "evt_old_pending": ("pending", 0, ago(minutes=10), None),
        "evt_young_pending": ("pending", 0, ago(seconds=5), None),
        "evt_failed_retryable": ("failed", 2, ago(minutes=10), None),
        "evt_failed_exhausted": ("failed", 10, ago(minutes=10), None),
        "evt_processed": ("processed", 1, ago(minutes=10), None),
        "evt_recently_enqueued": ("pending", 0, ago(minutes=10), ago(seconds=5)),
    }
    with pg_engine.begin() as conn:
        for event_id, (status, attempts, received, enqueued) in rows.items():
            event = {
                "id": event_id,
                "type": "payment_intent.succeeded",
                "created": epoch(received),
                "data": {"object": {"id": "pi_1", "object": "payment_intent"}},
            }
            assert inbox.store_event(conn, event, source="webhook", now=received)
            conn.execute(
                inbox_table.update()
                .where(inbox_table.c.event_id == event_id)
                .values(status=status, attempts=attempts, enqueued_at=enqueued)
            )
        due = inbox.due_for_redrive(
            conn, older_than=now - timedelta(minutes=1), limit=100, max_attempts=10
        )
        count, oldest = inbox.lag(conn, now)
    assert sorted(due) == ["evt_failed_retryable", "evt_old_pending"]
    assert count == 5
    assert 590 <= oldest <= 610


def test_without_a_broker_events_are_processed_on_the_in_process_pool(monkeypatch) -> None:
    import threading

    import reconcile.usecases as service
    from worker.queue import enqueue_events, in_process

    done = threading.Event()
    processed: list[str] = []

    def fake_process(svc: Any, event_id: str, **_: Any) -> Any:
        processed.append(event_id)
        if len(processed) == 2:
            done.set()
        return service.ProcessOutcome("processed", "matched", "pi_1")

    monkeypatch.setattr(tasks, "_services", lambda: object())
    monkeypatch.setattr(service, "process_event", fake_process)
    app = celery_module.make_app(Settings(broker_url=None), set_as_current=False)
    assert in_process(app)

    enqueue_events(["evt_a", "evt_b"], app=app)

    assert done.wait(10)
    assert sorted(processed) == ["evt_a", "evt_b"]


def test_without_a_broker_the_in_process_beat_runs_the_schedule() -> None:
    import threading

    from worker.queue import InProcessBeat

    app = Celery("beat-test", set_as_current=False)
    ticks: list[int] = []
    ticked = threading.Event()

    @app.task(name="test.tick")
    def tick(n: int) -> None:
        ticks.append(n)
        if len(ticks) >= 3:
            ticked.set()

    app.conf.beat_schedule = {"tick": {"task": "test.tick", "schedule": 0.05, "args": (1,)}}
    beat = InProcessBeat(app).start()
    try:
        assert ticked.wait(10)
    finally:
        beat.stop()
    assert set(ticks) == {1}
