"""Hand inbox events to the workers.  Call only after the commit that stored them.

Every function takes the Celery app it sends through (worker/celery_app.py's ``app`` in
production, a test's own app in tests); this module imports no app of its own.

With a broker (``RECON_BROKER_URL``), one Celery message per event, carrying only the
event id (the row in the inbox is the truth; a message is just a nudge, so a lost or
duplicated one costs a redrive or a no-op, never money).  A broker failure raises
:class:`EnqueueError`: the caller logs and counts it, the row stays ``pending`` and
``inbox.redrive`` re-sends it later.

Without a broker (the embedded default), tasks run in this process on a small thread
pool: the same task code, called directly, without Celery's retries (a failed event stays
``pending``/``failed`` in the inbox for the next redrive).  :func:`start_in_process_beat`
runs the periodic jobs in that mode, for a single-process deployment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from celery import Celery

from reconcile.redact import redact
from worker.logs import get_logger

log = get_logger(__name__)

PROCESS_EVENT = "stripe.process_event"
IN_PROCESS_WORKERS = 4


class EnqueueError(Exception):
    """The broker did not take the message (the inbox row is safe; redrive will retry)."""


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def in_process(app: Celery) -> bool:
    return bool(app.conf.get("recon_in_process", False))


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=IN_PROCESS_WORKERS, thread_name_prefix="recon-inproc"
            )
        return _executor


def _run_here(app: Celery, name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    try:
        if name not in app.tasks:
            # The app names its task modules (``include``) without importing them; a
            # worker process loads them at start, this process on its first task.
            app.loader.import_default_modules()
        app.tasks[name](*args, **kwargs)
    except Exception as exc:
        # The task already logged its summary line; this only keeps the pool thread alive.
        log.debug("in-process task failed", task=name, error=type(exc).__name__)


def submit_in_process(app: Celery, name: str, *args: Any, **kwargs: Any) -> None:
    _pool().submit(_run_here, app, name, list(args), kwargs)


def enqueue_events(ids: Iterable[str], *, app: Celery) -> None:
    id_list = list(ids)
    if not id_list:
        return
    if in_process(app):
        for event_id in id_list:
            submit_in_process(app, PROCESS_EVENT, event_id)
        return
    try:
        with app.producer_or_acquire() as producer:
            for event_id in id_list:
                app.send_task(PROCESS_EVENT, args=[event_id], producer=producer, retry=True)
    except Exception as exc:
        raise EnqueueError(redact(f"{type(exc).__name__}: {exc}")) from exc


def enqueue_sweep_parts(
    parts: Iterable[tuple[datetime | None, datetime | None]],
    *,
    app: Celery,
    older_than_seconds: float,
    actor: str,
) -> list[str]:
    """One ``recon.sweep`` task per creation window, for the workers to share; task ids.

    Only through a broker: parts run in this process would share one core and gain nothing.
    """
    if in_process(app):
        raise RuntimeError("no broker configured (RECON_BROKER_URL): parts need workers")
    ids = []
    for lo, hi in parts:
        sent = app.send_task(
            "recon.sweep",
            kwargs={
                "trigger": "cli",
                "actor": actor,
                "older_than_seconds": older_than_seconds,
                "newer_than": lo.isoformat() if lo else None,
                "created_before": hi.isoformat() if hi else None,
            },
            retry=True,
        )
        ids.append(str(sent.id))
    return ids


def enqueue_event(event_id: str, *, app: Celery) -> None:
    enqueue_events([event_id], app=app)


def shutdown_in_process(wait: bool = True) -> None:
    global _executor
    with _executor_lock:
        pool, _executor = _executor, None
    if pool is not None:
        pool.shutdown(wait=wait)


class InProcessBeat:
    """Runs the beat schedule in this process (no broker mode); ``stop()`` to end it."""

    def __init__(self, app: Celery, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recon-inproc-beat", daemon=True)

    def start(self) -> InProcessBeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        entries = []
        for entry in self.app.conf.beat_schedule.values():
            every = float(entry["schedule"])
            entries.append([self.clock() + every, every, entry])
        while entries and not self._stop.is_set():
            now = self.clock()
            for item in entries:
                due, every, entry = item
                if now >= due:
                    item[0] = now + every
                    submit_in_process(
                        self.app, entry["task"], *entry.get("args", ()), **entry.get("kwargs", {})
                    )
            self._stop.wait(max(0.05, min(e[0] for e in entries) - self.clock()))


def start_in_process_beat(app: Celery) -> InProcessBeat:
    return InProcessBeat(app).start()
