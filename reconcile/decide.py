"""The decision core: what the ledger must do about one payment.

``decide(payment, entry, policy, now)`` is a pure function of what Stripe says, what the
ledger holds, the policy and the time it is given.  It reads no clock, does no I/O, logs
nothing and raises nothing for a business outcome (tests/unit/test_purity.py enforces the
imports).  Everything that acts on a ``Decision`` lives elsewhere.

``Decision.reason`` is always a :class:`Reason`.  Audit rows, metrics labels and tickets
store these strings, so they are stable: add new members, never rename a value.

Evidence rules, above the table (DESIGN.md):

- Absent is unknown, never zero.  A succeeded payment whose received amount or currency is
  unknown, a payment whose status is unknown, or one whose data was malformed
  (``Payment.problems``) gets an ``unverifiable_payment`` ticket and no ledger change.
- Refunds, disputes and fraud warnings are known only from an expanded charge and their own
  objects; an event payload never carries them.  A decision taken without them may still
  commit or void (a terminal status is authoritative), but it neither opens nor closes the
  tickets that depend on them (``Decision.keeps``), and it never creates a missing record.
- A failed attempt shows as ``last_payment_error`` or as a failed latest charge (Stripe
  clears ``last_payment_error`` when the PaymentIntent is updated for any reason).

Choices the design table leaves open, and why:

- "Credited" means the customer's balance already holds money for this payment: the entry
  is APPLIED, or it has a partial commit whatever its status.  A credited entry whose
  payment failed or was canceled is ``credited_but_failed`` (critical) at once, with no
  grace period, because the credit exists now; a later success resolves the ticket.
- Credited while the payment is still in progress (``processing``, ``requires_action``...)
  means the money was credited before it arrived.  Nothing in the ledger can be undone, and
  Stripe may still deliver, so the answer is WAIT; past the SLA it carries a
  ``stuck_payment`` ticket of HIGH severity (higher than an uncredited stuck payment,
  because here the balance already holds money Stripe has not delivered).
- The SLA depends on the payment method: bank debits take days (``Policy``).
- ``requires_capture`` waits on the merchant, not the bank: it is ticketed (high) before
  Stripe's automatic cancel of the authorisation, not by the processing SLA.
- A VOID entry with nothing credited whose payment is still in progress: NOTHING.  The
  ledger has let go; if the payment later succeeds, that pass finds ``paid_but_voided``.
- A payment refunded or disputed while its entry is still INFLIGHT is committed anyway (the
  money did arrive), and the decision carries the refund/dispute ticket, so that the
  person who might post a reversal hears about it in the same pass.
- ``create_missing`` never creates a record for a refunded, disputed or fraud-warned
  payment: crediting money that may leave again needs a person.
- A VOID entry that was partly committed before the rest was voided (a partial capture,
  settled) agrees with Stripe when the committed part equals the amount received.
- A dispute's ticket follows its status: awaiting evidence is high, critical when the
  evidence is due within ``dispute_urgent``; under review is medium; lost is high (the
  money was withdrawn); won, prevented or an inquiry closed is over and resolves it.
- Ticket precedence for a credited, succeeded payment: dispute (an evidence deadline runs),
  then fraud warning, then amount/currency mismatch, then refund, then MATCHED.
- Ages compare strictly: an entry exactly ``failed_grace`` old is still within grace.
- Amounts are compared as given; currencies are compared exactly, because the views
  normalise them to upper case at the edge.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

from reconcile.model import (
    Action,
    CreateSpec,
    Decision,
    DisputeStatus,
    Entry,
    EntryStatus,
    Payment,
    PaymentStatus,
    Policy,
    Severity,
    TicketKind,
    TicketSpec,
)

__all__ = ["AFTERMATH_KINDS", "Reason", "decide", "failed_attempt", "missing_record", "sla_for"]


class Reason(enum.StrEnum):
    """Every value ``Decision.reason`` takes (action in brackets)."""

    # Stripe has no such PaymentIntent.
    NO_PAYMENT_NO_ENTRY = "no_payment_no_entry"  # [nothing]
    NOT_FOUND_INFLIGHT = "not_found_inflight"  # [ticket unknown_payment high]
    NOT_FOUND_APPLIED = "not_found_applied"  # [ticket unknown_payment high]
    NOT_FOUND_VOIDED = "not_found_voided"  # [nothing]

    # What Stripe sent cannot be trusted to move money.
    EVIDENCE_MISSING = "evidence_missing"  # [ticket unverifiable_payment high]
    EVIDENCE_MALFORMED = "evidence_malformed"  # [ticket unverifiable_payment high]

    # The ledger has no record of the payment.
    NOT_SUCCEEDED_NO_RECORD = "not_succeeded_no_record"  # [nothing]
    MISSING_RECORD = "missing_record"  # [ticket missing_record high]
    MISSING_RECORD_NO_DESTINATION = "missing_record_no_destination"  # [ticket, same]
    MISSING_RECORD_REVERSED = "missing_record_refunded_or_disputed"  # [ticket, same]
    MISSING_RECORD_UNVERIFIED = "missing_record_aftermath_unknown"  # [ticket, same]
    CREATE_MISSING_RECORD = "create_missing_record"  # [create]

    # Succeeded, entry INFLIGHT.
    SUCCEEDED_AMOUNT_MATCHES = "succeeded_amount_matches"  # [commit]
    PARTIAL_CAPTURE = "partial_capture"  # [commit + void rest, ticket amount_mismatch low]
    PARTIAL_CAPTURE_VOID_REMAINDER = "partial_capture_void_remainder"  # [void, same ticket]
    ALREADY_COMMITTED = "already_committed"  # [matched]
    RECEIVED_EXCEEDS_INFLIGHT = "received_exceeds_inflight"  # [ticket amount_mismatch high]
    RECEIVED_EXCEEDS_REMAINING = "received_exceeds_remaining"  # [ticket amount_mismatch high]
    COMMITTED_EXCEEDS_RECEIVED = "committed_exceeds_received"  # [ticket amount_mismatch high]
    LEDGER_OVERALLOCATED = "ledger_overallocated"  # [ticket amount_mismatch high]

    # Succeeded, either entry status.
    CURRENCY_MISMATCH = "currency_mismatch"  # [ticket amount_mismatch high]

    # Not succeeded, entry INFLIGHT with nothing credited.
    CANCELED = "canceled"  # [void]
    FAILED_PAST_GRACE = "failed_past_grace"  # [void]
    FAILED_WITHIN_GRACE = "failed_within_grace"  # [wait]
    IN_PROGRESS = "in_progress"  # [wait]
    STUCK_PAST_SLA = "stuck_past_sla"  # [wait, ticket stuck_payment medium or low]
    CAPTURE_DEADLINE_NEAR = "capture_deadline_near"  # [wait, ticket stuck_payment high]

    # Entry credited (APPLIED, or partly committed).
    APPLIED_AMOUNT_MATCHES = "applied_amount_matches"  # [matched]
    APPLIED_AMOUNT_DIFFERS = "applied_amount_differs"  # [ticket amount_mismatch high]
    DISPUTE_OPENED = "dispute_opened"  # [ticket dispute_opened high]
    DISPUTE_EVIDENCE_DUE = "dispute_evidence_due"  # [ticket dispute_opened critical]
    DISPUTE_UNDER_REVIEW = "dispute_under_review"  # [ticket dispute_opened medium]
    DISPUTE_LOST = "dispute_lost"  # [ticket dispute_opened high]
    FRAUD_WARNING = "fraud_warning"  # [ticket fraud_warning high]
    REFUND_AFTER_CREDIT = "refund_after_credit"  # [ticket refund_after_credit medium]
    CREDITED_BUT_FAILED = "credited_but_failed"  # [ticket credited_but_failed critical]
    CREDITED_BEFORE_SETTLEMENT = "credited_before_settlement"  # [wait]
    CREDITED_STUCK_PAST_SLA = "credited_stuck_past_sla"  # [wait, ticket stuck_payment high]

    # A person reversed the credit (``Entry.reversed_amount``): the books agree again.
    CREDIT_REVERSED = "credit_reversed"  # [matched]
    REFUND_REVERSED = "refund_reversed"  # [matched]

    # Entry VOID.
    PAID_BUT_VOIDED = "paid_but_voided"  # [ticket paid_but_voided critical]
    PARTIAL_CAPTURE_SETTLED = "partial_capture_settled"  # [matched]
    VOIDED_AND_FAILED = "voided_and_failed"  # [matched]
    VOIDED_WHILE_PAYMENT_OPEN = "voided_while_payment_open"  # [nothing]


# Tickets whose evidence is the charge's aftermath (refunds, disputes, fraud warnings): a
# decision that did not read it can neither open nor close them.
AFTERMATH_KINDS = frozenset(
    {TicketKind.REFUND_AFTER_CREDIT, TicketKind.DISPUTE_OPENED, TicketKind.FRAUD_WARNING}
)


def decide(payment: Payment | None, entry: Entry | None, policy: Policy, now: datetime) -> Decision:
    """What the ledger must do about one payment; see the module docstring and DESIGN.md."""
    if payment is None:
        return _not_found(entry)
    gap = _evidence_gap(payment, entry)
    if gap is not None:
        return gap
    if entry is None:
        return _no_record(payment, policy)
    if payment.status is PaymentStatus.SUCCEEDED:
        return _succeeded(payment, entry, policy, now)
    if entry.status is EntryStatus.APPLIED or entry.committed_amount > 0:
        return _credited_unpaid(payment, entry, policy, now)
    if entry.status is EntryStatus.VOID:
        if failed_attempt(payment):
            return Decision(Action.MATCHED, Reason.VOIDED_AND_FAILED, resolves=True)
        return Decision(Action.NOTHING, Reason.VOIDED_WHILE_PAYMENT_OPEN)
    return _inflight_unpaid(payment, entry, policy, now)


def _not_found(entry: Entry | None) -> Decision:
    if entry is None:
        return Decision(Action.NOTHING, Reason.NO_PAYMENT_NO_ENTRY)
    if entry.status is EntryStatus.INFLIGHT:
        return _ticket(TicketKind.UNKNOWN_PAYMENT, Severity.HIGH, Reason.NOT_FOUND_INFLIGHT)
    if entry.status is EntryStatus.APPLIED:
        return _ticket(TicketKind.UNKNOWN_PAYMENT, Severity.HIGH, Reason.NOT_FOUND_APPLIED)
    return Decision(Action.NOTHING, Reason.NOT_FOUND_VOIDED)


def _evidence_gap(payment: Payment, entry: Entry | None) -> Decision | None:
    """A ticket when what Stripe sent cannot support a decision, else None."""
    settled_elsewhere = payment.status is not None and payment.status is not PaymentStatus.SUCCEEDED
    if entry is None and settled_elsewhere:
        # Nothing to do whatever the rest says: no record, and no money arrived.
        return None
    if payment.problems:
        return _ticket(TicketKind.UNVERIFIABLE_PAYMENT, Severity.HIGH, Reason.EVIDENCE_MALFORMED)
    if payment.status is None:
        return _ticket(TicketKind.UNVERIFIABLE_PAYMENT, Severity.HIGH, Reason.EVIDENCE_MISSING)
    if payment.status is PaymentStatus.SUCCEEDED and (
        payment.amount_received is None or payment.currency is None
    ):
        return _ticket(TicketKind.UNVERIFIABLE_PAYMENT, Severity.HIGH, Reason.EVIDENCE_MISSING)
    return None


def _no_record(payment: Payment, policy: Policy) -> Decision:
    if payment.status is not PaymentStatus.SUCCEEDED:
        return Decision(Action.NOTHING, Reason.NOT_SUCCEEDED_NO_RECORD)
    if not policy.create_missing:
        return _missing(Reason.MISSING_RECORD)
    if not payment.aftermath_known:
        # Only an expanded charge says whether the money has left again; a payload never
        # does.  The use case re-reads before it gets here; this is the floor under it.
        return _missing(Reason.MISSING_RECORD_UNVERIFIED)
    if payment.disputed or payment.amount_refunded or payment.fraud_warnings:
        return _missing(Reason.MISSING_RECORD_REVERSED)
    destination = payment.metadata.get(policy.destination_key)
    if not destination:
        return _missing(Reason.MISSING_RECORD_NO_DESTINATION)
    spec = missing_record(payment, destination, policy)
    return Decision(Action.CREATE, Reason.CREATE_MISSING_RECORD, create=spec, resolves=True)


def missing_record(payment: Payment, destination: str, policy: Policy) -> CreateSpec:
    """The APPLIED record that credits a paid, unrecorded payment to ``destination``.

    Only for a payment whose received amount and currency are known (``decide`` and the
    fix checks never get here otherwise)."""
    assert payment.amount_received is not None and payment.currency is not None
    return CreateSpec(
        reference=payment.id,
        amount=payment.amount_received,
        currency=payment.currency,
        source=payment.metadata.get(policy.source_key) or policy.default_source,
        destination=destination,
    )


def _succeeded(payment: Payment, entry: Entry, policy: Policy, now: datetime) -> Decision:
    if entry.status is EntryStatus.INFLIGHT:
        return _commit(payment, entry, policy, now)
    if entry.status is EntryStatus.APPLIED:
        settled = Reason.PARTIAL_CAPTURE_SETTLED if entry.voided_amount else None
        return _settled(payment, entry, settled or Reason.APPLIED_AMOUNT_MATCHES, policy, now)
    if (
        entry.committed_amount > 0
        and payment.currency == entry.currency
        and payment.amount_received == entry.committed_amount
    ):
        return _settled(payment, entry, Reason.PARTIAL_CAPTURE_SETTLED, policy, now)
    return _ticket(TicketKind.PAID_BUT_VOIDED, Severity.CRITICAL, Reason.PAID_BUT_VOIDED)


def _unseen(payment: Payment) -> frozenset[TicketKind]:
    """Ticket kinds this payment's evidence cannot judge."""
    unseen: set[TicketKind] = set()
    if payment.amount_refunded is None:
        unseen.add(TicketKind.REFUND_AFTER_CREDIT)
    if payment.disputes is None:
        unseen.add(TicketKind.DISPUTE_OPENED)
    if payment.fraud_warnings is None:
        unseen.add(TicketKind.FRAUD_WARNING)
    return frozenset(unseen)


