"""A person closes a ticket, optionally fixing the ledger: `recon tickets resolve ID`.

The operator's view may be hours old, so Stripe is read again first and any fix that Stripe
contradicts is refused: a commit needs a succeeded payment (and never more than it
received), a void needs a payment that failed, was canceled or does not exist, a new record
needs a succeeded payment with no ledger entry and a known destination.  The fix, its audit
row and the ticket's closing happen in one transaction so that none exists without the
others.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update

from ledger.model import NewTransaction, Transaction, TxnStatus
from ledger.protocol import LINK_KEY, rehearsal
from reconcile.engine import Services, to_entry
from reconcile.model import Payment, PaymentStatus, TicketKind
from reconcile.runs import record_audit
from reconcile.stripe_gateway import StripeGateway
from reconcile.tables import tickets
from reconcile.tickets import OPEN, RESOLVED, entry_state, payment_state


class ResolveAction(enum.StrEnum):
    COMMIT = "commit"
    VOID = "void"
    CREATE_RECORD = "create-record"
    NONE = "none"


class TicketNotFound(LookupError):
    pass


class BadResolution(ValueError):
    """The request itself is wrong (not Stripe's state): bad usage."""


@dataclass(frozen=True)
class Resolution:
    ticket_id: int
    action: str
    done: bool  # False: refused, nothing changed
    message: str
    dry_run: bool
    stripe: dict[str, Any] | None = None
    ledger_before: dict[str, Any] | None = None
    ledger_after: dict[str, Any] | None = None
    amount: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ticket_id": self.ticket_id,
            "action": self.action,
            "done": self.done,
            "message": self.message,
            "dry_run": self.dry_run,
            "amount": self.amount,
            "stripe": self.stripe,
            "ledger_before": self.ledger_before,
            "ledger_after": self.ledger_after,
        }


def _says(payment: Payment | None) -> str:
    if payment is None:
        return "Stripe has no such PaymentIntent"
    extra = f", last error: {payment.last_payment_error}" if payment.last_payment_error else ""
    return (
        f"Stripe says {payment.id} is {payment.status.value} "
        f"(amount {payment.amount}, received {payment.amount_received} "
        f"{payment.currency}{extra})"
    )


def _failed(payment: Payment | None) -> bool:
    if payment is None or payment.status is PaymentStatus.CANCELED:
        return True
    return (
        payment.status is PaymentStatus.REQUIRES_PAYMENT_METHOD
        and payment.last_payment_error is not None
    )


def _check(
    action: ResolveAction,
    ticket: dict[str, Any],
    payment: Payment | None,
    txn: Transaction | None,
) -> tuple[str | None, int | None]:
    """(why it is refused or None, the amount the fix moves)."""
    says = _says(payment)
    if action is ResolveAction.COMMIT:
        if payment is None or payment.status is not PaymentStatus.SUCCEEDED:
            return f"refused: commit needs a succeeded payment; {says}", None
        if txn is None or txn.status is not TxnStatus.INFLIGHT:
            state = txn.status.value if txn else "no entry"
            return f"refused: nothing to commit, the ledger entry is {state}; {says}", None
        if txn.currency.upper() != payment.currency.upper():
            return f"refused: ledger currency {txn.currency} differs; {says}", None
        # Never credit more than Stripe received, whatever the hold says.
        amount = min(txn.remaining, payment.amount_received - txn.committed_amount)
        if amount <= 0:
            return f"refused: Stripe received nothing left to commit; {says}", None
        return None, amount
    if action is ResolveAction.VOID:
        if not _failed(payment):
            return f"refused: void needs a failed, canceled or unknown payment; {says}", None
        if txn is None or txn.status is not TxnStatus.INFLIGHT:
            state = txn.status.value if txn else "no entry"
            return f"refused: nothing to void, the ledger entry is {state}; {says}", None
        return None, txn.remaining
    if action is ResolveAction.CREATE_RECORD:
        if payment is None or payment.status is not PaymentStatus.SUCCEEDED:
            return f"refused: create-record needs a succeeded payment; {says}", None
        if txn is not None:
            return f"refused: the ledger already has {txn.reference} ({txn.status.value})", None
        if not (ticket.get("balance") or payment.metadata.get("ledger_destination")):
            return (
                "refused: the destination balance is unknown (no ticket balance and no "
                "PaymentIntent metadata ledger_destination); create the entry by hand",
                None,
            )
        return None, payment.amount_received
    return None, None


