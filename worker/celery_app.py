"""The Celery application: ``celery -A worker.celery_app worker`` / ``beat``.

Delivery guarantees: tasks are acknowledged only after they finish (``acks_late``) and
re-queued when the worker process dies (``reject_on_worker_lost``); with one message
prefetched per process a dead worker strands at most one message, which Redis hands out
again after ``visibility_timeout``.  That timeout must exceed the longest task, or Redis
would hand a still-running task to a second worker: tasks are hard-limited below it.  Every
task is idempotent, so the redelivery that these settings allow is harmless.

Without ``RECON_BROKER_URL`` the app points at the in-memory transport so that it still
imports and a worker still starts, but nothing is sent through it: ``worker.queue`` runs
tasks on an in-process thread pool instead (see there).

The beat schedule is declared here, beside the rest of the app's configuration, from the
interval settings; the tasks it names live in worker/tasks.py, which this module does not
import (a process that only sends messages, like the intake, never loads the task code).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_init, worker_process_shutdown

from worker.logs import configure_logging
from worker.settings import Settings, get_settings

VISIBILITY_TIMEOUT = 2 * 3600
TASK_TIME_LIMIT = VISIBILITY_TIMEOUT - 10 * 60
TASK_SOFT_TIME_LIMIT = TASK_TIME_LIMIT - 5 * 60
IN_PROCESS_BROKER = "memory://"


def make_app(
    settings: Settings | None = None, *, queue: str | None = None, set_as_current: bool = True
) -> Celery:
    """A configured app.  Tests make their own (another broker, a queue of their own)."""
    settings = settings or get_settings()
    app = Celery("stripe_recon", set_as_current=set_as_current)
    conf: dict[str, Any] = {
        "broker_url": settings.broker_url or IN_PROCESS_BROKER,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": TASK_TIME_LIMIT,
        "task_soft_time_limit": TASK_SOFT_TIME_LIMIT,
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT,
            "socket_connect_timeout": 3,
        },
        "broker_connection_retry_on_startup": True,
        # A task running when the broker connection drops goes on (its ack then fails as a
        # lost connection and Redis hands the message out again after visibility_timeout;
        # every task is idempotent).  Cancelling it would throw away a long sweep's progress
        # on every broker blip.  Stated, not left to Celery's changing default.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_timeout": 3,
        # The intake publishes after its commit while Stripe waits for the answer; a broker
        # that is down must fail fast there (redrive re-sends), not stall the request.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "timezone": "UTC",
        "enable_utc": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "beat_schedule": beat_schedule(settings),
        "include": ["worker.tasks"],
        # Read by worker.queue: no broker means tasks run in this process.
        "recon_in_process": settings.broker_url is None,
    }
    broker = settings.broker_url or ""
    if broker.startswith(("redis://", "rediss://")):
        # kombu's Redis transport with the guard that keeps a broker restart from killing
        # the worker (worker/broker.py).
        conf["broker_transport"] = "worker.broker:RedisTransport"
    # Prefork, with the fix for a child that dies while the consumer reconnects.
    conf["worker_pool"] = "worker.broker:TaskPool"
    if queue:
        conf["task_default_queue"] = queue
    app.conf.update(conf)
    return app


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Beat entries from the interval settings; an interval of 0 disables its job.

    Each message expires after one interval: if workers were down, a backlog of identical
    runs would only queue up behind the lock."""
    jobs = (
        ("recon.sweep", settings.sweep_interval),
        ("recon.catch_up", settings.catch_up_interval),
        ("recon.scan_missing", settings.scan_interval),
        ("inbox.redrive", settings.redrive_interval),
        ("tickets.deliver", settings.deliver_interval),
    )
    schedule: dict[str, dict[str, Any]] = {}
    for task, every in jobs:
        seconds = every.total_seconds()
        if seconds <= 0:
            continue
        no_trigger = ("inbox.redrive", "tickets.deliver")
        kwargs: dict[str, Any] = {} if task in no_trigger else {"trigger": "beat"}
        schedule[task] = {
            "task": task,
            "schedule": seconds,
            "kwargs": kwargs,
            "options": {"expires": seconds},
        }
    return schedule


def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    level = logging.getLevelName(loglevel) if isinstance(loglevel, str) else loglevel
    configure_logging(level=level if isinstance(level, int) else logging.INFO)
    # Celery's own lines ("ready", task failures) at the level asked on the command line.
    logging.getLogger("celery").setLevel(level if isinstance(level, int) else logging.INFO)


def _serve_metrics(**_: Any) -> None:
    port = os.environ.get("RECON_METRICS_PORT")
    if port:
        from worker.metrics import serve_metrics

        serve_metrics(int(port))


def _child_exited(pid: int | None = None, **_: Any) -> None:
    from worker.metrics import process_exited

    process_exited(pid or os.getpid())


# Connected so Celery leaves logging to us: one structlog configuration, with redaction.
setup_logging.connect(_setup_logging)
# The main worker process serves the scrape target; it outlives the pool's children.
worker_init.connect(_serve_metrics)
worker_process_shutdown.connect(_child_exited)


app = make_app()