def _commit(payment: Payment, entry: Entry, policy: Policy, now: datetime) -> Decision:
    received = payment.amount_received
    assert received is not None  # _evidence_gap
    if entry.remaining < 0:
        return _mismatch(Reason.LEDGER_OVERALLOCATED)
    if payment.currency != entry.currency:
        return _mismatch(Reason.CURRENCY_MISMATCH)
    if received > entry.amount:
        return _mismatch(Reason.RECEIVED_EXCEEDS_INFLIGHT)
    to_commit = received - entry.committed_amount
    if to_commit < 0:
        return _mismatch(Reason.COMMITTED_EXCEEDS_RECEIVED)
    if to_commit > entry.remaining:
        # Part of the hold was voided, yet the money for it arrived.
        return _mismatch(Reason.RECEIVED_EXCEEDS_REMAINING)
    partial = received < entry.amount
    follow_up = _follow_up(payment, policy, now, partial=partial)
    keeps = _unseen(payment)
    if to_commit == 0:
        if entry.remaining == 0:
            # Fully settled already; the entry's status has not caught up.
            return _settled(payment, entry, Reason.ALREADY_COMMITTED, policy, now)
        # The received part is committed; only the uncaptured rest is left to release.
        return Decision(
            Action.VOID,
            Reason.PARTIAL_CAPTURE_VOID_REMAINDER,
            ticket=follow_up,
            resolves=True,
            keeps=keeps,
        )
    return Decision(
        Action.COMMIT,
        Reason.PARTIAL_CAPTURE if partial else Reason.SUCCEEDED_AMOUNT_MATCHES,
        commit_amount=to_commit,
        void_remainder=entry.remaining > to_commit,
        ticket=follow_up,
        resolves=True,
        keeps=keeps,
    )


