"""Input checks every ledger applies before it writes anything."""

from __future__ import annotations

from ledger.errors import InvalidAmount, InvalidInput
from ledger.model import NewTransaction
from ledger.money import normalize_currency
from ledger.protocol import LINK_KEY


def is_amount(value: object) -> bool:
    """A positive integer of minor units (bool is an int subclass, and not an amount)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def validate_new(new: NewTransaction) -> NewTransaction:
    """``new`` with its currency normalised, or InvalidInput saying what is wrong."""
    if not is_amount(new.amount):
        raise InvalidAmount(f"amount must be a positive integer of minor units: {new.amount!r}")
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
