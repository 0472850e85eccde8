"""What Stripe must say before a person may fix a ticket: the manual-fix checks.

Pure, like ``decide`` beside it: a person's view of a ticket may be hours old, so a fix is
checked against what Stripe says *now* (the use case re-reads it first) and what the ledger
holds under the lock, and refused when Stripe contradicts it.  A refusal is a value that
says why, in words a CX agent can act on; an allowed fix says how much money it moves.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from reconcile.decide import failed_attempt, missing_record
from reconcile.model import CreateSpec, Entry, EntryStatus, Payment, PaymentStatus, Policy

__all__ = ["FixAction", "FixCheck", "check_fix", "stripe_says"]


class FixAction(enum.StrEnum):
    COMMIT = "commit"
    VOID = "void"
    CREATE_RECORD = "create-record"
    NONE = "none"


@dataclass(frozen=True)
class FixCheck:
    """The verdict on one fix: ``refusal`` (nothing may change) or the money it moves."""

    refusal: str | None = None
    amount: int | None = None
    create: CreateSpec | None = None

    @property
    def allowed(self) -> bool:
        return self.refusal is None


def stripe_says(payment: Payment | None) -> str:
    if payment is None:
        return "Stripe has no such PaymentIntent"
    extra = f", last error: {payment.last_payment_error}" if payment.last_payment_error else ""
    status = payment.status.value if payment.status else "of unknown status"
    received = "unknown" if payment.amount_received is None else payment.amount_received
    return (
        f"Stripe says {payment.id} is {status} "
        f"(amount {_or_unknown(payment.amount)}, received {received} "
        f"{payment.currency or 'in an unknown currency'}{extra})"
    )


def _or_unknown(value: int | None) -> str:
    return "unknown" if value is None else str(value)


def _refuse(why: str, payment: Payment | None) -> FixCheck:
    return FixCheck(refusal=f"refused: {why}; {stripe_says(payment)}")


def _not_inflight(entry: Entry | None) -> str | None:
    if entry is None:
        return "no entry"
    return None if entry.status is EntryStatus.INFLIGHT else entry.status.value


def check_fix(
    action: FixAction,
    payment: Payment | None,
    entry: Entry | None,
    policy: Policy,
    *,
    ticket_balance: str | None = None,
) -> FixCheck:
    """May a person apply ``action`` to this payment and entry, and for how much?"""
    if action is FixAction.COMMIT:
        if payment is None or payment.status is not PaymentStatus.SUCCEEDED:
            return _refuse("commit needs a succeeded payment", payment)
        state = _not_inflight(entry)
        if state is not None or entry is None:
            return _refuse(f"nothing to commit, the ledger entry is {state}", payment)
        if payment.amount_received is None or payment.currency is None or payment.problems:
            return _refuse("Stripe's data lacks or garbles the received amount", payment)
        if entry.currency.upper() != payment.currency.upper():
            return _refuse(f"ledger currency {entry.currency} differs", payment)
        # Never credit more than Stripe received, whatever the hold says.
        amount = min(entry.remaining, payment.amount_received - entry.committed_amount)
        if amount <= 0:
            return _refuse("Stripe received nothing left to commit", payment)
        return FixCheck(amount=amount)
    if action is FixAction.VOID:
        if payment is not None and not failed_attempt(payment):
            return _refuse("void needs a failed, canceled or unknown payment", payment)
        state = _not_inflight(entry)
        if state is not None or entry is None:
            return _refuse(f"nothing to void, the ledger entry is {state}", payment)
        return FixCheck(amount=entry.remaining)
    if action is FixAction.CREATE_RECORD:
        if payment is None or payment.status is not PaymentStatus.SUCCEEDED:
            return _refuse("create-record needs a succeeded payment", payment)
        if payment.amount_received is None or payment.currency is None or payment.problems:
            return _refuse("Stripe's data lacks or garbles the received amount", payment)
        if entry is not None:
            return FixCheck(
                refusal=f"refused: the ledger already has {entry.reference} ({entry.status.value})"
            )
        destination = ticket_balance or payment.metadata.get(policy.destination_key)
        if not destination:
            return FixCheck(
                refusal=(
                    "refused: the destination balance is unknown (no ticket balance and no "
                    f"PaymentIntent metadata {policy.destination_key}); create the entry by hand"
                )
            )
        spec = missing_record(payment, destination, policy)
        return FixCheck(amount=spec.amount, create=spec)
    return FixCheck()