def _settled(
    payment: Payment, entry: Entry, matched: Reason, policy: Policy, now: datetime
) -> Decision:
    """A succeeded payment whose entry holds its final credit (``committed_amount``)."""
    aftermath = _aftermath(payment, policy, now)
    if aftermath is not None:
        spec, reason = aftermath
        return Decision(Action.TICKET, reason, ticket=spec)
    if payment.currency != entry.currency:
        return _mismatch(Reason.CURRENCY_MISMATCH)
    if payment.amount_received != entry.committed_amount:
        return _mismatch(Reason.APPLIED_AMOUNT_DIFFERS)
    refunded = payment.amount_refunded
    if refunded and refunded > entry.reversed_amount:
        return _ticket(TicketKind.REFUND_AFTER_CREDIT, Severity.MEDIUM, Reason.REFUND_AFTER_CREDIT)
    keeps = _unseen(payment)
    if refunded:
        # Refunded, and a person reversed the credit for it: the books agree again.
        return Decision(Action.MATCHED, Reason.REFUND_REVERSED, resolves=True, keeps=keeps)
    if matched is Reason.PARTIAL_CAPTURE_SETTLED:
        # A settled partial capture keeps its low amount_mismatch ticket open: it is CX's cue
        # to tell the customer they were credited less than they asked for.
        keeps |= {TicketKind.AMOUNT_MISMATCH}
    return Decision(Action.MATCHED, matched, resolves=True, keeps=keeps)


