"""The manual-fix checks: what Stripe must say before a person may commit, void or create."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconcile.checks import FixAction, check_fix
from reconcile.model import (
    Dispute,
    DisputeStatus,
    Entry,
    EntryStatus,
    Payment,
    PaymentStatus,
    Policy,
)

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
POLICY = Policy()


def payment(status: PaymentStatus = PaymentStatus.SUCCEEDED, **kw: object) -> Payment:
    fields: dict[str, object] = {
        "id": "pi_1",
        "status": status,
        "amount": 1000,
        "amount_received": 1000 if status is PaymentStatus.SUCCEEDED else 0,
        "currency": "USD",
        "created": NOW - timedelta(hours=3),
        # An expanded charge: refunds and disputes known (none).
        "amount_refunded": 0,
        "disputes": (),
    }
    if kw.pop("disputed", False):
        fields["disputes"] = (Dispute("du_1", DisputeStatus.NEEDS_RESPONSE, 1000, "USD"),)
    fields.update(kw)
    return Payment(**fields)  # type: ignore[arg-type]


def entry(status: EntryStatus = EntryStatus.INFLIGHT, **kw: object) -> Entry:
    fields: dict[str, object] = {
        "reference": "pi_1",
        "status": status,
        "amount": 1000,
        "currency": "USD",
        "created_at": NOW - timedelta(hours=3),
        "committed_amount": 1000 if status is EntryStatus.APPLIED else 0,
        "voided_amount": 1000 if status is EntryStatus.VOID else 0,
    }
    fields.update(kw)
    return Entry(**fields)  # type: ignore[arg-type]


FAILED = payment(PaymentStatus.REQUIRES_PAYMENT_METHOD, last_payment_error="card_declined")


def test_a_succeeded_payment_may_be_committed_for_what_stripe_received() -> None:
    verdict = check_fix(FixAction.COMMIT, payment(), entry(), POLICY)
    assert verdict.allowed and verdict.amount == 1000


def test_a_commit_never_credits_more_than_stripe_received() -> None:
    verdict = check_fix(FixAction.COMMIT, payment(amount_received=600), entry(), POLICY)
    assert verdict.amount == 600


def test_a_commit_takes_what_was_already_committed_into_account() -> None:
    verdict = check_fix(
        FixAction.COMMIT, payment(amount_received=600), entry(committed_amount=400), POLICY
    )
    assert verdict.amount == 200


@pytest.mark.parametrize(
    "status",
    [s for s in PaymentStatus if s is not PaymentStatus.SUCCEEDED],
)
def test_a_commit_is_refused_unless_stripe_says_succeeded(status: PaymentStatus) -> None:
    verdict = check_fix(FixAction.COMMIT, payment(status), entry(), POLICY)
    assert not verdict.allowed
    assert verdict.refusal is not None
    assert "commit needs a succeeded payment" in verdict.refusal
    assert f"is {status.value}" in verdict.refusal


def test_a_commit_of_an_unknown_payment_is_refused() -> None:
    verdict = check_fix(FixAction.COMMIT, None, entry(), POLICY)
    assert verdict.refusal and "Stripe has no such PaymentIntent" in verdict.refusal


@pytest.mark.parametrize("status", [EntryStatus.APPLIED, EntryStatus.VOID])
def test_a_commit_needs_an_inflight_entry(status: EntryStatus) -> None:
    verdict = check_fix(FixAction.COMMIT, payment(), entry(status), POLICY)
    assert verdict.refusal and f"the ledger entry is {status.value}" in verdict.refusal
    assert check_fix(FixAction.COMMIT, payment(), None, POLICY).refusal


def test_a_commit_in_another_currency_is_refused() -> None:
    verdict = check_fix(FixAction.COMMIT, payment(currency="EUR"), entry(), POLICY)
    assert verdict.refusal and "currency USD differs" in verdict.refusal


def test_a_commit_with_nothing_left_received_is_refused() -> None:
    verdict = check_fix(
        FixAction.COMMIT, payment(amount_received=400), entry(committed_amount=400), POLICY
    )
    assert verdict.refusal and "nothing left to commit" in verdict.refusal


@pytest.mark.parametrize(
    "stripe",
    [FAILED, payment(PaymentStatus.CANCELED), None],
    ids=["failed", "canceled", "unknown"],
)
def test_a_failed_canceled_or_unknown_payment_may_be_voided(stripe: Payment | None) -> None:
    verdict = check_fix(FixAction.VOID, stripe, entry(committed_amount=300), POLICY)
    assert verdict.allowed and verdict.amount == 700


@pytest.mark.parametrize(
    "stripe",
    [
        payment(),
        payment(PaymentStatus.PROCESSING),
        payment(PaymentStatus.REQUIRES_ACTION),
        payment(PaymentStatus.REQUIRES_PAYMENT_METHOD),  # nobody tried yet: not a failure
    ],
    ids=["succeeded", "processing", "requires_action", "untried"],
)
def test_a_void_is_refused_while_the_payment_may_still_succeed(stripe: Payment) -> None:
    verdict = check_fix(FixAction.VOID, stripe, entry(), POLICY)
    assert verdict.refusal and "void needs a failed, canceled or unknown payment" in verdict.refusal


def test_create_record_needs_a_succeeded_payment_with_no_entry_and_a_destination() -> None:
    paid = payment(metadata={"ledger_destination": "wallet:cus_1"})
    verdict = check_fix(FixAction.CREATE_RECORD, paid, None, POLICY)
    assert verdict.allowed and verdict.create is not None
    assert verdict.create.destination == "wallet:cus_1"
    assert verdict.create.source == "@stripe"
    assert verdict.create.amount == 1000 and verdict.create.currency == "USD"


def test_create_record_prefers_the_tickets_balance_and_the_metadata_source() -> None:
    paid = payment(metadata={"ledger_destination": "wallet:x", "ledger_source": "@card"})
    verdict = check_fix(FixAction.CREATE_RECORD, paid, None, POLICY, ticket_balance="wallet:y")
    assert verdict.create is not None
    assert (verdict.create.destination, verdict.create.source) == ("wallet:y", "@card")


def test_create_record_follows_the_policys_metadata_keys() -> None:
    policy = Policy(destination_key="balance_id")
    verdict = check_fix(
        FixAction.CREATE_RECORD, payment(metadata={"balance_id": "b1"}), None, policy
    )
    assert verdict.create is not None and verdict.create.destination == "b1"


def test_create_record_is_refused_without_a_destination_or_with_an_entry() -> None:
    no_dest = check_fix(FixAction.CREATE_RECORD, payment(), None, POLICY)
    assert no_dest.refusal and "destination balance is unknown" in no_dest.refusal
    exists = check_fix(FixAction.CREATE_RECORD, payment(), entry(), POLICY)
    assert exists.refusal and "already has pi_1 (INFLIGHT)" in exists.refusal
    unpaid = check_fix(FixAction.CREATE_RECORD, FAILED, None, POLICY)
    assert unpaid.refusal and "create-record needs a succeeded payment" in unpaid.refusal


def test_closing_with_no_action_changes_no_money_whatever_stripe_says() -> None:
    verdict = check_fix(FixAction.NONE, None, None, POLICY)
    assert verdict.allowed and verdict.amount is None and verdict.create is None


@given(
    received=st.integers(0, 10_000),
    amount=st.integers(1, 10_000),
    committed=st.integers(0, 10_000),
    voided=st.integers(0, 10_000),
)
def test_an_allowed_commit_never_exceeds_what_is_left_or_what_stripe_received(
    received: int, amount: int, committed: int, voided: int
) -> None:
    e = entry(amount=amount, committed_amount=committed, voided_amount=voided)
    verdict = check_fix(FixAction.COMMIT, payment(amount_received=received), e, POLICY)
    if verdict.allowed:
        assert verdict.amount is not None
        assert 0 < verdict.amount <= e.remaining
        assert committed + verdict.amount <= received


# -- credit (paid but voided) and reverse (credited but failed, refund after credit) --------

VOIDED = entry(EntryStatus.VOID)


def test_a_paid_but_voided_payment_may_be_credited_what_stripe_received() -> None:
    verdict = check_fix(FixAction.CREDIT, payment(), VOIDED, POLICY)
    assert verdict.allowed and verdict.amount == 1000


def test_a_credit_is_net_of_refunds_and_of_what_was_already_credited() -> None:
    refunded = payment(amount_refunded=300)
    assert check_fix(FixAction.CREDIT, refunded, VOIDED, POLICY).amount == 700
    partly = entry(EntryStatus.VOID, committed_amount=400, voided_amount=600)
    assert check_fix(FixAction.CREDIT, payment(), partly, POLICY).amount == 600


@pytest.mark.parametrize(
    ("stripe", "ledger", "why"),
    [
        (FAILED, VOIDED, "credit needs a succeeded payment"),
        (None, VOIDED, "credit needs a succeeded payment"),
        (payment(), None, "use create-record"),
        (payment(), entry(), "commit it instead"),
        (payment(disputed=True), VOIDED, "disputed"),
        (payment(currency="EUR"), VOIDED, "currency USD differs"),
        (payment(), entry(EntryStatus.APPLIED), "nothing left to credit"),
        (payment(amount_refunded=1000), VOIDED, "nothing left to credit"),
    ],
)
def test_a_credit_is_refused_when_stripe_or_the_ledger_contradicts_it(stripe, ledger, why) -> None:
    verdict = check_fix(FixAction.CREDIT, stripe, ledger, POLICY)
    assert verdict.refusal and why in verdict.refusal


def test_a_credit_of_a_failed_payment_names_what_stripe_says() -> None:
    verdict = check_fix(FixAction.CREDIT, FAILED, VOIDED, POLICY)
    assert verdict.refusal and "is requires_payment_method" in verdict.refusal
    assert "card_declined" in verdict.refusal


@pytest.mark.parametrize("failed", [FAILED, payment(PaymentStatus.CANCELED)])
def test_a_credit_whose_payment_failed_is_reversed_in_full(failed) -> None:
    verdict = check_fix(FixAction.REVERSE, failed, entry(EntryStatus.APPLIED), POLICY)
    assert verdict.allowed and verdict.amount == 1000


def test_a_refund_after_credit_is_reversed_for_the_refunded_amount_only() -> None:
    verdict = check_fix(
        FixAction.REVERSE, payment(amount_refunded=250), entry(EntryStatus.APPLIED), POLICY
    )
    assert verdict.amount == 250


def test_a_reversal_never_takes_back_more_than_was_credited() -> None:
    partial = entry(EntryStatus.APPLIED, committed_amount=600, voided_amount=400)
    assert check_fix(FixAction.REVERSE, FAILED, partial, POLICY).amount == 600
    refunded = payment(amount_received=1000, amount_refunded=1000)
    assert check_fix(FixAction.REVERSE, refunded, partial, POLICY).amount == 600


@pytest.mark.parametrize(
    ("stripe", "ledger", "why"),
    [
        (payment(), entry(EntryStatus.APPLIED), "no failure or refund to reverse"),
        (payment(disputed=True), entry(EntryStatus.APPLIED), "no failure or refund"),
        (None, entry(EntryStatus.APPLIED), "does not show the payment failed"),
        (FAILED, None, "no ledger entry to reverse"),
        (FAILED, entry(), "nothing credited"),
        (FAILED, VOIDED, "nothing credited"),
        (
            FAILED,
            entry(EntryStatus.APPLIED, reversed_amount=1000),
            "nothing credited is left to reverse",
        ),
        (
            payment(amount_refunded=500),
            entry(EntryStatus.APPLIED, reversed_amount=300),
            "already posted",
        ),
    ],
)
def test_a_reversal_is_refused_when_stripe_or_the_ledger_contradicts_it(
    stripe, ledger, why
) -> None:
    verdict = check_fix(FixAction.REVERSE, stripe, ledger, POLICY)
    assert verdict.refusal and why in verdict.refusal


@given(
    received=st.integers(0, 2000),
    refunded=st.integers(0, 2000),
    committed=st.integers(0, 1000),
    failed=st.booleans(),
)
def test_a_reversal_is_never_more_than_what_is_credited_nor_more_than_stripe_took_back(
    received: int, refunded: int, committed: int, failed: bool
) -> None:
    stripe = (
        FAILED
        if failed
        else payment(amount_received=received, amount_refunded=min(refunded, received))
    )
    ledger = entry(EntryStatus.APPLIED, committed_amount=committed, voided_amount=1000 - committed)
    verdict = check_fix(FixAction.REVERSE, stripe, ledger, POLICY)
    if verdict.allowed:
        assert verdict.amount is not None and 0 < verdict.amount <= committed
        if not failed:
            assert verdict.amount <= stripe.amount_refunded
