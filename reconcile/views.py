"""Read-only views for listings and reports: plain values, formatted by whoever shows them.

The one module besides the table owners (inbox, runs, tickets) that reads the ``recon_*``
tables, and it only reads (tests/unit/test_structure.py holds it to that).  The CLI and the
console format what these return; neither holds SQL of its own.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, case, desc, func, select

from reconcile.model import Severity
from reconcile.tables import audit, inbox, runs, tickets

__all__ = [
    "AGE_BUCKETS",
    "INBOX_STATUSES",
    "age_bucket",
    "build_report",
    "list_inbox",
    "list_runs",
    "list_tickets",
    "run_with_audit",
    "ticket_with_history",
]

AGE_BUCKETS = (
    ("<1h", timedelta(hours=1)),
    ("1-24h", timedelta(days=1)),
    ("1-7d", timedelta(days=7)),
)


def _run_dict(row: Any) -> dict[str, Any]:
    d = dict(row)
    d["window"] = {"start": d.get("window_start"), "end": d.get("window_end")}
    return d


def list_runs(
    conn: Connection, *, job: str | None = None, status: str | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """Recent runs, newest first."""
    q = select(runs).order_by(desc(runs.c.id)).limit(limit)
    if job:
        q = q.where(runs.c.job == job)
    if status:
        q = q.where(runs.c.status == status)
    return [_run_dict(r) for r in conn.execute(q).mappings()]


def run_with_audit(
    conn: Connection, run_id: int
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """One run and the audit rows (ledger actions) it recorded, or None."""
    row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
    if row is None:
        return None
    rows = [
        dict(a)
        for a in conn.execute(
            select(audit).where(audit.c.run_id == run_id).order_by(audit.c.id)
        ).mappings()
    ]
    return _run_dict(row), rows


def _ticket_dict(row: Any) -> dict[str, Any]:
    d = dict(row)
    d["severity"] = Severity(int(d["severity"])).label
    return d


def list_tickets(
    conn: Connection,
    *,
    status: str | None = "open",
    kind: str | None = None,
    severity: Severity | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Tickets, most severe first, then oldest first; ``status`` None means all."""
    q = select(tickets).order_by(desc(tickets.c.severity), tickets.c.opened_at).limit(limit)
    if status is not None:
        q = q.where(tickets.c.status == status)
    if kind:
        q = q.where(tickets.c.kind == kind)
    if severity is not None:
        q = q.where(tickets.c.severity == int(severity))
    return [_ticket_dict(r) for r in conn.execute(q).mappings()]


def ticket_with_history(
    conn: Connection, ticket_id: int
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """One ticket and every audit row of its payment, oldest first, or None."""
    row = conn.execute(select(tickets).where(tickets.c.id == ticket_id)).mappings().first()
    if row is None:
        return None
    t = _ticket_dict(row)
    history = [
        dict(a)
        for a in conn.execute(
            select(audit).where(audit.c.payment_id == t["payment_id"]).order_by(audit.c.id)
        ).mappings()
    ]
    return t, history


def age_bucket(age: timedelta) -> str:
    for name, limit in AGE_BUCKETS:
        if age < limit:
            return name
    return ">7d"


def build_report(conn: Connection, since: timedelta, now: datetime) -> dict[str, Any]:
    """How the books and the pipeline did over the period ``since`` before ``now``.

    Plain queries over the period's rows, grouped in Python: the volumes (days of audit rows
    and tickets) are small, and it keeps one code path for SQLite and PostgreSQL.
    """
    start, prev_start = now - since, now - 2 * since
    actions: dict[str, Counter[str]] = defaultdict(Counter)
    for action, at in conn.execute(
        select(audit.c.action, audit.c.created_at).where(audit.c.created_at >= start)
    ):
        actions[at.date().isoformat()][action] += 1
    opened: dict[str, Counter[str]] = defaultdict(Counter)
    this_period: Counter[str] = Counter()
    last_period: Counter[str] = Counter()
    for kind, at in conn.execute(
        select(tickets.c.kind, tickets.c.opened_at).where(tickets.c.opened_at >= prev_start)
    ):
        if at >= start:
            opened[at.date().isoformat()][kind] += 1
            this_period[kind] += 1
        else:
            last_period[kind] += 1
    ages: Counter[str] = Counter()
    stuck: list[dict[str, Any]] = []
    for row in conn.execute(
        select(tickets.c.id, tickets.c.kind, tickets.c.payment_id, tickets.c.opened_at)
        .where(tickets.c.status == "open")
        .order_by(tickets.c.opened_at)
    ).mappings():
        age = now - row["opened_at"]
        ages[age_bucket(age)] += 1
        if row["kind"] == "stuck_payment" and len(stuck) < 10:
            stuck.append({"ticket_id": row["id"], "payment_id": row["payment_id"], "age": age})
    calls = limited = 0
    by_status: Counter[str] = Counter()
    # Dry runs changed nothing: they are not part of how the pipeline did.
    dry_runs = 0
    for status, c, rl, dry in conn.execute(
        select(
            runs.c.status, runs.c.stripe_calls, runs.c.stripe_rate_limited, runs.c.dry_run
        ).where(runs.c.started_at >= start)
    ):
        if dry:
            dry_runs += 1
            continue
        by_status[status] += 1
        calls += int(c or 0)
        limited += int(rl or 0)
    recurring = []
    for kind in sorted(set(this_period) | set(last_period)):
        now_n, before_n = this_period[kind], last_period[kind]
        # A jump worth a look: at least doubled and not just one or two tickets.
        jump = now_n >= 3 and now_n >= 2 * before_n
        recurring.append({"kind": kind, "this_period": now_n, "previous": before_n, "jump": jump})
    return {
        "since": start.isoformat(),
        "until": now.isoformat(),
        "actions_per_day": {d: dict(c) for d, c in sorted(actions.items())},
        "tickets_opened_per_day": {d: dict(c) for d, c in sorted(opened.items())},
        "open_tickets_by_age": {name: ages[name] for name in ("<1h", "1-24h", "1-7d", ">7d")},
        "oldest_stuck_payments": stuck,
        "stripe_calls": calls,
        "stripe_rate_limited": limited,
        "runs_by_status": dict(by_status),
        "dry_runs_left_out": dry_runs,
        "recurring_issues": recurring,
    }


INBOX_STATUSES = ("failed", "pending", "processed", "ignored")


def list_inbox(
    conn: Connection, *, status: str | None = None, limit: int = 50
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Stored Stripe events, failing first (then pending, oldest first; then the latest
    processed), and how many there are of each status."""
    order = case(
        (inbox.c.status == "failed", 0),
        (inbox.c.status == "pending", 1),
        else_=2,
    )
    q = (
        select(
            inbox.c.event_id,
            inbox.c.type,
            inbox.c.payment_id,
            inbox.c.status,
            inbox.c.attempts,
            inbox.c.last_error,
            inbox.c.source,
            inbox.c.received_at,
            inbox.c.processed_at,
            inbox.c.event_created,
        )
        .order_by(
            order,
            case((inbox.c.status.in_(("failed", "pending")), inbox.c.received_at)),
            desc(inbox.c.received_at),
        )
        .limit(limit)
    )
    if status:
        q = q.where(inbox.c.status == status)
    rows = [dict(r) for r in conn.execute(q).mappings()]
    totals = {
        str(st): int(n)
        for st, n in conn.execute(select(inbox.c.status, func.count()).group_by(inbox.c.status))
    }
    return rows, totals
