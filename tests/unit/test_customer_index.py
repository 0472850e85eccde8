"""Who a payment belongs to, from what the service sees (reconcile/customers.py, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from reconcile.customers import name_tokens, normalize_email, sighting
from reconcile.model import Entry, EntryStatus, Payment, PaymentStatus

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def pay(**kw: object) -> Payment:
    fields: dict[str, object] = {
        "id": "pi_1",
        "status": PaymentStatus.PROCESSING,
        "amount": 200_000,
        "amount_received": 0,
        "currency": "USD",
        "created": NOW,
    }
    fields.update(kw)
    return Payment(**fields)  # type: ignore[arg-type]


def entry(**kw: object) -> Entry:
    fields: dict[str, object] = {
        "reference": "pi_1",
        "status": EntryStatus.INFLIGHT,
        "amount": 200_000,
        "currency": "USD",
        "created_at": NOW,
        "destination": "wallet:praise",
    }
    fields.update(kw)
    return Entry(**fields)  # type: ignore[arg-type]


def test_the_applications_metadata_wins_and_stripe_fills_the_rest() -> None:
    s = sighting(
        "pi_1",
        pay(customer="cus_stripe", customer_email="receipt@example.com", customer_name="P O"),
        entry(metadata={"customer_email": " Praise@Example.COM ", "customer_name": "Praise"}),
        stripe_read=True,
    )
    assert s is not None
    assert (s.email, s.name, s.stripe_customer, s.balance) == (
        "praise@example.com",
        "Praise",
        "cus_stripe",
        "wallet:praise",
    )
    assert s.primary == "cus_stripe"


def test_a_payment_without_a_ledger_entry_takes_its_balance_from_the_metadata() -> None:
    s = sighting("pi_1", pay(metadata={"ledger_destination": "wallet:x"}), None, stripe_read=True)
    assert s is not None and s.balance == "wallet:x" and s.primary == "balance:wallet:x"


def test_nothing_that_identifies_anyone_is_no_sighting() -> None:
    assert sighting("pi_1", pay(), None, stripe_read=True) is None


@pytest.mark.parametrize(
    ("value", "email"),
    [
        ("Ada@Example.com", "ada@example.com"),
        ("not an email", None),
        ("a@b@c", None),
        ("x" * 320 + "@example.com", None),
        (None, None),
        (42, None),
    ],
)
def test_emails_are_checked_and_lower_cased_before_the_database(value, email) -> None:
    assert normalize_email(value) == email


def test_control_characters_and_overlong_values_never_reach_the_index() -> None:
    s = sighting(
        "pi_1",
        pay(customer="cus_\x1b[31m", customer_name="Eve\x1b[2J  Mallory" + "x" * 300),
        entry(destination="wallet:\x07"),
        stripe_read=True,
    )
    assert s is None or (s.stripe_customer is None and s.balance is None)
    named = sighting("pi_1", pay(customer_name="Eve\x1b[2J  Mallory"), entry(), stripe_read=True)
    assert named is not None and named.name == "Eve [2J Mallory"


def test_a_name_is_found_by_each_word_and_by_the_whole_name() -> None:
    assert name_tokens("Praise  Okafor") == ["praise okafor", "praise", "okafor"]