def _aftermath(payment: Payment, policy: Policy, now: datetime) -> tuple[TicketSpec, Reason] | None:
    """The dispute or fraud-warning ticket a credited payment needs, most urgent first."""
    worst: tuple[TicketSpec, Reason] | None = None
    for dispute in payment.disputes or ():
        if dispute.open:
            if dispute.awaiting_evidence:
                due = dispute.evidence_due_by
                if due is not None and due - now <= policy.dispute_urgent:
                    found = (Severity.CRITICAL, Reason.DISPUTE_EVIDENCE_DUE)
                else:
                    found = (Severity.HIGH, Reason.DISPUTE_OPENED)
            elif dispute.status is None:
                found = (Severity.HIGH, Reason.DISPUTE_OPENED)
            else:
                found = (Severity.MEDIUM, Reason.DISPUTE_UNDER_REVIEW)
        elif dispute.status is DisputeStatus.LOST:
            found = (Severity.HIGH, Reason.DISPUTE_LOST)
        else:
            continue
        spec = TicketSpec(TicketKind.DISPUTE_OPENED, found[0])
        if worst is None or spec.severity > worst[0].severity:
            worst = (spec, found[1])
    if worst is not None:
        return worst
    if payment.fraud_warnings:
        return TicketSpec(TicketKind.FRAUD_WARNING, Severity.HIGH), Reason.FRAUD_WARNING
    return None


