"""Input checks every ledger applies before it writes anything."""

from __future__ import annotations

from typing import Final

from ledger.errors import (
    AlreadyCommitted,
    AlreadyVoided,
    CommitAmountExceeded,
    InvalidAmount,
    InvalidInput,
)
from ledger.model import NewTransaction, Transaction, TxnStatus
from ledger.money import normalize_currency
from ledger.protocol import LINK_KEY

# Amounts are stored as 64-bit integers; no real payment comes near this bound (Stripe's
# own amounts are at most 8 to 12 digits), so anything at or above it is an input error,
# refused before the database, which would refuse it as an "out of range" failure.  The
# same bound as reconcile/stripe_objects.py uses for what Stripe sends.
MAX_AMOUNT: Final = 10**12


def is_amount(value: object) -> bool:
    """A positive integer of minor units below MAX_AMOUNT (bool is an int subclass, and not
    an amount)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < MAX_AMOUNT


def validate_new(new: NewTransaction) -> NewTransaction:
    """``new`` with its currency normalised, or InvalidInput saying what is wrong."""
    if not is_amount(new.amount):
        raise InvalidAmount(
            f"amount must be a positive integer of minor units below {MAX_AMOUNT:,}: {new.amount!r}"
        )
    for label, value in (
        ("reference", new.reference),
        ("source", new.source),
        ("destination", new.destination),
    ):
        if not isinstance(value, str) or not value.strip():
            raise InvalidInput(f"{label} must be a non-empty string")
        if len(value) > 200:
            raise InvalidInput(f"{label} is longer than 200 characters")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise InvalidInput(f"{label} contains control characters")
    if new.source == new.destination:
        raise InvalidInput("source and destination must differ")
    for key in new.metadata:
        if not isinstance(key, str) or not key:
            raise InvalidInput(f"metadata keys must be non-empty strings: {key!r}")
    link = new.metadata.get(LINK_KEY)
    if link is not None and not isinstance(link, str):
        raise InvalidInput(f"metadata {LINK_KEY} must be a string")
    return NewTransaction(
        reference=new.reference,
        source=new.source,
        destination=new.destination,
        amount=new.amount,
        currency=normalize_currency(new.currency),
        inflight=new.inflight,
        metadata=dict(new.metadata),
        expires_at=new.expires_at,
    )


def to_commit(txn: Transaction, amount: int | None) -> int | None:
    """What a commit of ``amount`` (None: the rest) takes from ``txn``; None when a full
    commit already happened (a retry: nothing to do).  The typed refusals every ledger
    gives the same way."""
    ref = txn.reference
    if txn.status is TxnStatus.VOID:
        raise AlreadyVoided(f"{ref} was voided; it cannot be committed")
    if txn.remaining == 0:
        if txn.voided_amount:
            raise AlreadyVoided(
                f"{ref}: the uncommitted remainder ({txn.voided_amount}) was voided"
            )
        if amount is None:
            return None
        raise AlreadyCommitted(f"{ref} is already fully committed")
    take = txn.remaining if amount is None else amount
    if take > txn.remaining:
        raise CommitAmountExceeded(
            f"{ref}: cannot commit {take}, only {txn.remaining} of {txn.amount} left"
        )
    return take


def to_void(txn: Transaction) -> int | None:
    """What a void releases from ``txn``; None when nothing is left to release because it
    was voided already (voiding twice releases nothing twice)."""
    if txn.status is TxnStatus.VOID:
        return None
    if txn.remaining == 0:
        if txn.voided_amount:
            return None
        raise AlreadyCommitted(f"{txn.reference} is fully committed; nothing left to void")
    return txn.remaining
