"""`recon ledger ...`: look at and operate the built-in ledger."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

import typer

from ledger.checks import MAX_AMOUNT
from ledger.errors import InvalidInput, LedgerError
from ledger.model import NewTransaction, Transaction
from reconcile.checks import FixAction
from reconcile.stripe_gateway import StripeGatewayError
from reconcile.usecases import BadRequest, NotFound, fix_payment
from worker.cli.context import app_state
from worker.cli.output import (
    EXIT_ATTENTION,
    check_text,
    fail,
    kv,
    money,
    print_json,
    print_resolution,
    say,
    styled,
    table,
    when,
)

app = typer.Typer(
    help="Inspect and operate the ledger (RECON_LEDGER: the built-in SQL ledger, or Blnk)."
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show what would change; change nothing.")
]


# Stripe's own metadata limits (50 keys, keys of 40 characters, values of 500: "Metadata",
# https://docs.stripe.com/api/metadata): what an application could copy from a PaymentIntent.
META_KEYS, META_KEY_LEN, META_VALUE_LEN = 50, 40, 500


def _parse_meta(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    if len(pairs) > META_KEYS:
        fail(f"--meta: at most {META_KEYS} keys")
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--meta takes KEY=VALUE, got {pair[:60]!r}")
        check_text(key, "--meta key", META_KEY_LEN)
        check_text(value, f"--meta {key.strip()}", META_VALUE_LEN)
        out[key.strip()] = value
    return out


_DIGITS = re.compile(r"[0-9]{1,30}")


def _parse_amount(text: str) -> int:
    # ASCII digits only: int() would also take Arabic-Indic digits, "1_000" and " 5 ".
    if not _DIGITS.fullmatch(text.lstrip("-")):
        fail(
            "amount must be a whole number of minor units (e.g. 5000 for 50.00 USD), "
            f"got {text[:40]!r}"
        )
    value = int(text)
    if value <= 0:
        fail(f"amount must be positive, got {value}")
    if value >= MAX_AMOUNT:
        fail(f"amount must be less than {MAX_AMOUNT:,} minor units, got {text[:40]}")
    return value


def _show(txn: Transaction) -> None:
    def amt(n: int) -> str:
        return money(n, txn.currency)

    kv(
        f"{txn.reference}  [{txn.status.value}]",
        [
            ("id", txn.id),
            ("amount", amt(txn.amount)),
            ("committed", amt(txn.committed_amount)),
            ("voided", amt(txn.voided_amount)),
            ("remaining", amt(txn.remaining)),
            ("source", txn.source),
            ("destination", txn.destination),
            ("metadata", ", ".join(f"{k}={v}" for k, v in txn.metadata.items()) or "-"),
            ("expires at", when(txn.expires_at) or "-"),
            ("created at", when(txn.created_at)),
        ],
    )


# ignore_unknown_options lets "-5" reach the amount check ("must be positive") instead of
# click's confusing "No such option: -5".
@app.command(context_settings={"ignore_unknown_options": True})
def inflight(
    reference: Annotated[str, typer.Argument(help="Unique reference, e.g. the PaymentIntent id.")],
    amount: Annotated[str, typer.Argument(help="Amount in minor units (5000 = 50.00 USD).")],
    currency: Annotated[str, typer.Argument(help="ISO 4217 code, e.g. USD, EUR, JPY.")],
    source: Annotated[str, typer.Argument(help="Balance the money comes from, e.g. @stripe.")],
    destination: Annotated[
        str,
        typer.Argument(help="Balance credited, e.g. wallet:cus_123 (on Blnk: its bln_... id)."),
    ],
    meta: Annotated[
        list[str] | None, typer.Option("--meta", help="KEY=VALUE metadata (repeatable).")
    ] = None,
    expires_at: Annotated[
        str | None, typer.Option("--expires-at", help="ISO 8601 time the hold lapses.")
    ] = None,
    applied: Annotated[
        bool, typer.Option("--applied", help="Create it APPLIED directly instead of INFLIGHT.")
    ] = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Record a pending (INFLIGHT) transaction, as an application does at PaymentIntent time."""
    value = _parse_amount(amount)
    metadata = _parse_meta(meta or [])
    expiry = None
    if expires_at:
        try:
            expiry = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
        except ValueError:
            fail(f"--expires-at must be ISO 8601 (2026-11-23T12:00:00Z), got {expires_at!r}")
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=UTC)
        try:
            expiry = expiry.astimezone(UTC)
        except OverflowError:
            fail(f"--expires-at is out of range: {expires_at[:40]!r}")
    new = NewTransaction(
        reference=reference,
        source=source,
        destination=destination,
        amount=value,
        currency=currency,
        inflight=not applied,
        metadata=metadata,
        expires_at=expiry,
    )
    scope = app_state.rehearse() if dry_run else app_state.begin()
    try:
        with scope as conn:
            txn = app_state.ledger_for(conn).create(new)
    except InvalidInput as exc:
        fail(str(exc))
    except LedgerError as exc:
        fail(str(exc), EXIT_ATTENTION)
    if as_json:
        print_json({**txn.as_dict(), "dry_run": dry_run})
        return
    if dry_run:
        say(styled("dry run: nothing was written", "yellow"))
    _show(txn)


