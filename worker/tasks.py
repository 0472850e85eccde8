"""Celery tasks (the beat schedule that runs the periodic ones is in worker/celery_app.py).

Every task is idempotent (the inbox, ledger and runs tables carry the state, a message is
only a nudge), so acks_late redelivery and retries are safe.  Retries are automatic only
for transient failures (database unreachable, Stripe unavailable after its own retries),
with exponential backoff and jitter, and bounded; anything else fails the task once,
and for events the inbox row keeps the error for redrive and for on-call.

Arguments are JSON: durations in seconds, times as ISO 8601 strings.

Periodic jobs hold a job lock (worker/locks.py) for their whole run: beat may fire again
while a slow sweep is still going, or two beats may run by mistake; the second run sees
the lock, logs and returns.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import structlog
from celery import Task, shared_task
from celery.exceptions import Ignore, Retry
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from reconcile.redact import describe
from reconcile.stripe_gateway import StripeUnavailable
from worker import metrics
from worker.locks import LockBackend, default_backend, job_lock
from worker.logs import get_logger
from worker.queue import enqueue_events
from worker.settings import Settings, get_settings

if TYPE_CHECKING:
    from reconcile.ports import Services

log = get_logger(__name__)

MAX_RETRIES = 5
MAX_EVENT_ATTEMPTS = 10
REDRIVE_LIMIT = 1000


# Worth a retry with backoff: the database or Stripe is away for a while (the gateway has
# already spent its own retries by the time StripeUnavailable reaches us).
TRANSIENT: tuple[type[BaseException], ...] = (OperationalError, PoolTimeout, StripeUnavailable)


# Indirections so tests (and an embedding process) can swap the process-wide wiring.
def _settings() -> Settings:
    return get_settings()


def _services() -> Services:
    from worker.wiring import services

    return services()


def _lock_backend() -> LockBackend:
    settings = _settings()
    if settings.redis_url:
        return _redis_locks(settings.redis_url)
    return default_backend(redis_url=None, engine=_services().engine)


@functools.lru_cache(maxsize=4)
def _redis_locks(url: str) -> LockBackend:
    # One client (and connection pool) per process, not one per periodic run.
    return default_backend(redis_url=url, engine=None)


def _now() -> datetime:
    return datetime.now(UTC)


class ReconTask(Task):  # type: ignore[misc]
    """Binds log context, times the run, writes one summary line, then unbinds."""

    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = TRANSIENT
    retry_backoff = 2
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = MAX_RETRIES

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        context: dict[str, Any] = {"task": self.name, "task_id": self.request.id}
        if self.name == "stripe.process_event" and args:
            context["event_id"] = args[0]
        started = time.perf_counter()
        # Restore exactly what was bound before (not just unbind our keys): the task binds
        # more as it learns it (payment_id, run_id), and a task called inline (in-process
        # mode, the CLI) must neither leak those nor wipe its caller's context.
        before = structlog.contextvars.get_contextvars()
        structlog.contextvars.bind_contextvars(**context)
        outcome = "error"
        summary: dict[str, Any] = {}
        try:
            result = super().__call__(*args, **kwargs)
            if isinstance(result, dict):
                summary = result
            outcome = str(summary.get("status", "ok"))
            return result
        except Retry as exc:
            outcome = "retry"
            summary = {"retry_in": getattr(exc, "when", None)}
            raise
        except Ignore:
            outcome = "ignored"
            raise
        except Exception as exc:
            summary = {"error": describe(exc)}
            raise
        finally:
            elapsed = time.perf_counter() - started
            metrics.observe_task(self.name, elapsed)
            level = "warning" if outcome in ("error", "retry", "failed", "missing") else "info"
            getattr(log, level)(
                "task finished",
                outcome=outcome,
                retries=self.request.retries,
                duration_ms=round(elapsed * 1000, 1),
                **{k: v for k, v in summary.items() if k != "status"},
            )
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(**before)


def _holder_dead(holder: str) -> bool:
    from reconcile.usecases.lifecycle import holder_is_dead

    try:
        return holder_is_dead(_services(), holder)
    except Exception as exc:  # cannot tell: leave the lock to its TTL
        log.warning("could not check a lock holder", error=type(exc).__name__)
        return False


@contextmanager
def _periodic(job: str, ttl: timedelta = timedelta(seconds=90)) -> Iterator[bool]:
    # A holder that died mid-run (SIGKILL: its run's heartbeat stopped, or its process is
    # gone from this host) does not make the next run wait out the lock's TTL: it is taken
    # over, and the run that follows records the dead one as partial (lifecycle.py).
    with job_lock(_lock_backend(), job, ttl=ttl, dead=_holder_dead) as held:
        if not held:
            log.info("job skipped: a previous run still holds its lock", job=job)
            metrics.job_skipped(job)
        yield held


def _run_summary(result: Any) -> dict[str, Any]:
    # recon_runs_total is counted by the service itself (its hooks), for CLI runs as well.
    status = str(getattr(result, "status", "unknown"))
    run_id = getattr(result, "run_id", None)
    if run_id is not None:
        structlog.contextvars.bind_contextvars(run_id=run_id)
    return {"status": status, "run_id": run_id, "counts": dict(getattr(result, "counts", {}))}


def _run_job(job: str, run: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    """One periodic job: skip if a previous run still holds its lock, else run, summarised."""
    with _periodic(job) as held:
        if not held:
            return {"status": "skipped"}
        return _run_summary(run(_services(), **kwargs))


def _seconds(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=float(value))


def _time(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- tasks


def _task(name: str) -> Callable[[Callable[..., Any]], Any]:
    # shared_task: registered on every app, including the ones tests build for themselves.
    return cast(
        Callable[[Callable[..., Any]], Any], shared_task(bind=True, base=ReconTask, name=name)
    )


@_task("stripe.process_event")
def process_event(self: ReconTask, event_id: str) -> dict[str, Any]:
    from reconcile import usecases

    outcome = usecases.process_event(_services(), event_id)
    payment_id = getattr(outcome, "payment_id", None)
    if payment_id:
        structlog.contextvars.bind_contextvars(payment_id=payment_id)
    return {"status": outcome.status, "detail": getattr(outcome, "detail", None)}


@_task("recon.sweep")
def sweep(
    self: ReconTask,
    *,
    trigger: str = "beat",
    actor: str = "system",
    dry_run: bool = False,
    older_than_seconds: float | None = None,
    limit: int | None = None,
    rerun_of: int | None = None,
    newer_than: str | None = None,
    created_before: str | None = None,
) -> dict[str, Any]:
    from reconcile import usecases

    # One part of a split backlog (``recon sweep --parts``) holds a lock of its own, so
    # that the parts run side by side while each part still runs once.
    part = newer_than is not None or created_before is not None
    return _run_job(
        f"recon.sweep:{newer_than or ''}:{created_before or ''}" if part else "recon.sweep",
        usecases.run_sweep,
        trigger=trigger,
        actor=actor,
        dry_run=dry_run,
        older_than=_seconds(older_than_seconds),
        limit=limit,
        rerun_of=rerun_of,
        newer_than=_time(newer_than),
        created_before=_time(created_before),
    )


@_task("recon.catch_up")
def catch_up(
    self: ReconTask,
    *,
    trigger: str = "beat",
    actor: str = "system",
    dry_run: bool = False,
    since: str | None = None,
    rerun_of: int | None = None,
) -> dict[str, Any]:
    from reconcile import usecases

    return _run_job(
        "recon.catch_up",
        usecases.run_catch_up,
        trigger=trigger,
        actor=actor,
        dry_run=dry_run,
        since=_time(since),
        rerun_of=rerun_of,
    )


@_task("recon.scan_missing")
def scan_missing(
    self: ReconTask,
    *,
    trigger: str = "beat",
    actor: str = "system",
    dry_run: bool = False,
    since: str | None = None,
    until: str | None = None,
    rerun_of: int | None = None,
) -> dict[str, Any]:
    from reconcile import usecases

    end = _time(until) or _now()
    start = _time(since) or end - _settings().scan_window
    return _run_job(
        "recon.scan_missing",
        usecases.run_scan,
        trigger=trigger,
        actor=actor,
        dry_run=dry_run,
        since=start,
        until=end,
        rerun_of=rerun_of,
    )


@_task("inbox.redrive")
def redrive(
    self: ReconTask,
    *,
    older_than_seconds: float | None = None,
    limit: int = REDRIVE_LIMIT,
    max_attempts: int = MAX_EVENT_ATTEMPTS,
) -> dict[str, Any]:
    from reconcile import inbox

    settings = _settings()
    age = _seconds(older_than_seconds)
    cutoff_age = settings.redrive_age if age is None else age
    with _periodic("inbox.redrive") as held:
        if not held:
            return {"status": "skipped"}
        engine = _services().engine
        now = _now()
        with engine.begin() as conn:
            ids = inbox.due_for_redrive(
                conn, older_than=now - cutoff_age, limit=limit, max_attempts=max_attempts
            )
        if ids:
            # Send before marking: a crash in between re-sends (a harmless duplicate) rather
            # than marking rows as handed over that never were.
            enqueue_events(ids, app=self.app)
            with engine.begin() as conn:
                inbox.mark_enqueued(conn, ids, now)
        return {"status": "ok", "redriven": len(ids)}


@_task("tickets.deliver")
def deliver_tickets(self: ReconTask, *, limit: int = 100) -> dict[str, Any]:
    # Outbox rows written with the tickets; sending happens here, never inside a
    # reconciliation, so a slow or broken receiver cannot hold up the ledger.
    from worker.sinks import deliver_due

    with _periodic("tickets.deliver") as held:
        if not held:
            return {"status": "skipped"}
        return {"status": "ok", **deliver_due(_services().engine, _settings(), limit=limit)}
