"""`recon tickets [show|resolve]`: what CX agents work from."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from ledger.money import Money
from reconcile.checks import FixAction
from reconcile.model import Severity
from reconcile.stripe_gateway import StripeGatewayError
from reconcile.usecases import BadRequest, NotFound, resolve_ticket
from reconcile.views import list_tickets as view_tickets
from reconcile.views import ticket_with_history
from worker.cli.context import app_state
from worker.cli.jobs_cmds import ByOpt, DryRunOpt, JsonOpt, _operator, _services
from worker.cli.output import EXIT_ATTENTION, console, err_console, fail, kv, print_json, table
from worker.durations import format_duration

app = typer.Typer(help="Discrepancy tickets.", invoke_without_command=True)

_LIST_KEYS = (
    "id", "kind", "severity", "status", "payment_id", "reference", "occurrences", "opened_at",
    "last_seen_at", "customer", "amount", "currency", "summary",
)  # fmt: skip


def _iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def _money(amount: int | None, currency: str | None) -> str:
    if amount is None or not currency:
        return ""
    return Money(amount, currency).format()


@app.callback()
def list_tickets(
    ctx: typer.Context,
    status: Annotated[str, typer.Option(help="open, resolved or all.")] = "open",
    kind: Annotated[str | None, typer.Option(help="e.g. missing_record, stuck_payment.")] = None,
    severity: Annotated[str | None, typer.Option(help="low, medium, high or critical.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List tickets, most severe and oldest first."""
    if ctx.invoked_subcommand is not None:
        return
    if status not in ("open", "resolved", "all"):
        fail(f"--status must be open, resolved or all, got {status!r}")
    wanted: Severity | None = None
    if severity:
        try:
            wanted = Severity[severity.upper()]
        except KeyError:
            fail(f"--severity must be low, medium, high or critical, got {severity!r}")
    with app_state.begin() as conn:
        rows = view_tickets(
            conn,
            status=None if status == "all" else status,
            kind=kind,
            severity=wanted,
            limit=limit,
        )
    if as_json:
        print_json([{k: r.get(k) for k in _LIST_KEYS} for r in rows])
        return
    now = datetime.now(UTC)
    table(
        f"{len(rows)} {status if status != 'all' else ''} ticket(s)",
        ["id", "severity", "kind", "payment", "customer", "amount", "seen", "age"],
        [
            (
                r["id"],
                r["severity"],
                r["kind"],
                r["payment_id"],
                r["customer"],
                _money(r["amount"], r["currency"]),
                r["occurrences"],
                format_duration(now - r["opened_at"]),
            )
            for r in rows
        ],
    )


def _state_lines(state: dict[str, Any] | None) -> str:
    if not state or not state.get("found"):
        return "not found"
    return ", ".join(f"{k}={v}" for k, v in state.items() if k != "found" and v not in (None, ""))


@app.command()
def show(
    ticket_id: Annotated[int, typer.Argument(help="Ticket id.")],
    as_json: JsonOpt = False,
) -> None:
    """Everything about one ticket: summary, customer, both states, fix, message, history."""
    with app_state.begin() as conn:
        found = ticket_with_history(conn, ticket_id)
    if found is None:
        fail(f"no ticket {ticket_id}", EXIT_ATTENTION)
    t, history = found
    age = datetime.now(UTC) - t["opened_at"]
    if as_json:
        print_json(
            {
                **t,
                "amount_formatted": _money(t["amount"], t["currency"]) or None,
                "age_seconds": int(age.total_seconds()),
                "history": history,
            }
        )
        return
    kv(
        f"ticket {t['id']}  [{t['status']}]  {t['kind']} ({t['severity']})",
        [
            ("summary", t["summary"]),
            ("payment", t["payment_id"]),
            ("reference", t["reference"]),
            ("customer", t["customer"]),
            ("email", t["customer_email"]),
            ("balance", t["balance"]),
            ("amount", _money(t["amount"], t["currency"])),
            ("Stripe says", _state_lines(t["stripe_state"])),
            ("ledger says", _state_lines(t["ledger_state"])),
            ("opened", f"{_iso(t['opened_at'])} ({format_duration(age)} ago)"),
            ("seen", f"{t['occurrences']} time(s), last {_iso(t['last_seen_at'])}"),
            ("dashboard", t["dashboard_url"]),
            ("suggested fix", t["suggested_fix"]),
            ("customer message", t["customer_message"]),
            ("resolved", f"{t['resolved_at']} by {t['resolved_by']}: {t['resolution']}"
             if t["status"] == "resolved" else None),
        ],
    )  # fmt: skip
    table(
        "history",
        ["at", "action", "amount", "reason", "actor", "run"],
        [
            (
                a["created_at"].isoformat(timespec="seconds"),
                a["action"],
                _money(a["amount"], a["currency"]),
                a["reason"],
                a["actor"],
                a["run_id"],
            )
            for a in history
        ],
    )


@app.command()
def resolve(
    ticket_id: Annotated[int, typer.Argument(help="Ticket id.")],
    action: Annotated[str, typer.Option(help="commit, void, create-record or none.")],
    note: Annotated[str, typer.Option(help="Why; stored as the ticket's resolution.")],
    by: ByOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fix the ledger as Stripe allows (re-checked now) and close the ticket."""
    try:
        what = FixAction(action)
    except ValueError:
        fail(f"--action must be commit, void, create-record or none, got {action!r}")
    svc, gw = _services()
    try:
        res = resolve_ticket(svc, ticket_id, what, note, _operator(by), dry_run=dry_run, gateway=gw)
    except NotFound as exc:
        fail(str(exc), EXIT_ATTENTION)
    except BadRequest as exc:
        fail(str(exc))
    except StripeGatewayError as exc:
        fail(f"Stripe could not be read, nothing changed: {exc}", EXIT_ATTENTION)
    if as_json:
        print_json(res.as_dict())
    elif res.done:
        console.print(res.message)
    if not res.done:
        if not as_json:
            err_console.print(f"[bold red]{res.message}[/]", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ATTENTION)