@app.command()
def show(
    reference: Annotated[
        str, typer.Argument(help="Transaction reference or linked PaymentIntent id.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Show one transaction, found by reference (or its stripe_payment_intent link)."""
    with app_state.ledger() as ledger:
        txn = ledger.find_linked(reference)
    if txn is None:
        fail(f"no ledger transaction with reference {reference!r}")
    if as_json:
        print_json(txn.as_dict())
    else:
        _show(txn)


@app.command("list")
def list_(
    status: Annotated[
        str | None, typer.Option(help="INFLIGHT, APPLIED or VOID.", case_sensitive=False)
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List transactions, oldest first."""
    from ledger.model import TxnStatus

    try:
        wanted = TxnStatus(status.upper()) if status else None
    except ValueError:
        fail(f"--status must be INFLIGHT, APPLIED or VOID, got {status!r}")
    with app_state.ledger() as ledger:
        txns = ledger.list_transactions(wanted, limit=limit)
    if as_json:
        print_json([t.as_dict() for t in txns])
        return
    table(
        f"{len(txns)} transaction(s)",
        [
            "reference",
            "status",
            "amount",
            "committed",
            "voided",
            "source",
            "destination",
            "created",
        ],
        [
            (
                t.reference,
                t.status.value,
                money(t.amount, t.currency),
                money(t.committed_amount, t.currency),
                money(t.voided_amount, t.currency),
                t.source,
                t.destination,
                when(t.created_at),
            )
            for t in txns
        ],
        ids={"reference"},
    )


def _fix(
    reference: str, action: FixAction, note: str, by: str | None, dry_run: bool, as_json: bool
) -> None:
    # The same checked, audited fix as `recon tickets resolve`: Stripe is read first and a
    # fix it contradicts is refused; the audit row names the operator and the note.
    from worker.cli.jobs_cmds import _operator, _services, stripe_failed, stripe_id

    # Read on Stripe before anything changes: it must be a PaymentIntent id.
    reference = stripe_id(reference, "pi_", "a PaymentIntent")
    svc, gw = _services()
    try:
        res = fix_payment(svc, reference, action, note, _operator(by), dry_run=dry_run, gateway=gw)
    except NotFound as exc:
        fail(str(exc))
    except BadRequest as exc:
        fail(str(exc))
    except StripeGatewayError as exc:
        stripe_failed(exc, "Stripe could not be read, nothing changed: ")
    except LedgerError as exc:
        fail(str(exc), EXIT_ATTENTION)
    print_resolution(res, as_json)


NoteOpt = Annotated[str, typer.Option(help="Why; stored in the audit row with your name.")]
ByOpt = Annotated[str | None, typer.Option("--by", help="Operator name (default: your login).")]


@app.command()
def commit(
    payment_id: Annotated[str, typer.Argument(help="PaymentIntent id (or the entry's link).")],
    note: NoteOpt,
    by: ByOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Commit a hold for what Stripe received, after re-reading Stripe (refused unless Stripe
    says succeeded). Audited like `recon tickets resolve`; open tickets of the payment close."""
    _fix(payment_id, FixAction.COMMIT, note, by, dry_run, as_json)


@app.command()
def void(
    payment_id: Annotated[str, typer.Argument(help="PaymentIntent id (or the entry's link).")],
    note: NoteOpt,
    by: ByOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Release the hold of a failed, canceled or unknown payment now, also within the grace
    period (refused while Stripe says it may still succeed). Audited; open tickets close."""
    _fix(payment_id, FixAction.VOID, note, by, dry_run, as_json)


@app.command()
def balances(as_json: JsonOpt = False) -> None:
    """Every balance: applied amount and what inflight transactions hold."""
    with app_state.ledger() as ledger:
        bals = ledger.balances()
    if as_json:
        print_json([b.as_dict() for b in bals])
        return
    table(
        f"{len(bals)} balance(s)",
        ["balance", "currency", "applied", "inflight in", "inflight out"],
        [
            (
                b.name,
                b.currency,
                money(b.balance, b.currency),
                money(b.inflight_credit, b.currency),
                money(b.inflight_debit, b.currency),
            )
            for b in bals
        ],
        ids={"balance"},
    )


@app.command()
def check(as_json: JsonOpt = False) -> None:
    """Check the ledger's invariants; exit 1 and list the violations if any fails."""
    with app_state.ledger() as ledger:
        violations = ledger.check_invariants()
    if as_json:
        print_json({"ok": not violations, "violations": [v.__dict__ for v in violations]})
    elif violations:
        table(
            f"{len(violations)} invariant violation(s)",
            ["rule", "detail"],
            [(v.rule, v.detail) for v in violations],
        )
    else:
        say(
            styled("ledger invariants hold", "green"),
            ": balances sum to zero per currency, "
            "no transaction over-committed or both committed and voided",
        )
    if violations:
        raise typer.Exit(EXIT_ATTENTION)
