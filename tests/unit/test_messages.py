"""The customer message table: one line per ticket kind and state, kind by kind, and the
README's CX guide generated from it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from reconcile.messages import (
    KIND_GUIDE,
    MESSAGES,
    PENDING,
    CustomerState,
    customer_message,
    cx_guide_markdown,
    open_state,
    resolved_state,
)
from reconcile.model import Dispute, DisputeStatus, Payment, PaymentStatus, TicketKind
from tests.cx_guide import README, readme_section

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
S = CustomerState


def pay(status: PaymentStatus, **kw: object) -> Payment:
    fields: dict[str, object] = {
        "id": "pi_1",
        "status": status,
        "amount": 200_000,
        "amount_received": 200_000 if status is PaymentStatus.SUCCEEDED else 0,
        "currency": "USD",
        "created": NOW,
        # An expanded charge: refunds and disputes known (none).
        "amount_refunded": 0,
        "disputes": (),
    }
    if kw.pop("disputed", False):
        fields["disputes"] = (Dispute("du_1", DisputeStatus.NEEDS_RESPONSE, 1000, "USD"),)
    fields.update(kw)
    return Payment(**fields)  # type: ignore[arg-type]


def msg(topic: str | TicketKind, state: CustomerState, amount: int | None = 200_000) -> str:
    text = customer_message(str(topic), state, amount, "USD")
    assert text is not None
    return text


# -- where the payment stands ------------------------------------------------------------


@pytest.mark.parametrize(
    ("payment", "state"),
    [
        (None, S.NOT_ON_STRIPE),
        (pay(PaymentStatus.REQUIRES_ACTION), S.WAITING_ON_CUSTOMER),
        (pay(PaymentStatus.REQUIRES_CONFIRMATION), S.WAITING_ON_CUSTOMER),
        (pay(PaymentStatus.REQUIRES_PAYMENT_METHOD), S.WAITING_ON_CUSTOMER),
        (pay(PaymentStatus.PROCESSING), S.WAITING_ON_BANK),
        (pay(PaymentStatus.REQUIRES_CAPTURE), S.WAITING_ON_BANK),
        (pay(PaymentStatus.SUCCEEDED), S.PAID),
        (pay(PaymentStatus.CANCELED), S.FAILED),
        (pay(PaymentStatus.REQUIRES_PAYMENT_METHOD, last_payment_error="card_declined"), S.FAILED),
        (pay(PaymentStatus.SUCCEEDED, amount_refunded=500), S.REFUNDED),
        (pay(PaymentStatus.SUCCEEDED, disputed=True), S.DISPUTED),
    ],
)
def test_the_customer_state_follows_what_stripe_says(payment, state) -> None:
    assert open_state(payment) is state


@pytest.mark.parametrize(
    ("action", "state"),
    [
        ("credit", S.CREDITED),
        ("create-record", S.CREDITED),
        ("commit", S.CREDITED),
        ("create", S.CREDITED),
        ("reverse", S.REVERSED),
        ("void", S.VOIDED),
        ("none", S.CLOSED),
    ],
)
def test_a_resolution_names_what_was_done(action, state) -> None:
    assert resolved_state(action) is state


def test_a_pass_that_found_the_books_agreeing_reports_what_stripe_says() -> None:
    assert resolved_state("matched", pay(PaymentStatus.SUCCEEDED)) is S.CREDITED
    assert resolved_state("matched", pay(PaymentStatus.CANCELED)) is S.VOIDED
    assert resolved_state("matched", None) is S.CLOSED


# -- kind by kind ----------------------------------------------------------------------------


def test_a_payment_waiting_on_3d_secure_asks_the_customer_to_act_not_to_wait() -> None:
    text = msg(TicketKind.STUCK_PAYMENT, S.WAITING_ON_CUSTOMER)
    assert "approve" in text and "will not complete on its own" in text
    assert "2,000.00 USD" in text
    assert "no need to pay again" not in text
    pending = msg(PENDING, S.WAITING_ON_CUSTOMER)
    assert "confirm it with your bank" in pending


def test_a_payment_waiting_on_the_bank_asks_the_customer_to_wait() -> None:
    text = msg(TicketKind.STUCK_PAYMENT, S.WAITING_ON_BANK)
    assert "confirmed by your bank" in text and "no need to pay again" in text


def test_a_stuck_payment_that_cleared_tells_the_customer_the_wallet_was_credited() -> None:
    assert "credited with your top-up of 2,000.00 USD" in msg(TicketKind.STUCK_PAYMENT, S.CREDITED)


def test_a_missing_record_promises_a_credit_then_confirms_it() -> None:
    assert "We are crediting it now" in msg(TicketKind.MISSING_RECORD, S.PAID)
    assert "has been credited" in msg(TicketKind.MISSING_RECORD, S.CREDITED)


def test_a_partial_capture_says_the_received_amount_was_credited() -> None:
    text = msg(TicketKind.AMOUNT_MISMATCH, S.PAID)
    assert "less than your top-up of 2,000.00 USD" in text
    assert "credited with the amount we received" in text


def test_an_unknown_payment_says_nothing_was_taken_and_then_that_it_was_cancelled() -> None:
    assert "nothing was taken" in msg(TicketKind.UNKNOWN_PAYMENT, S.NOT_ON_STRIPE)
    assert "cancelled" in msg(TicketKind.UNKNOWN_PAYMENT, S.VOIDED)


def test_credited_but_failed_warns_before_and_explains_after_the_reversal() -> None:
    assert "please do not spend it" in msg(TicketKind.CREDITED_BUT_FAILED, S.FAILED)
    assert "taken back the credit" in msg(TicketKind.CREDITED_BUT_FAILED, S.REVERSED)


def test_paid_but_voided_says_what_the_fix_will_do_and_then_that_it_did() -> None:
    assert "We are crediting it now" in msg(TicketKind.PAID_BUT_VOIDED, S.PAID)
    assert "has been credited with your top-up of 2,000.00 USD" in msg(
        TicketKind.PAID_BUT_VOIDED, S.CREDITED
    )


def test_a_refund_names_the_refunded_amount_and_what_happens_to_the_wallet() -> None:
    text = customer_message(TicketKind.REFUND_AFTER_CREDIT.value, S.REFUNDED, 50_000, "USD")
    assert text is not None and text.startswith("500.00 USD of your top-up was refunded")
    assert "will be taken back" in text
    assert "has been taken back" in msg(TicketKind.REFUND_AFTER_CREDIT, S.REVERSED)
    assert "stays as it is" in msg(TicketKind.REFUND_AFTER_CREDIT, S.CLOSED)


def test_a_dispute_tells_the_customer_the_amount_may_be_held() -> None:
    assert "may be held" in msg(TicketKind.DISPUTE_OPENED, S.DISPUTED)


def test_an_incident_has_no_customer_to_tell() -> None:
    assert customer_message(TicketKind.INCIDENT.value, S.CLOSED, 1, "USD") is None


def test_a_kind_without_a_line_for_the_state_reads_like_any_payment_in_that_state() -> None:
    assert msg(TicketKind.MISSING_RECORD, S.FAILED) == msg(PENDING, S.FAILED)


def test_amounts_are_shown_in_major_units_with_the_currency_and_zero_decimal_ones_too() -> None:
    assert "5,000 JPY" in (customer_message(PENDING, S.PAID, 5000, "JPY") or "")
    unknown = customer_message(PENDING, S.PAID, None, None) or ""
    assert unknown.startswith("We received your top-up.")


# -- the whole table -----------------------------------------------------------------------


def test_every_ticket_kind_has_a_guide_entry_and_every_customer_facing_kind_a_message() -> None:
    assert set(KIND_GUIDE) == set(TicketKind)
    topics = {topic for topic, _ in MESSAGES}
    assert topics == {PENDING} | {k.value for k in TicketKind if k is not TicketKind.INCIDENT}


@pytest.mark.parametrize(("topic", "state"), sorted(MESSAGES, key=str))
def test_every_message_is_written_for_a_person(topic: str, state: CustomerState) -> None:
    text = msg(topic, state)
    for word in ("ledger", "inflight", "INFLIGHT", "void ", "PaymentIntent", "{", "}"):
        assert word not in text, (topic, state, word)
    assert (text[0].isupper() or text[0].isdigit()) and text.endswith(".")


def test_the_readme_cx_guide_is_the_table_in_the_code() -> None:
    # On failure: python -m tests.cx_guide --write
    assert readme_section(README.read_text()) == cx_guide_markdown()