def resolve_ticket(
    svc: Services,
    ticket_id: int,
    action: ResolveAction,
    note: str,
    actor: str,
    *,
    dry_run: bool,
    gateway: StripeGateway,
) -> Resolution:
    """Re-check on Stripe, apply the fix if Stripe agrees, close the ticket; or refuse."""
    if not note.strip():
        raise BadResolution("--note must say why (it is the ticket's resolution)")
    with svc.engine.connect() as conn:
        row = conn.execute(select(tickets).where(tickets.c.id == ticket_id)).mappings().first()
    if row is None:
        raise TicketNotFound(f"no ticket {ticket_id}")
    ticket = dict(row)
    if ticket["status"] != OPEN:
        return Resolution(
            ticket_id,
            action.value,
            False,
            f"ticket {ticket_id} is already {ticket['status']} "
            f"(by {ticket['resolved_by']}: {ticket['resolution']})",
            dry_run,
        )
    pid = str(ticket["payment_id"])
    is_incident = ticket["kind"] == TicketKind.INCIDENT.value
    if is_incident and action is not ResolveAction.NONE:
        raise BadResolution("an incident ticket has no payment: only --action none applies")
    # "none" changes no money, so it needs no Stripe read; anything else must see today's
    # state, not what the ticket recorded.
    payment = None if action is ResolveAction.NONE else gateway.retrieve(pid)
    now = svc.clock()
    with svc.engine.begin() as conn:
        scope = conn.begin_nested()
        try:
            locked = conn.execute(
                select(tickets.c.status).where(tickets.c.id == ticket_id).with_for_update()
            ).scalar_one()
            if locked != OPEN:
                scope.rollback()
                return Resolution(
                    ticket_id,
                    action.value,
                    False,
                    f"ticket {ticket_id} was closed meanwhile",
                    dry_run,
                )
            with rehearsal(conn, dry_run):
                ledger = svc.ledger_for(conn)
            txn = None if is_incident else ledger.find_linked(pid, lock=True)
            before = entry_state(to_entry(txn)) if not is_incident else None
            stripe_state = payment_state(payment) if action is not ResolveAction.NONE else None
            refusal, amount = _check(action, ticket, payment, txn)
            if refusal is not None:
                scope.rollback()
                return Resolution(
                    ticket_id, action.value, False, refusal, dry_run, stripe_state, before
                )
            after = txn
            reference = txn.reference if txn else None
            if action is ResolveAction.COMMIT and txn is not None:
                after = ledger.commit(
                    txn.reference, amount, idempotency_key=f"recon:manual-commit:{ticket_id}"
                )
            elif action is ResolveAction.VOID and txn is not None:
                after = ledger.void(txn.reference, idempotency_key=f"recon:manual-void:{ticket_id}")
            elif action is ResolveAction.CREATE_RECORD and payment is not None:
                meta = payment.metadata
                after = ledger.create(
                    NewTransaction(
                        reference=pid,
                        source=meta.get("ledger_source") or "@stripe",
                        destination=ticket.get("balance") or meta["ledger_destination"],
                        amount=payment.amount_received,
                        currency=payment.currency,
                        inflight=False,
                        metadata={LINK_KEY: pid, "created_by": f"recon:manual:{actor}"},
                    )
                )
                reference = after.reference
            record_audit(
                conn,
                run_id=None,
                payment_id=None if is_incident else pid,
                reference=reference,
                action=action.value if action is not ResolveAction.NONE else "ticket_resolved",
                reason=f"manual:{action.value}",
                actor=actor,
                now=now,
                amount=amount,
                currency=(after.currency if after else ticket.get("currency")),
                evidence={"stripe": stripe_state, "ledger_before": before, "note": note},
                ticket_id=ticket_id,
            )
            conn.execute(
                update(tickets)
                .where(tickets.c.id == ticket_id)
                .values(status=RESOLVED, resolved_at=now, resolved_by=actor, resolution=note)
            )
            ledger_after = entry_state(to_entry(after)) if not is_incident else None
        except BaseException:
            scope.rollback()
            raise
        if dry_run:
            scope.rollback()
        else:
            scope.commit()
    what = {
        ResolveAction.COMMIT: f"committed {amount}",
        ResolveAction.VOID: f"voided {amount}",
        ResolveAction.CREATE_RECORD: f"created an APPLIED record of {amount}",
        ResolveAction.NONE: "no ledger change",
    }[action]
    prefix = "dry run, nothing written: would have " if dry_run else ""
    return Resolution(
        ticket_id,
        action.value,
        True,
        f"{prefix}{what}; ticket {ticket_id} resolved by {actor}",
        dry_run,
        stripe_state,
        before,
        ledger_after,
        amount,
    )