def _credited_unpaid(payment: Payment, entry: Entry, policy: Policy, now: datetime) -> Decision:
    if failed_attempt(payment):
        if entry.reversed_amount >= entry.committed_amount:
            return Decision(Action.MATCHED, Reason.CREDIT_REVERSED, resolves=True)
        return _ticket(
            TicketKind.CREDITED_BUT_FAILED, Severity.CRITICAL, Reason.CREDITED_BUT_FAILED
        )
    if now - entry.created_at > sla_for(payment, policy):
        return Decision(
            Action.WAIT,
            Reason.CREDITED_STUCK_PAST_SLA,
            ticket=TicketSpec(TicketKind.STUCK_PAYMENT, Severity.HIGH),
        )
    return Decision(Action.WAIT, Reason.CREDITED_BEFORE_SETTLEMENT)


def _inflight_unpaid(payment: Payment, entry: Entry, policy: Policy, now: datetime) -> Decision:
    if payment.status is PaymentStatus.CANCELED:
        return Decision(Action.VOID, Reason.CANCELED, resolves=True, keeps=_unseen(payment))
    age = now - entry.created_at
    if failed_attempt(payment):
        if age > policy.failed_grace:
            return Decision(
                Action.VOID, Reason.FAILED_PAST_GRACE, resolves=True, keeps=_unseen(payment)
            )
        return Decision(Action.WAIT, Reason.FAILED_WITHIN_GRACE)
    if payment.status is PaymentStatus.REQUIRES_CAPTURE:
        # Waits on the merchant's capture, not on the bank: what matters is Stripe's
        # automatic cancel of the authorisation, not how long banks take.
        authorised = payment.created or entry.created_at
        deadline = payment.capture_before or authorised + policy.capture_window
        if now >= deadline - policy.capture_warning:
            return Decision(
                Action.WAIT,
                Reason.CAPTURE_DEADLINE_NEAR,
                ticket=TicketSpec(TicketKind.STUCK_PAYMENT, Severity.HIGH),
            )
        return Decision(Action.WAIT, Reason.IN_PROGRESS)
    if age > sla_for(payment, policy):
        severity = Severity.MEDIUM if payment.status is PaymentStatus.PROCESSING else Severity.LOW
        return Decision(
            Action.WAIT,
            Reason.STUCK_PAST_SLA,
            ticket=TicketSpec(TicketKind.STUCK_PAYMENT, severity),
        )
    return Decision(Action.WAIT, Reason.IN_PROGRESS)


