"""Prometheus metrics.  The names are a contract: alert rules in deploy/ refer to them.

Several uvicorn or Celery worker processes: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory writable by all of them *before* they start (prometheus_client picks its value
store at import time).  Each process then writes its samples to files there, and
:func:`render` aggregates every process's files on each scrape.  Gauges use
``livemostrecent``: the inbox gauges are set by whichever process serves the scrape, so
the most recent live value is the true one.

Celery workers: set ``RECON_METRICS_PORT`` and the worker's main process serves /metrics
there (with ``PROMETHEUS_MULTIPROC_DIR`` set, the prefork children's samples included).

The helpers (``count_action`` ...) are plain functions so that code in ``reconcile/``,
which must not import this module, can be handed them as callbacks.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from reconcile.inbox import HANDLED_PREFIXES, INVALID_REASONS

__all__ = [
    "ACTIONS",
    "BLNK_REQUESTS",
    "CONTENT_TYPE_LATEST",
    "ENQUEUE_FAILURES",
    "INBOX_LAG",
    "INBOX_UNPROCESSED",
    "REJECTION_REASONS",
    "RUNS",
    "STRIPE_REQUESTS",
    "TASK_DURATION",
    "TICKETS_OPENED",
    "WEBHOOKS",
    "WEBHOOK_OUTCOMES",
    "WEBHOOK_REJECTIONS",
    "blnk_request",
    "count_action",
    "count_enqueue_failure",
    "count_rejection",
    "count_run",
    "count_ticket",
    "count_webhook",
    "observe_task",
    "process_exited",
    "registry",
    "render",
    "serve_metrics",
    "set_inbox_lag",
    "stripe_request",
]

WEBHOOK_OUTCOMES = frozenset(
    {
        "accepted",
        "duplicate",
        "bad_signature",
        "stale",
        "invalid",
        "too_large",
        "db_unavailable",
        "disconnected",
        "timeout",
        "error",
    }
)
# Why a webhook was refused (recon_webhooks_rejected_total{reason}): a fixed set, so that
# no input can grow the label set.  The JSON reasons are reconcile.inbox.INVALID_REASONS.
REJECTION_REASONS = (
    frozenset(
        {
            "no_signature",
            "bad_signature",
            "stale",
            "future",
            "not_utf8",
            "unstorable",
            "too_large",
            "bad_length",
            "slow_body",
            "slow_headers",
            "headers_too_large",
            "malformed_http",
            "over_capacity",
            "no_secret",
            "other",
        }
    )
    | INVALID_REASONS
)

WEBHOOKS = Counter(
    "recon_webhooks_received_total",
    "Stripe webhook deliveries by event type and outcome",
    ["type", "outcome"],
)
INBOX_LAG = Gauge(
    "recon_inbox_lag_seconds",
    "Age of the oldest unprocessed inbox event (0 when none), measured at scrape time",
    multiprocess_mode="livemostrecent",
)
INBOX_UNPROCESSED = Gauge(
    "recon_inbox_unprocessed",
    "Inbox events pending or failed, measured at scrape time",
    multiprocess_mode="livemostrecent",
)
WEBHOOK_REJECTIONS = Counter(
    "recon_webhooks_rejected_total",
    "Webhook requests refused, by why (a fixed set of reasons)",
    ["reason"],
)
ACTIONS = Counter("recon_actions_total", "Reconciliation actions taken", ["action"])
TICKETS_OPENED = Counter(
    "recon_tickets_opened_total", "Discrepancy tickets opened", ["kind", "severity"]
)
STRIPE_REQUESTS = Counter(
    "recon_stripe_requests_total",
    "Stripe API requests by endpoint and outcome (ok, not_found, rate_limited, ...)",
    ["endpoint", "outcome"],
)
BLNK_REQUESTS = Counter(
    "recon_blnk_requests_total",
    "Blnk API requests (RECON_LEDGER=blnk) by endpoint and HTTP status (or error)",
    ["endpoint", "outcome"],
)
RUNS = Counter("recon_runs_total", "Job runs by job and final status", ["job", "status"])
TASK_DURATION = Histogram(
    "recon_task_duration_seconds",
    "Celery task durations",
    ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
EVENTS_REFUSED = Counter(
    "recon_events_refused_total",
    "Events stored but never acted on: another mode (livemode) or Connect account",
    ["cause"],
)
ENQUEUE_FAILURES = Counter(
    "recon_enqueue_failures_total",
    "Inbox events committed but not handed to the queue (redrive will pick them up)",
)
JOBS_SKIPPED = Counter(
    "recon_jobs_skipped_total",
    "Periodic job executions skipped because a live run of the same job holds its lock",
    ["job"],
)


@functools.lru_cache(maxsize=1024)
def _webhook_counter(event_type: str, outcome: str) -> Any:
    # labels() takes a lock and builds a key on every call; the intake counts every webhook.
    return WEBHOOKS.labels(type=event_type, outcome=outcome)


# Event types get a label each only while there are few: a signed sender can name any
# type, and every label is a series that /metrics keeps forever.
_MAX_TYPE_LABELS = 64
_type_labels: set[str] = {"unknown", "other"}


def _type_label(event_type: str) -> str:
    if event_type in _type_labels:
        return event_type
    if (
        len(_type_labels) < _MAX_TYPE_LABELS
        and len(event_type) <= 60
        and event_type.replace("_", "").replace(".", "").isalnum()
        and event_type.isascii()
        and event_type.removeprefix("v1.").startswith(HANDLED_PREFIXES)
    ):
        _type_labels.add(event_type)
        return event_type
    return "other"


def count_webhook(event_type: str, outcome: str) -> None:
    _webhook_counter(_type_label(event_type or "unknown"), outcome).inc()


def count_rejection(reason: str) -> None:
    WEBHOOK_REJECTIONS.labels(reason=reason if reason in REJECTION_REASONS else "other").inc()


def count_action(action: str) -> None:
    ACTIONS.labels(action=str(action)).inc()


def count_ticket(kind: str, severity: str | int) -> None:
    TICKETS_OPENED.labels(kind=str(kind), severity=str(severity)).inc()


def stripe_request(endpoint: str, outcome: str) -> None:
    STRIPE_REQUESTS.labels(endpoint=endpoint, outcome=outcome).inc()


def blnk_request(endpoint: str, outcome: str) -> None:
    BLNK_REQUESTS.labels(endpoint=endpoint, outcome=outcome).inc()


def count_run(job: str, status: str) -> None:
    RUNS.labels(job=job, status=status).inc()


def count_event_refused(cause: str) -> None:
    # ``cause`` is "livemode" or "account", never the account id (unbounded label values).
    EVENTS_REFUSED.labels(cause=cause if cause in ("livemode", "account") else "other").inc()


def job_skipped(job: str) -> None:
    JOBS_SKIPPED.labels(job=job).inc()


def count_enqueue_failure(n: int = 1) -> None:
    ENQUEUE_FAILURES.inc(n)


def observe_task(task: str, seconds: float) -> None:
    TASK_DURATION.labels(task=task).observe(seconds)


def set_inbox_lag(unprocessed: int, oldest_age_seconds: float) -> None:
    INBOX_UNPROCESSED.set(unprocessed)
    INBOX_LAG.set(oldest_age_seconds)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def registry() -> CollectorRegistry:
    if multiprocess_dir():
        from prometheus_client import multiprocess

        collecting = CollectorRegistry()
        multiprocess.MultiProcessCollector(collecting)  # type: ignore[no-untyped-call]
        return collecting
    return REGISTRY


def serve_metrics(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - a scrape target
    """Expose /metrics on its own port (Celery workers have no HTTP server of their own)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=addr, registry=registry())


def process_exited(pid: int) -> None:
    """Drop a dead process's live gauges (multiprocess mode only)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def render(before: Callable[[], None] | None = None) -> bytes:
    """The exposition text; ``before`` runs first (to refresh gauges measured on scrape)."""
    if before is not None:
        before()
    return generate_latest(registry())
