"""`recon tickets [show|resolve]`: what CX agents work from."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from reconcile.checks import FixAction
from reconcile.messages import KIND_GUIDE
from reconcile.model import Severity, TicketKind
from reconcile.stripe_gateway import StripeGatewayError
from reconcile.usecases import BadRequest, NotFound, resolve_ticket
from reconcile.views import list_tickets as view_tickets
from reconcile.views import ticket_with_history
from worker.cli.context import app_state
from worker.cli.jobs_cmds import (
    ByOpt,
    DryRunOpt,
    JsonOpt,
    _operator,
    _services,
    state_pairs,
    stripe_failed,
)
from worker.cli.output import (
    MAX_ID,
    age,
    fail,
    kv,
    money,
    print_json,
    print_resolution,
    table,
    when,
)

app = typer.Typer(help="Discrepancy tickets.", invoke_without_command=True)

TicketIdArg = Annotated[int, typer.Argument(min=1, max=MAX_ID, help="Ticket id.")]

_LIST_KEYS = (
    "id", "kind", "severity", "status", "payment_id", "reference", "occurrences", "opened_at",
    "last_seen_at", "customer", "customer_email", "balance", "amount", "currency", "summary",
    "customer_message", "resolved_at", "resolved_by",
)  # fmt: skip
KINDS = tuple(k.value for k in TicketKind)
ACTIONS = tuple(a.value for a in FixAction)


def _payment_created(t: dict[str, Any]) -> datetime | None:
    """When the payment was made: Stripe's time, else the ledger entry's."""
    for state, key in ((t.get("stripe_state"), "created"), (t.get("ledger_state"), "created_at")):
        if isinstance(state, dict) and isinstance(state.get(key), str):
            try:
                return datetime.fromisoformat(state[key])
            except ValueError:
                continue
    return None


@app.callback()
def list_tickets(
    ctx: typer.Context,
    status: Annotated[str, typer.Option(help="open, resolved or all.")] = "open",
    kind: Annotated[str | None, typer.Option(help=f"One of {', '.join(KINDS)}.")] = None,
    severity: Annotated[str | None, typer.Option(help="low, medium, high or critical.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List tickets, most severe and oldest first, with the ticket's and the payment's age."""
    if ctx.invoked_subcommand is not None:
        return
    if status not in ("open", "resolved", "all"):
        fail(f"--status must be open, resolved or all; got {status!r}")
    if kind is not None and kind.replace("-", "_") not in KINDS:
        fail(f"--kind must be one of {', '.join(KINDS)}; got {kind!r}")
    wanted: Severity | None = None
    if severity:
        try:
            wanted = Severity[severity.upper()]
        except KeyError:
            fail(f"--severity must be low, medium, high or critical; got {severity!r}")
    with app_state.begin() as conn:
        rows = view_tickets(
            conn,
            status=None if status == "all" else status,
            kind=kind.replace("-", "_") if kind else None,
            severity=wanted,
            limit=limit,
        )
    now = datetime.now(UTC)
    if as_json:
        out = []
        for r in rows:
            paid = _payment_created(r)
            out.append(
                {
                    **{k: r.get(k) for k in _LIST_KEYS},
                    "amount_formatted": money(r["amount"], r["currency"]) or None,
                    "age_seconds": int((now - r["opened_at"]).total_seconds()),
                    "payment_created": paid,
                    "payment_age_seconds": int((now - paid).total_seconds()) if paid else None,
                }
            )
        print_json(out)
        return
    table(
        f"{len(rows)} {status if status != 'all' else ''} ticket(s); age: since opened, "
        "paid: since the payment was made",
        ["id", "severity", "kind", "payment", "customer", "amount", "seen", "age", "paid"],
        [
            (
                r["id"],
                r["severity"],
                r["kind"],
                r["payment_id"],
                r["customer_email"] or r["customer"],
                money(r["amount"], r["currency"]),
                r["occurrences"],
                age(now, r["opened_at"]),
                age(now, _payment_created(r)),
            )
            for r in rows
        ],
        ids={"payment"},
    )


@app.command()
def show(
    ticket_id: TicketIdArg,
    as_json: JsonOpt = False,
) -> None:
    """Everything about one ticket: summary, customer, both states, fix, message, history."""
    with app_state.begin() as conn:
        found = ticket_with_history(conn, ticket_id)
    if found is None:
        fail(f"no ticket {ticket_id}")
    t, history = found
    now = datetime.now(UTC)
    paid = _payment_created(t)
    if as_json:
        print_json(
            {
                **t,
                "amount_formatted": money(t["amount"], t["currency"]) or None,
                "age_seconds": int((now - t["opened_at"]).total_seconds()),
                "payment_age_seconds": int((now - paid).total_seconds()) if paid else None,
                "actions": list(KIND_GUIDE[TicketKind(t["kind"])].actions),
                "history": history,
            }
        )
        return
    guide = KIND_GUIDE[TicketKind(t["kind"])]
    kv(
        f"ticket {t['id']}  [{t['status']}]  {t['kind']} ({t['severity']})",
        [
            ("summary", t["summary"]),
            ("payment", t["payment_id"]),
            ("reference", t["reference"]),
            ("customer", t["customer"]),
            ("email", t["customer_email"]),
            ("balance", t["balance"]),
            ("amount", money(t["amount"], t["currency"])),
            ("Stripe says", _state_line(t["stripe_state"])),
            ("ledger says", _state_line(t["ledger_state"])),
            ("opened", f"{when(t['opened_at'])} ({age(now, t['opened_at'])} ago)"),
            ("payment made", f"{when(paid)} ({age(now, paid)} ago)" if paid else None),
            ("seen", f"{t['occurrences']} time(s), last {when(t['last_seen_at'])}"),
            ("dashboard", t["dashboard_url"]),
            ("suggested fix", t["suggested_fix"]),
            ("fix with", f"recon tickets resolve {t['id']} --action "
             f"{'|'.join(guide.actions)} --note '...'" if t["status"] == "open" else None),
            ("customer message", t["customer_message"]),
            ("resolved", f"{when(t['resolved_at'])} by {t['resolved_by']}: {t['resolution']}"
             if t["status"] == "resolved" else None),
        ],
    )  # fmt: skip
    table(
        "history",
        ["at", "action", "amount", "reason", "actor", "run"],
        [
            (
                when(a["created_at"]),
                a["action"],
                money(a["amount"], a["currency"]),
                a["reason"],
                a["actor"],
                a["run_id"],
            )
            for a in history
        ],
    )


def _state_line(state: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}: {v}" for k, v in state_pairs(state))


@app.command()
def resolve(
    ticket_id: TicketIdArg,
    action: Annotated[str, typer.Option(help=f"One of {', '.join(ACTIONS)}.")],
    note: Annotated[str, typer.Option(help="Why; stored as the ticket's resolution.")],
    by: ByOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fix the ledger as Stripe allows (re-checked now), audited, and close the ticket."""
    try:
        what = FixAction(action)
    except ValueError:
        fail(f"--action must be one of {', '.join(ACTIONS)}; got {action!r}")
    svc, gw = _services() if what is not FixAction.NONE else (app_state.services(), None)
    try:
        res = resolve_ticket(svc, ticket_id, what, note, _operator(by), dry_run=dry_run, gateway=gw)
    except NotFound as exc:
        fail(str(exc))
    except BadRequest as exc:
        fail(str(exc))
    except StripeGatewayError as exc:
        stripe_failed(exc, "Stripe could not be read, nothing changed: ")
    print_resolution(res, as_json)
