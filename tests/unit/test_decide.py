"""The decision table of DESIGN.md, row by row, then every pair of states, then properties."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconcile.decide import Reason, decide
from reconcile.model import (
    Action,
    CreateSpec,
    Decision,
    Dispute,
    DisputeStatus,
    Entry,
    EntryStatus,
    FraudWarning,
    Payment,
    PaymentStatus,
    Policy,
    Severity,
    TicketKind,
    TicketSpec,
)

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
POLICY = Policy(failed_grace=timedelta(hours=1), processing_sla=timedelta(hours=24))
YOUNG = timedelta(minutes=5)
PAST_GRACE = timedelta(hours=2)
PAST_SLA = timedelta(days=2)
DECLINED = "card_declined"
OPEN_DISPUTE = Dispute(
    "du_1",
    DisputeStatus.NEEDS_RESPONSE,
    amount=1000,
    currency="USD",
    reason="fraudulent",
    evidence_due_by=NOW + timedelta(days=10),
)

IN_PROGRESS = [
    PaymentStatus.PROCESSING,
    PaymentStatus.REQUIRES_ACTION,
    PaymentStatus.REQUIRES_CONFIRMATION,
    PaymentStatus.REQUIRES_CAPTURE,
    PaymentStatus.REQUIRES_PAYMENT_METHOD,  # without an error: nobody has tried yet
]


def payment(
    status: PaymentStatus = PaymentStatus.SUCCEEDED, received: int | None = None, **kw: object
) -> Payment:
    fields: dict[str, object] = {
        "id": "pi_1",
        "status": status,
        "amount": 1000,
        "amount_received": (1000 if status is PaymentStatus.SUCCEEDED else 0)
        if received is None
        else received,
        "currency": "USD",
        "created": NOW - timedelta(days=3),
        # An expanded charge: refunds and disputes known (none), fraud warnings known too.
        "amount_refunded": 0,
        "disputes": (),
        "fraud_warnings": (),
    }
    if kw.pop("disputed", False):
        fields["disputes"] = (OPEN_DISPUTE,)
    fields.update(kw)
    return Payment(**fields)  # type: ignore[arg-type]


def failed_payment(**kw: Any) -> Payment:
    return payment(PaymentStatus.REQUIRES_PAYMENT_METHOD, last_payment_error=DECLINED, **kw)


def entry(
    status: EntryStatus = EntryStatus.INFLIGHT, age: timedelta = YOUNG, **kw: object
) -> Entry:
    fields: dict[str, object] = {
        "reference": "pi_1",
        "status": status,
        "amount": 1000,
        "currency": "USD",
        "created_at": NOW - age,
        "committed_amount": 1000 if status is EntryStatus.APPLIED else 0,
        "voided_amount": 1000 if status is EntryStatus.VOID else 0,
    }
    fields.update(kw)
    return Entry(**fields)  # type: ignore[arg-type]


def ticket(kind: TicketKind, severity: Severity, reason: Reason) -> Decision:
    return Decision(Action.TICKET, reason, ticket=TicketSpec(kind, severity))


# --- Succeeded, entry INFLIGHT ------------------------------------------------------------


def test_commits_a_succeeded_payment_whose_amount_and_currency_match_the_inflight_entry() -> None:
    assert decide(payment(), entry(), POLICY, NOW) == Decision(
        Action.COMMIT, Reason.SUCCEEDED_AMOUNT_MATCHES, commit_amount=1000, resolves=True
    )


def test_commits_the_received_amount_of_a_partial_capture_and_voids_the_rest() -> None:
    assert decide(payment(received=600), entry(), POLICY, NOW) == Decision(
        Action.COMMIT,
        Reason.PARTIAL_CAPTURE,
        commit_amount=600,
        void_remainder=True,
        ticket=TicketSpec(TicketKind.AMOUNT_MISMATCH, Severity.LOW),
        resolves=True,
    )


def test_tickets_a_payment_that_received_more_than_the_inflight_amount() -> None:
    assert decide(payment(received=1200), entry(), POLICY, NOW) == ticket(
        TicketKind.AMOUNT_MISMATCH, Severity.HIGH, Reason.RECEIVED_EXCEEDS_INFLIGHT
    )


def test_tickets_a_payment_in_another_currency_than_the_inflight_entry() -> None:
    assert decide(payment(currency="EUR"), entry(), POLICY, NOW) == ticket(
        TicketKind.AMOUNT_MISMATCH, Severity.HIGH, Reason.CURRENCY_MISMATCH
    )


def test_commits_only_what_is_left_of_a_partly_committed_entry() -> None:
    decision = decide(payment(), entry(committed_amount=400), POLICY, NOW)
    assert decision == Decision(
        Action.COMMIT, Reason.SUCCEEDED_AMOUNT_MATCHES, commit_amount=600, resolves=True
    )


def test_commits_the_rest_of_a_partial_capture_already_partly_committed() -> None:
    decision = decide(payment(received=700), entry(committed_amount=300), POLICY, NOW)
    assert decision.action is Action.COMMIT
    assert decision.commit_amount == 400
    assert decision.void_remainder


def test_only_voids_the_rest_of_a_partial_capture_whose_received_part_is_committed() -> None:
    assert decide(payment(received=600), entry(committed_amount=600), POLICY, NOW) == Decision(
        Action.VOID,
        Reason.PARTIAL_CAPTURE_VOID_REMAINDER,
        ticket=TicketSpec(TicketKind.AMOUNT_MISMATCH, Severity.LOW),
        resolves=True,
    )


def test_matches_an_inflight_entry_that_is_already_fully_committed() -> None:
    assert decide(payment(), entry(committed_amount=1000), POLICY, NOW) == Decision(
        Action.MATCHED, Reason.ALREADY_COMMITTED, resolves=True
    )


def test_matches_an_inflight_entry_whose_partial_capture_is_committed_and_voided() -> None:
    settled = entry(committed_amount=600, voided_amount=400)
    decision = decide(payment(received=600), settled, POLICY, NOW)
    assert decision == Decision(Action.MATCHED, Reason.ALREADY_COMMITTED, resolves=True)


def test_tickets_an_entry_committed_beyond_what_stripe_received() -> None:
    assert decide(payment(received=500), entry(committed_amount=800), POLICY, NOW) == ticket(
        TicketKind.AMOUNT_MISMATCH, Severity.HIGH, Reason.COMMITTED_EXCEEDS_RECEIVED
    )


def test_tickets_money_received_for_part_of_a_hold_that_was_already_voided() -> None:
    assert decide(payment(), entry(voided_amount=300), POLICY, NOW) == ticket(
        TicketKind.AMOUNT_MISMATCH, Severity.HIGH, Reason.RECEIVED_EXCEEDS_REMAINING
    )


def test_tickets_an_inflight_entry_that_committed_and_voided_more_than_its_amount() -> None:
    broken = entry(committed_amount=800, voided_amount=800)
    assert decide(payment(), broken, POLICY, NOW) == ticket(
        TicketKind.AMOUNT_MISMATCH, Severity.HIGH, Reason.LEDGER_OVERALLOCATED
    )


def test_commits_a_disputed_payment_and_carries_the_dispute_ticket() -> None:
    decision = decide(payment(received=600, disputed=True), entry(), POLICY, NOW)
    assert decision.action is Action.COMMIT
    assert decision.commit_amount == 600
    assert decision.ticket == TicketSpec(TicketKind.DISPUTE_OPENED, Severity.HIGH)


def test_commits_a_refunded_payment_and_carries_the_refund_ticket() -> None:
    decision = decide(payment(amount_refunded=1000), entry(), POLICY, NOW)
    assert decision.action is Action.COMMIT
    assert decision.ticket == TicketSpec(TicketKind.REFUND_AFTER_CREDIT, Severity.MEDIUM)


# --- Not succeeded, entry INFLIGHT ---------------------------------------------------------


def test_voids_a_canceled_payment() -> None:
    decision = decide(payment(PaymentStatus.CANCELED), entry(), POLICY, NOW)
    assert decision == Decision(Action.VOID, Reason.CANCELED, resolves=True)


def test_voids_a_failed_payment_older_than_the_grace_period() -> None:
    decision = decide(failed_payment(), entry(age=PAST_GRACE), POLICY, NOW)
    assert decision == Decision(Action.VOID, Reason.FAILED_PAST_GRACE, resolves=True)


@pytest.mark.parametrize("age", [YOUNG, POLICY.failed_grace], ids=["young", "exactly_grace"])
def test_waits_on_a_failed_payment_within_the_grace_period(age: timedelta) -> None:
    decision = decide(failed_payment(), entry(age=age), POLICY, NOW)
    assert decision == Decision(Action.WAIT, Reason.FAILED_WITHIN_GRACE)


@pytest.mark.parametrize("status", IN_PROGRESS)
def test_waits_on_a_payment_in_progress(status: PaymentStatus) -> None:
    decision = decide(payment(status), entry(age=PAST_GRACE), POLICY, NOW)
    assert decision == Decision(Action.WAIT, Reason.IN_PROGRESS)


def test_waits_on_a_payment_nobody_has_tried_to_pay_yet_even_past_the_grace_period() -> None:
    unattempted = payment(PaymentStatus.REQUIRES_PAYMENT_METHOD, last_payment_error=None)
    assert decide(unattempted, entry(age=PAST_GRACE), POLICY, NOW).action is Action.WAIT


@pytest.mark.parametrize(
    ("status", "severity"),
    [
        (PaymentStatus.PROCESSING, Severity.MEDIUM),
        (PaymentStatus.REQUIRES_ACTION, Severity.LOW),
        (PaymentStatus.REQUIRES_CONFIRMATION, Severity.LOW),
        (PaymentStatus.REQUIRES_PAYMENT_METHOD, Severity.LOW),
    ],
)
def test_waits_with_a_stuck_ticket_on_a_payment_in_progress_past_the_sla(
    status: PaymentStatus, severity: Severity
) -> None:
    decision = decide(payment(status), entry(age=PAST_SLA), POLICY, NOW)
    assert decision == Decision(
        Action.WAIT, Reason.STUCK_PAST_SLA, ticket=TicketSpec(TicketKind.STUCK_PAYMENT, severity)
    )


@pytest.mark.parametrize("failed", [payment(PaymentStatus.CANCELED), failed_payment()])
def test_tickets_a_partly_committed_inflight_entry_whose_payment_failed(failed: Payment) -> None:
    assert decide(failed, entry(committed_amount=300), POLICY, NOW) == ticket(
        TicketKind.CREDITED_BUT_FAILED, Severity.CRITICAL, Reason.CREDITED_BUT_FAILED
    )


def test_waits_on_a_partly_committed_inflight_entry_whose_payment_is_in_progress() -> None:
    decision = decide(payment(PaymentStatus.PROCESSING), entry(committed_amount=300), POLICY, NOW)
    assert decision == Decision(Action.WAIT, Reason.CREDITED_BEFORE_SETTLEMENT)


# --- Not found on Stripe -------------------------------------------------------------------


def test_tickets_an_inflight_entry_whose_payment_stripe_does_not_know() -> None:
    assert decide(None, entry(), POLICY, NOW) == ticket(
        TicketKind.UNKNOWN_PAYMENT, Severity.HIGH, Reason.NOT_FOUND_INFLIGHT
    )


def test_tickets_an_applied_entry_whose_payment_stripe_does_not_know() -> None:
    assert decide(None, entry(EntryStatus.APPLIED), POLICY, NOW) == ticket(
        TicketKind.UNKNOWN_PAYMENT, Severity.HIGH, Reason.NOT_FOUND_APPLIED
    )


def test_does_nothing_for_a_voided_entry_whose_payment_stripe_does_not_know() -> None:
    decision = decide(None, entry(EntryStatus.VOID), POLICY, NOW)
    assert decision == Decision(Action.NOTHING, Reason.NOT_FOUND_VOIDED)


def test_does_nothing_when_neither_stripe_nor_the_ledger_know_the_payment() -> None:
    assert decide(None, None, POLICY, NOW) == Decision(Action.NOTHING, Reason.NO_PAYMENT_NO_ENTRY)


# --- No ledger record ----------------------------------------------------------------------


def test_tickets_a_succeeded_payment_without_a_ledger_record() -> None:
    meta = {"ledger_destination": "bal_customer"}
    assert decide(payment(metadata=meta), None, POLICY, NOW) == ticket(
        TicketKind.MISSING_RECORD, Severity.HIGH, Reason.MISSING_RECORD
    )


def test_creates_the_missing_record_when_policy_allows_and_metadata_names_the_balances() -> None:
    policy = replace(POLICY, create_missing=True)
    meta = {"ledger_destination": "bal_customer", "ledger_source": "@stripe_eu"}
    decision = decide(payment(received=990, currency="EUR", metadata=meta), None, policy, NOW)
    assert decision == Decision(
        Action.CREATE,
        Reason.CREATE_MISSING_RECORD,
        create=CreateSpec(
            reference="pi_1",
            amount=990,
            currency="EUR",
            source="@stripe_eu",
            destination="bal_customer",
        ),
        resolves=True,
    )


def test_creates_the_missing_record_from_the_default_source_when_metadata_names_none() -> None:
    policy = replace(POLICY, create_missing=True, default_source="@world")
    decision = decide(payment(metadata={"ledger_destination": "bal_c"}), None, policy, NOW)
    assert decision.create is not None
    assert decision.create.source == "@world"


@pytest.mark.parametrize("metadata", [{"other": "x"}, {"ledger_destination": ""}])
def test_tickets_the_missing_record_when_metadata_names_no_destination(
    metadata: dict[str, str],
) -> None:
    policy = replace(POLICY, create_missing=True)
    assert decide(payment(metadata=metadata), None, policy, NOW) == ticket(
        TicketKind.MISSING_RECORD, Severity.HIGH, Reason.MISSING_RECORD_NO_DESTINATION
    )


@pytest.mark.parametrize("reversal", [{"amount_refunded": 100}, {"disputed": True}])
def test_tickets_rather_than_creates_the_missing_record_of_a_reversed_payment(
    reversal: dict[str, Any],
) -> None:
    policy = replace(POLICY, create_missing=True)
    reversed_payment = payment(metadata={"ledger_destination": "bal_c"}, **reversal)
    assert decide(reversed_payment, None, policy, NOW) == ticket(
        TicketKind.MISSING_RECORD, Severity.HIGH, Reason.MISSING_RECORD_REVERSED
    )


@pytest.mark.parametrize("status", [*IN_PROGRESS, PaymentStatus.CANCELED])
def test_does_nothing_for_a_payment_that_has_not_succeeded_and_has_no_record(
    status: PaymentStatus,
) -> None:
    decision = decide(payment(status), None, replace(POLICY, create_missing=True), NOW)
    assert decision == Decision(Action.NOTHING, Reason.NOT_SUCCEEDED_NO_RECORD)


# --- Entry APPLIED -------------------------------------------------------------------------


def test_matches_an_applied_entry_whose_amount_agrees() -> None:
    assert decide(payment(), entry(EntryStatus.APPLIED), POLICY, NOW) == Decision(
        Action.MATCHED, Reason.APPLIED_AMOUNT_MATCHES, resolves=True
    )


def test_matches_an_applied_entry_of_a_partial_capture() -> None:
    applied = entry(EntryStatus.APPLIED, committed_amount=600)
    assert decide(payment(received=600), applied, POLICY, NOW).action is Action.MATCHED


def test_tickets_an_applied_entry_whose_amount_differs() -> None:
    assert decide(payment(received=900), entry(EntryStatus.APPLIED), POLICY, NOW) == ticket(
        TicketKind.AMOUNT_MISMATCH, Severity.HIGH, Reason.APPLIED_AMOUNT_DIFFERS
    )


def test_tickets_an_applied_entry_in_another_currency() -> None:
    assert decide(payment(currency="EUR"), entry(EntryStatus.APPLIED), POLICY, NOW) == ticket(
        TicketKind.AMOUNT_MISMATCH, Severity.HIGH, Reason.CURRENCY_MISMATCH
    )


@pytest.mark.parametrize(
    "failed",
    [payment(PaymentStatus.CANCELED), failed_payment()],
    ids=["canceled", "failed"],
)
def test_tickets_a_credited_entry_whose_payment_failed(failed: Payment) -> None:
    assert decide(failed, entry(EntryStatus.APPLIED), POLICY, NOW) == ticket(
        TicketKind.CREDITED_BUT_FAILED, Severity.CRITICAL, Reason.CREDITED_BUT_FAILED
    )


@pytest.mark.parametrize("status", IN_PROGRESS)
def test_waits_on_a_payment_credited_before_it_settled(status: PaymentStatus) -> None:
    decision = decide(payment(status), entry(EntryStatus.APPLIED), POLICY, NOW)
    assert decision == Decision(Action.WAIT, Reason.CREDITED_BEFORE_SETTLEMENT)


def test_waits_with_a_high_stuck_ticket_on_a_credited_payment_unsettled_past_the_sla() -> None:
    decision = decide(
        payment(PaymentStatus.PROCESSING), entry(EntryStatus.APPLIED, age=PAST_SLA), POLICY, NOW
    )
    assert decision == Decision(
        Action.WAIT,
        Reason.CREDITED_STUCK_PAST_SLA,
        ticket=TicketSpec(TicketKind.STUCK_PAYMENT, Severity.HIGH),
    )


def test_tickets_a_dispute_opened_after_credit() -> None:
    assert decide(payment(disputed=True), entry(EntryStatus.APPLIED), POLICY, NOW) == ticket(
        TicketKind.DISPUTE_OPENED, Severity.HIGH, Reason.DISPUTE_OPENED
    )


def test_tickets_a_refund_after_credit() -> None:
    refunded = payment(amount_refunded=250)
    assert decide(refunded, entry(EntryStatus.APPLIED), POLICY, NOW) == ticket(
        TicketKind.REFUND_AFTER_CREDIT, Severity.MEDIUM, Reason.REFUND_AFTER_CREDIT
    )


def test_a_dispute_takes_precedence_over_a_refund() -> None:
    both = payment(disputed=True, amount_refunded=250)
    decision = decide(both, entry(EntryStatus.APPLIED), POLICY, NOW)
    assert decision.reason == Reason.DISPUTE_OPENED


def test_an_amount_mismatch_takes_precedence_over_a_refund() -> None:
    both = payment(received=900, amount_refunded=250)
    decision = decide(both, entry(EntryStatus.APPLIED), POLICY, NOW)
    assert decision.reason == Reason.APPLIED_AMOUNT_DIFFERS


# --- Entry VOID ----------------------------------------------------------------------------


def test_tickets_a_succeeded_payment_whose_entry_was_voided() -> None:
    assert decide(payment(), entry(EntryStatus.VOID), POLICY, NOW) == ticket(
        TicketKind.PAID_BUT_VOIDED, Severity.CRITICAL, Reason.PAID_BUT_VOIDED
    )


def test_tickets_a_voided_partial_capture_whose_committed_part_is_short() -> None:
    voided = entry(EntryStatus.VOID, committed_amount=500, voided_amount=500)
    assert decide(payment(received=700), voided, POLICY, NOW).reason == Reason.PAID_BUT_VOIDED


def test_matches_a_voided_entry_whose_partial_capture_was_committed_first() -> None:
    voided = entry(EntryStatus.VOID, committed_amount=600, voided_amount=400)
    assert decide(payment(received=600), voided, POLICY, NOW) == Decision(
        Action.MATCHED,
        Reason.PARTIAL_CAPTURE_SETTLED,
        resolves=True,
        keeps=frozenset({TicketKind.AMOUNT_MISMATCH}),
    )


def test_a_settled_partial_capture_keeps_its_ticket_open_for_cx() -> None:
    applied = entry(EntryStatus.APPLIED, committed_amount=600, voided_amount=400)
    assert decide(payment(received=600), applied, POLICY, NOW) == Decision(
        Action.MATCHED,
        Reason.PARTIAL_CAPTURE_SETTLED,
        resolves=True,
        keeps=frozenset({TicketKind.AMOUNT_MISMATCH}),
    )


def test_a_fully_credited_payment_resolves_its_tickets() -> None:
    applied = entry(EntryStatus.APPLIED, committed_amount=1000)
    assert decide(payment(received=1000), applied, POLICY, NOW).resolves is True


@pytest.mark.parametrize(
    "failed",
    [payment(PaymentStatus.CANCELED), failed_payment()],
    ids=["canceled", "failed"],
)
def test_matches_a_voided_entry_whose_payment_failed(failed: Payment) -> None:
    assert decide(failed, entry(EntryStatus.VOID), POLICY, NOW) == Decision(
        Action.MATCHED, Reason.VOIDED_AND_FAILED, resolves=True
    )


@pytest.mark.parametrize("status", IN_PROGRESS)
def test_does_nothing_for_a_voided_entry_whose_payment_is_still_open(
    status: PaymentStatus,
) -> None:
    decision = decide(payment(status), entry(EntryStatus.VOID, age=PAST_SLA), POLICY, NOW)
    assert decision == Decision(Action.NOTHING, Reason.VOIDED_WHILE_PAYMENT_OPEN)


def test_a_credit_reversed_by_a_person_matches_a_payment_that_failed() -> None:
    reversed_ = entry(EntryStatus.APPLIED, committed_amount=1000, reversed_amount=1000)
    assert decide(failed_payment(), reversed_, POLICY, NOW) == Decision(
        Action.MATCHED, Reason.CREDIT_REVERSED, resolves=True
    )
    partly = replace(reversed_, reversed_amount=400)
    assert decide(failed_payment(), partly, POLICY, NOW).reason is Reason.CREDITED_BUT_FAILED


def test_a_refund_reversed_by_a_person_matches_and_a_further_refund_tickets_again() -> None:
    applied = entry(EntryStatus.APPLIED, committed_amount=1000, reversed_amount=300)
    refunded = replace(payment(received=1000), amount_refunded=300)
    assert decide(refunded, applied, POLICY, NOW) == Decision(
        Action.MATCHED, Reason.REFUND_REVERSED, resolves=True
    )
    more = replace(refunded, amount_refunded=500)
    assert decide(more, applied, POLICY, NOW).reason is Reason.REFUND_AFTER_CREDIT


# --- Every pair of states ------------------------------------------------------------------


def assert_invariants(decision: Decision, p: Payment | None, e: Entry | None) -> None:
    assert isinstance(decision, Decision)
    assert decision.reason in set(Reason)
    if decision.action is Action.COMMIT:
        assert e is not None
        assert e.status is EntryStatus.INFLIGHT
        assert decision.commit_amount is not None
        assert 0 < decision.commit_amount <= e.remaining
    else:
        assert decision.commit_amount is None
        assert not decision.void_remainder
    if decision.action is Action.VOID:
        assert e is not None
        assert e.status is EntryStatus.INFLIGHT
        assert e.committed_amount == 0 or p is not None and p.status is PaymentStatus.SUCCEEDED
    if decision.action is Action.CREATE:
        assert e is None
        assert p is not None
        assert decision.create is not None
        assert decision.create.reference == p.id
    else:
        assert decision.create is None
    if decision.changes_ledger:
        assert p is not None
        assert e is not None or decision.create is not None
    if decision.action is Action.TICKET:
        assert decision.ticket is not None
    if decision.action in (Action.MATCHED, Action.NOTHING):
        assert decision.ticket is None


def all_payments() -> Iterator[Payment | None]:
    yield None
    for status in PaymentStatus:
        for error in (None, DECLINED):
            for received in (0, 600, 1000, 1200):
                yield payment(status, received=received, last_payment_error=error)


def all_entries() -> Iterator[Entry | None]:
    yield None
    for status in EntryStatus:
        for committed, voided in ((0, 0), (400, 0), (1000, 0), (0, 1000), (600, 400)):
            yield entry(status, committed_amount=committed, voided_amount=voided)


@pytest.mark.parametrize("p", list(all_payments()), ids=repr)
def test_every_payment_state_against_every_entry_state_yields_a_sound_decision(
    p: Payment | None,
) -> None:
    for e, age, create_missing in itertools.product(
        all_entries(), (YOUNG, PAST_GRACE, PAST_SLA), (False, True)
    ):
        aged = e if e is None else replace(e, created_at=NOW - age)
        decision = decide(p, aged, replace(POLICY, create_missing=create_missing), NOW)
        assert_invariants(decision, p, aged)


def test_every_reason_is_reachable_and_snake_case() -> None:
    policies = [POLICY, replace(POLICY, create_missing=True)]
    payments = [
        replace(p, **extra)
        for p in all_payments()
        if p is not None
        for extra in (
            {},
            {"currency": "EUR"},
            {"disputes": (OPEN_DISPUTE,)},
            {"disputes": (replace(OPEN_DISPUTE, evidence_due_by=NOW + timedelta(days=1)),)},
            {"disputes": (replace(OPEN_DISPUTE, status=DisputeStatus.UNDER_REVIEW),)},
            {"disputes": (replace(OPEN_DISPUTE, status=DisputeStatus.LOST),)},
            {"fraud_warnings": (FraudWarning("issfr_1", "made_with_stolen_card"),)},
            {"amount_refunded": 100},
            {"metadata": {"ledger_destination": "bal_c"}},
            {"amount_received": None},
            {"status": None},
            {"problems": ("payment_intent.amount_received: expected an integer, got True",)},
            {"amount_refunded": None, "metadata": {"ledger_destination": "bal_c"}},
            {"created": NOW - timedelta(days=6)},
        )
    ]
    entries = [
        *all_entries(),
        entry(committed_amount=800, voided_amount=800),
        entry(EntryStatus.APPLIED, committed_amount=1000, reversed_amount=1000),
        entry(EntryStatus.APPLIED, committed_amount=1000, reversed_amount=100),
    ]
    seen = {
        decide(p, e if e is None else replace(e, created_at=NOW - age), policy, NOW).reason
        for p in [None, *payments]
        for e in entries
        for age in (YOUNG, PAST_GRACE, PAST_SLA)
        for policy in policies
    }
    assert seen == set(Reason)
    assert all(r.value.isidentifier() and r.value == r.value.lower() for r in Reason)


# --- Properties ----------------------------------------------------------------------------

amounts = st.integers(min_value=0, max_value=3000)
ages = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=5))

payments = st.builds(
    Payment,
    id=st.just("pi_1"),
    status=st.sampled_from(PaymentStatus),
    amount=amounts,
    amount_received=amounts,
    currency=st.sampled_from(["USD", "EUR"]),
    created=st.just(NOW - timedelta(days=6)),
    last_payment_error=st.sampled_from([None, DECLINED]),
    amount_refunded=st.sampled_from([0, 100, None]),
    disputes=st.sampled_from([(), (OPEN_DISPUTE,), None]),
    metadata=st.sampled_from([{}, {"ledger_destination": "bal_c"}]),
)
entries = st.builds(
    Entry,
    reference=st.just("pi_1"),
    status=st.sampled_from(EntryStatus),
    amount=amounts,
    currency=st.sampled_from(["USD", "EUR"]),
    created_at=ages.map(lambda age: NOW - age),
    committed_amount=amounts,
    voided_amount=amounts,
)
policies = st.builds(
    Policy,
    failed_grace=ages,
    processing_sla=ages,
    create_missing=st.booleans(),
)


@given(st.none() | payments, st.none() | entries, policies)
def test_any_decision_keeps_the_invariants(
    p: Payment | None, e: Entry | None, policy: Policy
) -> None:
    assert_invariants(decide(p, e, policy, NOW), p, e)


@given(payments, entries, policies)
def test_a_commit_never_commits_and_voids_more_than_the_entry_amount(
    p: Payment, e: Entry, policy: Policy
) -> None:
    decision = decide(p, e, policy, NOW)
    if decision.commit_amount is not None:
        voided_now = e.remaining - decision.commit_amount if decision.void_remainder else 0
        assert e.committed_amount + decision.commit_amount + e.voided_amount + voided_now <= (
            e.amount
        )
        assert e.committed_amount + decision.commit_amount == p.amount_received


@given(st.none() | payments, st.none() | entries, policies)
def test_decide_is_deterministic(p: Payment | None, e: Entry | None, policy: Policy) -> None:
    assert decide(p, e, policy, NOW) == decide(p, e, policy, NOW)


@given(payments, entries, policies, ages)
def test_a_void_stays_a_void_as_time_passes(
    p: Payment, e: Entry, policy: Policy, later: timedelta
) -> None:
    if decide(p, e, policy, NOW).action is Action.VOID:
        assert decide(p, e, policy, NOW + later).action is Action.VOID


@given(payments, entries, policies, ages)
def test_a_stuck_ticket_stays_raised_as_time_passes(
    p: Payment, e: Entry, policy: Policy, later: timedelta
) -> None:
    before = decide(p, e, policy, NOW)
    if before.ticket is not None and before.ticket.kind is TicketKind.STUCK_PAYMENT:
        assert decide(p, e, policy, NOW + later) == before


@given(payments, policies)
def test_a_payment_without_a_record_changes_the_ledger_only_by_creating_it(
    p: Payment, policy: Policy
) -> None:
    decision = decide(p, None, policy, NOW)
    assert decision.action in (Action.CREATE, Action.TICKET, Action.NOTHING)
    if decision.action is Action.CREATE:
        assert policy.create_missing
        assert p.status is PaymentStatus.SUCCEEDED
