"""`recon customer QUERY`: from a person to their wallet, payments, tickets and what to say."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from reconcile.stripe_gateway import StripeGatewayError
from reconcile.usecases import BadRequest, CustomerLookup, NotFound, lookup_customer
from reconcile.usecases.customers import CustomerView
from worker.cli.context import app_state
from worker.cli.output import (
    EXIT_ATTENTION,
    age,
    counts_table,
    fail,
    kv,
    print_json,
    say,
    short_age,
    styled,
    table,
)


def _ago(seconds: int | None) -> str:
    return "" if seconds is None else short_age(timedelta(seconds=seconds))


def _was(before: str | None, after: str | None) -> str:
    return f"{before} -> {after}" if before != after else f"{after} (unchanged)"


def _show(found: CustomerLookup) -> None:
    if found.customer is None:
        table(
            f"{len(found.candidates)} customers match {found.query!r} ({found.matched_by}): "
            "ask again with one of their emails or ids",
            ["customer", "name", "email", "Stripe customer", "balances"],
            [
                (c.customer_id, c.name, c.email, c.stripe_customer, ", ".join(c.balances))
                for c in found.candidates
            ],
            ids={"email", "Stripe customer"},
        )
        return
    v: CustomerView = found.customer
    now = datetime.now(UTC)
    say(
        styled(f"customer {v.customer_id}", "bold"),
        f": {v.name or '(no name)'} <{v.email or 'no email'}>"
        f"{'  Stripe ' + v.stripe_customer if v.stripe_customer else ''}"
        f"  (matched by {found.matched_by})",
    )
    if len(v.emails) > 1:
        say(f"also known as: {', '.join(e for e in v.emails if e != v.email)}")
    table(
        "balances",
        ["balance", "available", "on hold (pending top-ups)"],
        [(b.name, b.formatted, b.inflight_formatted) for b in v.balances],
        ids={"balance"},
    )
    if v.pending:
        for p in v.pending:
            kv(
                f"pending: {p.payment_id}",
                [
                    ("amount", p.formatted or "unknown"),
                    ("ledger", p.ledger_status or "no record"),
                    (
                        "Stripe (last known)",
                        f"{p.stripe_status} (read {age(now, p.stripe_seen_at)} ago)"
                        if p.stripe_status
                        else "not read yet",
                    ),
                    ("payment age", _ago(p.payment_age_seconds)),
                    ("ticket", f"#{p.ticket_id} {p.ticket_kind}" if p.ticket_id else "none"),
                    ("tell the customer", p.message or "(read Stripe first: --refresh)"),
                    ("next step", p.next_step),
                ],
            )
    else:
        say("nothing pending: every payment of this customer is settled")
    table(
        f"recent transactions (newest first, {len(v.transactions)})",
        ["payment", "kind", "ledger", "amount", "Stripe", "age"],
        [
            (
                t.payment_id,
                t.kind,
                t.status,
                t.formatted,
                t.stripe_status or "-",
                _ago(t.age_seconds),
            )
            for t in v.transactions
        ],
        ids={"payment"},
    )
    table(
        f"tickets (open first, {len(v.tickets)})",
        ["id", "kind", "severity", "status", "payment", "age"],
        [
            (t.id, t.kind, t.severity, t.status, t.payment_id, _ago(t.age_seconds))
            for t in v.tickets
        ],
        ids={"payment"},
    )


def customer(
    query: Annotated[
        str,
        typer.Argument(
            help="An email, a name (any case, the start of a word is enough), a Stripe "
            "customer id (cus_...), a ledger balance id or a PaymentIntent id (pi_...)."
        ),
    ],
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh", help="Re-read Stripe for the pending payments and reconcile them."
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="With --refresh: show what it would do.")
    ] = False,
    by: Annotated[
        str | None, typer.Option("--by", help="Operator name (default: your login).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """A customer's balances, recent transactions, tickets and what to tell them, without
    calling Stripe (unless --refresh)."""
    from worker.cli.jobs_cmds import _operator, _services, stripe_failed

    svc, gw = _services() if refresh else (app_state.services(), None)
    try:
        found = lookup_customer(
            svc, query, refresh=refresh, gateway=gw, actor=_operator(by), dry_run=dry_run
        )
    except NotFound as exc:
        fail(str(exc))
    except BadRequest as exc:
        fail(str(exc))
    except StripeGatewayError as exc:
        stripe_failed(exc, "Stripe could not be read, nothing changed: ")
    if as_json:
        print_json(found.as_dict())
    else:
        if found.refresh is not None:
            r = found.refresh
            dry = " (dry run: nothing changed)" if r.dry_run else ""
            counts_table(f"refresh: run {r.run_id} {r.status}{dry}", r.counts)
            table(
                "what the refresh changed",
                ["payment", "amount", "ledger", "Stripe", "ticket"],
                [
                    (
                        c.payment_id,
                        c.formatted or "unknown",
                        _was(c.ledger_before or "no record", c.ledger_after or "no record"),
                        _was(c.stripe_before or "not read", c.stripe_after or "not read"),
                        _was(c.ticket_status_before, c.ticket_status_after)
                        if c.ticket_id
                        else "none",
                    )
                    for c in found.changes()
                ],
                ids={"payment", "ledger", "Stripe", "ticket"},
            )
        _show(found)
        if found.refresh is not None:
            say(f"refreshed from Stripe; run id: {found.refresh.run_id}")
    if found.refresh is not None and found.refresh.status != "succeeded":
        raise typer.Exit(EXIT_ATTENTION)
