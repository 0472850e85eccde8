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
    COMMIT = "commit"  # the hold, for what Stripe received
    VOID = "void"  # the hold of a failed, canceled or unknown payment (early: within grace)
    CREATE_RECORD = "create-record"  # an APPLIED record for a paid, unrecorded payment
    CREDIT = "credit"  # a new APPLIED transaction for a paid payment whose hold was voided
    REVERSE = "reverse"  # take back a credit whose payment failed or was refunded
    NONE = "none"  # close the ticket, no ledger change


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
    """Stripe's side in words; amounts are added by whoever formats money (not this module)."""
    if payment is None:
        return "Stripe has no such PaymentIntent"
    extra = [f"last error: {payment.last_payment_error}"] if payment.last_payment_error else []
    if payment.charge_failed and not payment.last_payment_error:
        extra.append(f"its charge failed: {payment.charge_failure_code or 'no code'}")
    if payment.disputed:
        extra.append("disputed")
    if payment.amount_refunded:
        extra.append("partly or fully refunded")
    if payment.problems:
        extra.append("its data is incomplete or malformed")
    status = payment.status.value if payment.status else "of unknown status"
    return f"Stripe says {payment.id} is {status}" + (f" ({', '.join(extra)})" if extra else "")


def _unproven(payment: Payment) -> str | None:
    """Why Stripe's data cannot prove how much arrived (absent is not zero), or None."""
    if payment.problems:
        return "Stripe's data for it is malformed"
    if payment.amount_received is None or payment.currency is None:
        return "Stripe's data lacks the received amount or currency"
    return None


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
        if (why := _unproven(payment)) is not None:
            return _refuse(why, payment)
        assert payment.amount_received is not None and payment.currency is not None
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
        if (why := _unproven(payment)) is not None:
            return _refuse(why, payment)
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
    if action is FixAction.CREDIT:
        return _check_credit(payment, entry)
    if action is FixAction.REVERSE:
        return _check_reverse(payment, entry)
    return FixCheck()


def _check_credit(payment: Payment | None, entry: Entry | None) -> FixCheck:
    """Paid but voided: credit what Stripe kept (received less refunds) and the wallet lacks."""
    if payment is None or payment.status is not PaymentStatus.SUCCEEDED:
        return _refuse("credit needs a succeeded payment", payment)
    if entry is None:
        return _refuse("there is no ledger entry to credit against; use create-record", payment)
    if entry.status is EntryStatus.INFLIGHT:
        return _refuse("the hold is still open; commit it instead", payment)
    if (why := _unproven(payment)) is not None:
        return _refuse(why, payment)
    assert payment.amount_received is not None and payment.currency is not None
    if entry.currency.upper() != payment.currency.upper():
        return _refuse(f"ledger currency {entry.currency} differs", payment)
    if payment.disputes is None or payment.amount_refunded is None:
        # Crediting money that may have left again needs the refunds and disputes read.
        return _refuse("Stripe's refunds and disputes for it could not be read", payment)
    if payment.disputed:
        return _refuse("the payment is disputed; credit it once the dispute is won", payment)
    kept = payment.amount_received - payment.amount_refunded
    amount = kept - (entry.committed_amount - entry.reversed_amount)
    if amount <= 0:
        return _refuse("nothing left to credit: the wallet already holds what Stripe kept", payment)
    if entry.reversed_amount:
        return _refuse("a reversal was posted for this payment; correct it by hand", payment)
    return FixCheck(amount=amount)


def _check_reverse(payment: Payment | None, entry: Entry | None) -> FixCheck:
    """Take back a credit: all of it for a failed payment, the refunded part for a refund."""
    if entry is None:
        return _refuse("there is no ledger entry to reverse", payment)
    credited = entry.committed_amount - entry.reversed_amount
    if credited <= 0:
        return _refuse("nothing credited is left to reverse", payment)
    if entry.reversed_amount:
        # One reversal per payment (reference PI:reversal); a second needs a person's hand.
        return _refuse("a reversal was already posted for this payment; adjust by hand", payment)
    if payment is None:
        # Absent is not evidence: a wrong API key makes every payment look missing.
        return _refuse("Stripe does not show the payment failed or was refunded", payment)
    if failed_attempt(payment):
        return FixCheck(amount=credited)
    if payment.status is PaymentStatus.SUCCEEDED and payment.amount_refunded:
        if payment.currency is None or entry.currency.upper() != payment.currency.upper():
            return _refuse(f"ledger currency {entry.currency} differs", payment)
        return FixCheck(amount=min(payment.amount_refunded, credited))
    return _refuse("Stripe shows no failure or refund to reverse", payment)
