"""`recon inbox`: the stored Stripe events, failing first with their error and attempts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from reconcile.views import INBOX_STATUSES, list_inbox
from worker.cli.context import app_state
from worker.cli.output import age, fail, print_json, say, table


def inbox(
    status: Annotated[
        str | None, typer.Option(help=f"One of {', '.join(INBOX_STATUSES)} (default: all).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Stored Stripe events: failed first (error, attempts), then pending, then the latest
    processed. `recon replay EVENT_ID --dry-run` re-runs one."""
    if status is not None and status not in INBOX_STATUSES:
        fail(f"--status must be one of {', '.join(INBOX_STATUSES)}; got {status!r}")
    with app_state.begin() as conn:
        rows, totals = list_inbox(conn, status=status, limit=limit)
    if as_json:
        print_json({"totals": totals, "events": rows})
        return
    now = datetime.now(UTC)
    table(
        f"{len(rows)} event(s); in the inbox: "
        + (", ".join(f"{k} {v:,}" for k, v in sorted(totals.items())) or "nothing"),
        ["event", "type", "payment", "status", "tries", "received", "error"],
        [
            (
                r["event_id"],
                r["type"],
                r["payment_id"],
                r["status"],
                r["attempts"],
                f"{age(now, r['received_at'])} ago",
                r["last_error"],
            )
            for r in rows
        ],
        ids={"event"},
    )
    if totals.get("failed"):
        say("re-run a failed event: recon replay EVENT_ID --dry-run, then without --dry-run")
