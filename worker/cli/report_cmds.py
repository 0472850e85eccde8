"""`recon report`: how the books and the pipeline did over a period.

Plain Core queries over rows of the period, grouped in Python: the volumes (days of audit
rows and tickets) are small, and it keeps one code path for SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from sqlalchemy import Connection, select

from reconcile.tables import audit, runs, tickets
from worker.cli.context import app_state
from worker.cli.output import console, fail, print_json, table
from worker.durations import BadDuration, format_duration, parse_duration

BUCKETS = (("<1h", timedelta(hours=1)), ("1-24h", timedelta(days=1)), ("1-7d", timedelta(days=7)))


def _bucket(age: timedelta) -> str:
    for name, limit in BUCKETS:
        if age < limit:
            return name
    return ">7d"


def build_report(conn: Connection, since: timedelta, now: datetime) -> dict[str, Any]:
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
        at = at
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
        ages[_bucket(age)] += 1
        if row["kind"] == "stuck_payment" and len(stuck) < 10:
            stuck.append(
                {
                    "ticket_id": row["id"],
                    "payment_id": row["payment_id"],
                    "age": format_duration(age),
                }
            )
    calls = limited = 0
    by_status: Counter[str] = Counter()
    for status, c, rl in conn.execute(
        select(runs.c.status, runs.c.stripe_calls, runs.c.stripe_rate_limited).where(
            runs.c.started_at >= start
        )
    ):
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
        "recurring_issues": recurring,
    }


def report(
    since: Annotated[str, typer.Option(help="Period length, e.g. 7d.")] = "7d",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Actions, tickets, stuck payments, Stripe usage and recurring issues over a period."""
    try:
        period = parse_duration(since)
    except BadDuration as exc:
        fail(f"--since: {exc}")
    if period <= timedelta(0):
        fail("--since must be longer than 0s")
    with app_state.begin() as conn:
        rep = build_report(conn, period, datetime.now(UTC))
    if as_json:
        print_json(rep)
        return
    console.print(f"report {rep['since']} .. {rep['until']}")
    table(
        "ledger actions per day",
        ["day", "actions"],
        [
            (d, ", ".join(f"{k}={v}" for k, v in sorted(c.items())))
            for d, c in rep["actions_per_day"].items()
        ],
    )
    table(
        "tickets opened per day",
        ["day", "kinds"],
        [
            (d, ", ".join(f"{k}={v}" for k, v in sorted(c.items())))
            for d, c in rep["tickets_opened_per_day"].items()
        ],
    )
    table("open tickets by age", ["age", "open"], rep["open_tickets_by_age"].items())
    table(
        "oldest stuck payments",
        ["ticket", "payment", "age"],
        [(s["ticket_id"], s["payment_id"], s["age"]) for s in rep["oldest_stuck_payments"]],
    )
    table(
        "runs",
        ["status", "runs"],
        sorted(rep["runs_by_status"].items()),
    )
    console.print(
        f"Stripe calls: {rep['stripe_calls']}, rate limited (429): {rep['stripe_rate_limited']}"
    )
    table(
        "recurring issues (this period vs the previous one)",
        ["kind", "now", "before", "jump"],
        [
            (r["kind"], r["this_period"], r["previous"], "JUMP" if r["jump"] else "")
            for r in rep["recurring_issues"]
        ],
    )
