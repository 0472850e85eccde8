"""`recon report`: how the books and the pipeline did over a period (reconcile/views.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from reconcile.views import build_report
from worker.cli.context import app_state
from worker.cli.output import fail, print_json, say, table
from worker.durations import BadDuration, format_duration, parse_duration


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
    for stuck in rep["oldest_stuck_payments"]:
        stuck["age"] = format_duration(stuck["age"])
    if as_json:
        print_json(rep)
        return
    say(f"report {rep['since']} .. {rep['until']}")
    table(
        "ledger actions per day (from the audit trail)",
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
        f"runs (dry runs left out: {rep['dry_runs_left_out']})",
        ["status", "runs"],
        sorted(rep["runs_by_status"].items()),
    )
    say(
        f"Stripe calls: {rep['stripe_calls']:,}, rate limited (429): "
        f"{rep['stripe_rate_limited']:,} (dry runs left out)"
    )
    table(
        "recurring issues (this period vs the previous one)",
        ["kind", "now", "before", "jump"],
        [
            (r["kind"], r["this_period"], r["previous"], "JUMP" if r["jump"] else "")
            for r in rep["recurring_issues"]
        ],
    )
