"""Absent is unknown, never zero: what Stripe's JSON says, read and decided on.

Property (issue 9): for any Stripe-shaped PaymentIntent with any subset of its optional
fields missing, null or of the wrong type, and any ledger entry, ``decide`` never voids the
money of a succeeded payment and never commits more than Stripe evidences.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile.decide import Reason, decide
from reconcile.model import (
    Action,
    DisputeStatus,
    Entry,
    EntryStatus,
    PaymentStatus,
    Policy,
    Severity,
    TicketKind,
)
from reconcile.stripe_batch import unreadable
from reconcile.stripe_objects import payment_from_stripe

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CREATED = int((NOW - timedelta(days=2)).timestamp())
POLICY = Policy(create_missing=True)
PRE_BASIL = "2024-06-20"
BASIL = "2025-03-31.basil"
CURRENT = "2026-10-28.endive"
MISSING = object()


def pi(**fields: Any) -> dict[str, Any]:
    """A PaymentIntent as Stripe renders it (fields of shared/stripe-fixtures), succeeded."""
    base: dict[str, Any] = {
        "id": "pi_1",
        "object": "payment_intent",
        "amount": 2000,
        "amount_received": 2000,
        "currency": "usd",
        "status": "succeeded",
        "created": CREATED,
        "livemode": False,
        "last_payment_error": None,
        "latest_charge": "ch_1",
        "metadata": {"ledger_destination": "wallet:praise"},
    }
    for key, value in fields.items():
        if value is MISSING:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def charge(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "ch_1",
        "object": "charge",
        "amount": 2000,
        "amount_captured": 2000,
        "amount_refunded": 0,
        "captured": True,
        "currency": "usd",
        "disputed": False,
        "refunded": False,
        "status": "succeeded",
        "failure_code": None,
        "payment_method_details": {"type": "card", "card": {}},
    }
    base.update(fields)
    return base


def inflight(amount: int = 2000, **kw: Any) -> Entry:
    fields: dict[str, Any] = {
        "reference": "pi_1",
        "status": EntryStatus.INFLIGHT,
        "amount": amount,
        "currency": "USD",
        "created_at": NOW - timedelta(days=2),
    }
    fields.update(kw)
    return Entry(**fields)


# --- reading: absent stays absent ----------------------------------------------------------


def test_a_succeeded_payment_without_amount_received_is_not_voided_in_full() -> None:
    # The bug a third-party emulator found: a missing amount_received read as 0 made a
    # succeeded 2,000 payment look like a partial capture of nothing, and voided it.
    payment = payment_from_stripe(pi(amount_received=MISSING))
    assert payment.amount_received is None
    decision = decide(payment, inflight(), POLICY, NOW)
    assert decision.action is Action.TICKET
    assert decision.reason is Reason.EVIDENCE_MISSING
    assert decision.ticket is not None
    assert decision.ticket.kind is TicketKind.UNVERIFIABLE_PAYMENT


def test_without_amount_received_the_charges_captured_amount_is_the_evidence() -> None:
    payment = payment_from_stripe(pi(amount_received=MISSING, latest_charge=charge()))
    assert payment.amount_received == 2000
    decision = decide(payment, inflight(), POLICY, NOW)
    assert (decision.action, decision.commit_amount) == (Action.COMMIT, 2000)


def test_a_null_amount_received_is_not_replaced_by_the_charge() -> None:
    # Present but null is Stripe saying "no money received"; only absence falls back.
    payment = payment_from_stripe(pi(amount_received=None, latest_charge=charge()))
    assert payment.amount_received is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "an integer amount"),
        (4999.9, "an integer amount"),
        ("2000", "an integer amount"),
        (-5, "an amount from 0"),
        (2**70, "an amount from 0"),
    ],
)
def test_an_amount_of_the_wrong_type_or_range_moves_no_money(value: Any, expected: str) -> None:
    payment = payment_from_stripe(pi(amount_received=value))
    assert payment.amount_received is None
    assert any(expected in p for p in payment.problems)
    decision = decide(payment, inflight(5000), POLICY, NOW)
    assert decision.action is Action.TICKET
    assert decision.reason is Reason.EVIDENCE_MALFORMED


@pytest.mark.parametrize("currency", ["XYZ", "", 840, "us", None])
def test_a_currency_that_is_not_iso_4217_is_unknown(currency: Any) -> None:
    payment = payment_from_stripe(pi(currency=currency))
    assert payment.currency is None
    assert decide(payment, inflight(), POLICY, NOW).action is Action.TICKET


@pytest.mark.parametrize("status", [None, MISSING, "exploded", 7])
def test_an_unknown_status_moves_no_money(status: Any) -> None:
    payment = payment_from_stripe(pi(status=status))
    assert payment.status is None
    decision = decide(payment, inflight(), POLICY, NOW)
    assert decision.action is Action.TICKET
    assert decision.ticket is not None and decision.ticket.severity is Severity.HIGH


def test_a_failed_attempt_shows_on_the_charge_after_the_error_was_cleared() -> None:
    cleared = pi(
        status="requires_payment_method",
        amount_received=0,
        last_payment_error=None,
        latest_charge=charge(status="failed", failure_code="card_declined", amount_captured=0),
    )
    payment = payment_from_stripe(cleared)
    assert payment.charge_failed and payment.charge_failure_code == "card_declined"
    old = inflight(created_at=NOW - timedelta(hours=2))
    assert decide(payment, old, POLICY, NOW).reason is Reason.FAILED_PAST_GRACE


# --- refunds under either API version ----------------------------------------------------


def partial_capture(
    capture_version: str, *, customer_refund: int = 0, read_in: str = CURRENT, listed: bool = True
) -> Any:
    """Authorised 2,000, captured 1,500 under ``capture_version``: before basil Stripe also
    refunds the uncaptured 500 itself.  Read (as the gateway reads) in ``read_in``, with the
    Refund objects listed when ``listed``."""
    refunds = []
    if capture_version == PRE_BASIL:
        refunds.append({"id": "re_rest", "amount": 500, "status": "succeeded", "reason": None})
    if customer_refund:
        refunds.append(
            {
                "id": "re_cus",
                "amount": customer_refund,
                "status": "succeeded",
                "reason": "requested_by_customer",
            }
        )
    settled = charge(amount_captured=1500, amount_refunded=sum(r["amount"] for r in refunds))
    return payment_from_stripe(
        pi(amount_received=1500, latest_charge=settled),
        api_version=read_in,
        refunds=refunds if listed else None,
    )


@pytest.mark.parametrize("version", [PRE_BASIL, BASIL, CURRENT])
def test_the_uncaptured_remainder_of_a_partial_capture_is_not_a_customer_refund(
    version: str,
) -> None:
    payment = partial_capture(version, read_in=CURRENT)
    assert payment.amount_refunded == 0
    applied = inflight(status=EntryStatus.APPLIED, committed_amount=1500, voided_amount=500)
    decision = decide(payment, applied, POLICY, NOW)
    assert decision.reason is Reason.PARTIAL_CAPTURE_SETTLED
    assert TicketKind.AMOUNT_MISMATCH in decision.keeps


@pytest.mark.parametrize("version", [PRE_BASIL, BASIL])
def test_a_real_refund_after_a_partial_capture_is_counted_once(version: str) -> None:
    payment = partial_capture(version, customer_refund=300)
    assert payment.amount_refunded == 300
    applied = inflight(status=EntryStatus.APPLIED, committed_amount=1500, voided_amount=500)
    assert decide(payment, applied, POLICY, NOW).reason is Reason.REFUND_AFTER_CREDIT


def test_an_object_read_in_a_pre_basil_version_counts_the_remainder_without_a_list() -> None:
    payment = partial_capture(PRE_BASIL, read_in=PRE_BASIL, listed=False)
    assert payment.amount_refunded == 0


@pytest.mark.parametrize("read_in", [BASIL, CURRENT, None])
def test_refunds_of_a_partial_capture_read_in_a_new_version_are_unknown_until_listed(
    read_in: str | None,
) -> None:
    # A capture made under an old version still counts its remainder when read with a new
    # one: only the Refund objects can tell the remainder from a customer's refund.
    old = partial_capture(PRE_BASIL, read_in=read_in, listed=False)  # type: ignore[arg-type]
    new = partial_capture(BASIL, customer_refund=500, read_in=read_in, listed=False)  # type: ignore[arg-type]
    assert old.amount_refunded is None and new.amount_refunded is None


def test_refund_objects_count_only_refunds_that_took_money_back() -> None:
    refunds = {
        "object": "list",
        "has_more": False,
        "data": [
            {"id": "re_1", "amount": 300, "status": "succeeded"},
            {"id": "re_2", "amount": 200, "status": "failed"},
            {"id": "re_3", "amount": 100, "status": "pending"},
        ],
    }
    payment = payment_from_stripe(
        pi(latest_charge=charge(amount_refunded=600, refunds=refunds)), api_version=CURRENT
    )
    assert payment.amount_refunded == 400


def test_a_cancel_of_an_uncaptured_payment_before_basil_is_no_refund() -> None:
    canceled = charge(amount_captured=0, amount_refunded=2000, refunded=True, captured=False)
    payment = payment_from_stripe(
        pi(status="canceled", amount_received=0, latest_charge=canceled), api_version=PRE_BASIL
    )
    assert payment.amount_refunded == 0


# --- payloads cannot see the aftermath ---------------------------------------------------


def test_an_event_payload_commits_but_keeps_tickets_it_cannot_see() -> None:
    payload = payment_from_stripe(pi())  # latest_charge is a bare id, as in every event
    assert payload.amount_refunded is None and payload.disputes is None
    decision = decide(payload, inflight(), POLICY, NOW)
    assert decision.action is Action.COMMIT
    assert {TicketKind.REFUND_AFTER_CREDIT, TicketKind.DISPUTE_OPENED} <= decision.keeps


def test_a_payload_never_creates_a_missing_record() -> None:
    payload = payment_from_stripe(pi())
    decision = decide(payload, None, POLICY, NOW)
    assert decision.action is Action.TICKET
    assert decision.reason is Reason.MISSING_RECORD_UNVERIFIED


def test_an_expanded_charge_with_no_dispute_lets_a_missing_record_be_created() -> None:
    payment = payment_from_stripe(pi(latest_charge=charge()), api_version=CURRENT)
    assert decide(payment, None, POLICY, NOW).action is Action.CREATE


# --- disputes ------------------------------------------------------------------------------


def dispute(status: str, due_in: timedelta | None = timedelta(days=10)) -> dict[str, Any]:
    return {
        "id": "du_1",
        "object": "dispute",
        "amount": 2000,
        "currency": "usd",
        "reason": "fraudulent",
        "status": status,
        "payment_intent": "pi_1",
        "evidence_details": {
            "due_by": int((NOW + due_in).timestamp()) if due_in is not None else None
        },
    }


APPLIED = inflight(status=EntryStatus.APPLIED, committed_amount=2000)


def disputed(*disputes: dict[str, Any]) -> Any:
    return payment_from_stripe(
        pi(latest_charge=charge(disputed=True)), api_version=CURRENT, disputes=disputes
    )


@pytest.mark.parametrize(
    ("status", "due_in", "severity", "reason"),
    [
        ("needs_response", timedelta(days=10), Severity.HIGH, Reason.DISPUTE_OPENED),
        ("needs_response", timedelta(days=2), Severity.CRITICAL, Reason.DISPUTE_EVIDENCE_DUE),
        (
            "warning_needs_response",
            timedelta(days=1),
            Severity.CRITICAL,
            Reason.DISPUTE_EVIDENCE_DUE,
        ),
        ("under_review", None, Severity.MEDIUM, Reason.DISPUTE_UNDER_REVIEW),
        ("warning_under_review", None, Severity.MEDIUM, Reason.DISPUTE_UNDER_REVIEW),
        ("lost", None, Severity.HIGH, Reason.DISPUTE_LOST),
        ("some_new_status", None, Severity.HIGH, Reason.DISPUTE_OPENED),
    ],
)
def test_a_disputes_ticket_follows_its_status_and_deadline(
    status: str, due_in: timedelta | None, severity: Severity, reason: Reason
) -> None:
    decision = decide(disputed(dispute(status, due_in)), APPLIED, POLICY, NOW)
    assert decision.ticket is not None
    assert (decision.ticket.kind, decision.ticket.severity) == (
        TicketKind.DISPUTE_OPENED,
        severity,
    )
    assert decision.reason is reason


@pytest.mark.parametrize("status", ["won", "warning_closed", "prevented"])
def test_a_dispute_that_is_over_in_the_merchants_favour_resolves_its_ticket(status: str) -> None:
    decision = decide(disputed(dispute(status)), APPLIED, POLICY, NOW)
    assert decision.action is Action.MATCHED and decision.resolves
    assert TicketKind.DISPUTE_OPENED not in decision.keeps


def test_the_most_urgent_of_several_disputes_sets_the_severity() -> None:
    both = disputed(dispute("under_review"), dispute("needs_response", timedelta(hours=5)))
    decision = decide(both, APPLIED, POLICY, NOW)
    assert decision.ticket is not None and decision.ticket.severity is Severity.CRITICAL


def test_a_disputed_charge_whose_disputes_were_not_listed_keeps_its_ticket_open() -> None:
    payment = payment_from_stripe(pi(latest_charge=charge(disputed=True)), api_version=CURRENT)
    assert payment.disputes is None
    assert TicketKind.DISPUTE_OPENED in decide(payment, APPLIED, POLICY, NOW).keeps


def test_dispute_status_values_match_stripes() -> None:
    assert {s.value for s in DisputeStatus} >= {
        "warning_needs_response",
        "warning_under_review",
        "warning_closed",
        "needs_response",
        "under_review",
        "won",
        "lost",
    }


# --- time limits by payment method -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "age", "ticketed"),
    [
        ("card", timedelta(days=2), True),
        ("us_bank_account", timedelta(days=3), False),
        ("us_bank_account", timedelta(days=8), True),
        ("sepa_debit", timedelta(days=10), False),
        ("sepa_debit", timedelta(days=16), True),
    ],
)
def test_the_stuck_payment_sla_depends_on_the_payment_method(
    method: str, age: timedelta, ticketed: bool
) -> None:
    processing = charge(status="pending", payment_method_details={"type": method})
    payment = payment_from_stripe(
        pi(status="processing", amount_received=0, latest_charge=processing)
    )
    assert payment.payment_method_type == method
    decision = decide(payment, inflight(created_at=NOW - age), POLICY, NOW)
    assert decision.action is Action.WAIT
    assert (decision.ticket is not None) is ticketed


def test_an_uncaptured_payment_is_ticketed_before_stripe_cancels_the_authorisation() -> None:
    uncaptured = pi(status="requires_capture", amount_received=0, created=CREATED)
    payment = payment_from_stripe(uncaptured)
    young = decide(payment, inflight(), POLICY, NOW)
    assert young.reason is Reason.IN_PROGRESS
    later = decide(payment, inflight(), POLICY, NOW + timedelta(days=3, hours=1))
    assert later.reason is Reason.CAPTURE_DEADLINE_NEAR
    assert later.ticket is not None and later.ticket.severity is Severity.HIGH


def test_a_cards_own_capture_deadline_wins_over_the_default_window() -> None:
    capture_before = int((NOW + timedelta(hours=20)).timestamp())
    card = charge(
        status="succeeded",
        captured=False,
        payment_method_details={"type": "card", "card": {"capture_before": capture_before}},
    )
    payment = payment_from_stripe(
        pi(status="requires_capture", amount_received=0, latest_charge=card)
    )
    assert decide(payment, inflight(), POLICY, NOW).reason is Reason.CAPTURE_DEADLINE_NEAR


# --- the property ------------------------------------------------------------------------

# Each optional field: as Stripe sends it, absent, null, or of a type Stripe never sends.
JUNK = st.sampled_from([MISSING, None, True, 4999.9, "2000", -1, 2**70, [], {}])


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(valid, valid, JUNK)


amounts = st.integers(0, 5000)
charges = st.builds(
    lambda amount, captured, refunded, disputed, status: charge(
        amount=amount,
        amount_captured=captured,
        amount_refunded=refunded,
        disputed=disputed,
        status=status,
    ),
    field(amounts),
    field(amounts),
    field(amounts),
    field(st.booleans()),
    field(st.sampled_from(["succeeded", "failed", "pending"])),
)
payment_intents = st.builds(
    lambda status, amount, received, currency, latest_charge, error: pi(
        status=status,
        amount=amount,
        amount_received=received,
        currency=currency,
        latest_charge=latest_charge,
        last_payment_error=error,
    ),
    field(st.sampled_from([s.value for s in PaymentStatus])),
    field(amounts),
    field(amounts),
    field(st.sampled_from(["usd", "eur", "jpy"])),
    st.one_of(st.just("ch_1"), st.just(MISSING), st.none(), charges),
    st.sampled_from([None, MISSING, {"code": "card_declined"}]),
)
entries = st.builds(
    lambda status, amount, committed, voided, currency, age: inflight(
        amount,
        status=status,
        committed_amount=committed,
        voided_amount=voided,
        currency=currency,
        created_at=NOW - age,
    ),
    st.sampled_from(EntryStatus),
    st.integers(1, 5000),
    st.integers(0, 5000),
    st.integers(0, 5000),
    st.sampled_from(["USD", "EUR", "JPY"]),
    st.timedeltas(timedelta(0), timedelta(days=30)),
)


def evidenced_received(raw: dict[str, Any]) -> int | None:
    """What the JSON itself proves Stripe received, read independently of the code."""

    def amount(value: Any) -> int | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**12
        return value if ok else None

    if "amount_received" in raw:
        return amount(raw["amount_received"])
    latest = raw.get("latest_charge")
    return amount(latest.get("amount_captured")) if isinstance(latest, dict) else None


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    raw=payment_intents,
    entry=st.one_of(st.none(), entries),
    version=st.sampled_from([PRE_BASIL, BASIL, None]),
)
def test_decide_never_voids_a_succeeded_payments_money_nor_commits_more_than_evidenced(
    raw: dict[str, Any], entry: Entry | None, version: str | None
) -> None:
    payment = payment_from_stripe(raw, api_version=version)
    decision = decide(payment, entry, POLICY, NOW)
    received = evidenced_received(raw)
    succeeded = raw.get("status") == "succeeded"
    currency_ok = isinstance(raw.get("currency"), str) and raw["currency"] in ("usd", "eur", "jpy")
    if not (succeeded and received is not None and currency_ok):
        # No proof of how much arrived: nothing may be committed or created.
        assert decision.action not in (Action.COMMIT, Action.CREATE)
        if succeeded:
            assert decision.action is not Action.VOID
        return
    if decision.action is Action.COMMIT:
        assert entry is not None and decision.commit_amount is not None
        assert entry.committed_amount + decision.commit_amount <= received
        if decision.void_remainder:
            # Only what exceeds the money received is released.
            assert entry.committed_amount + decision.commit_amount == received
    if decision.action is Action.VOID:
        assert entry is not None
        assert entry.committed_amount == received  # the voided rest was never received
    if decision.action is Action.CREATE:
        assert decision.create is not None and decision.create.amount == received


def test_the_property_holds_on_an_example_that_once_voided_a_whole_payment() -> None:
    raw = pi(amount_received=MISSING)
    test_decide_never_voids_a_succeeded_payments_money_nor_commits_more_than_evidenced.hypothesis.inner_test(  # type: ignore[attr-defined]
        raw=raw, entry=inflight(), version=None
    )


def test_replacing_amount_received_by_junk_never_changes_a_ticket_into_money() -> None:
    for junk in (None, True, 4999.9, "2000", -1):
        payment = payment_from_stripe(pi(amount_received=junk))
        decision = decide(payment, replace(inflight(), amount=5000), POLICY, NOW)
        assert not decision.changes_ledger


def test_a_payment_stripe_refused_to_read_is_a_ticket_and_moves_no_money() -> None:
    d = decide(
        unreadable("pi_refused", "HTTP 400 parameter_invalid_string"), inflight(), POLICY, NOW
    )
    assert not d.changes_ledger
    assert d.ticket is not None and d.ticket.kind is TicketKind.UNVERIFIABLE_PAYMENT