def sla_for(payment: Payment, policy: Policy) -> timedelta:
    """How long this payment may take to settle before a person should look."""
    method = payment.payment_method_type
    if method is None:
        return policy.processing_sla
    return policy.processing_sla_by_method.get(method, policy.processing_sla)


def failed_attempt(payment: Payment) -> bool:
    """The payment was tried and did not go through, or was canceled."""
    # requires_payment_method is also the state of a payment nobody has tried to pay yet;
    # only a recorded error or a failed charge makes it a failure.
    return payment.status is PaymentStatus.CANCELED or (
        payment.status is PaymentStatus.REQUIRES_PAYMENT_METHOD
        and (bool(payment.last_payment_error) or payment.charge_failed)
    )


def _follow_up(
    payment: Payment, policy: Policy, now: datetime, *, partial: bool
) -> TicketSpec | None:
    """The ticket a commit carries: the most severe thing a person must still look at."""
    aftermath = _aftermath(payment, policy, now)
    if aftermath is not None:
        return aftermath[0]
    if payment.amount_refunded:
        return TicketSpec(TicketKind.REFUND_AFTER_CREDIT, Severity.MEDIUM)
    if partial:
        return TicketSpec(TicketKind.AMOUNT_MISMATCH, Severity.LOW)
    return None


def _ticket(kind: TicketKind, severity: Severity, reason: Reason) -> Decision:
    return Decision(Action.TICKET, reason, ticket=TicketSpec(kind, severity))


def _mismatch(reason: Reason) -> Decision:
    return _ticket(TicketKind.AMOUNT_MISMATCH, Severity.HIGH, reason)


def _missing(reason: Reason) -> Decision:
    return _ticket(TicketKind.MISSING_RECORD, Severity.HIGH, reason)
