"""Value types of the decision core.

Standard library only: ``decide`` and everything it takes must stay importable without
I/O, a clock or a logger (tests/unit/test_purity.py enforces it).  Amounts are integer
minor units; currencies are upper-case ISO 4217 codes (Stripe sends lower case, the views
normalise at the edge).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta


class PaymentStatus(enum.StrEnum):
    """A Stripe PaymentIntent's status."""

    REQUIRES_PAYMENT_METHOD = "requires_payment_method"
    REQUIRES_CONFIRMATION = "requires_confirmation"
    REQUIRES_ACTION = "requires_action"
    PROCESSING = "processing"
    REQUIRES_CAPTURE = "requires_capture"
    CANCELED = "canceled"
    SUCCEEDED = "succeeded"

    @property
    def terminal(self) -> bool:
        # Only these two never change again on Stripe's side; a webhook carrying one of
        # them is authoritative, any other status may already be stale when it arrives.
        return self in (PaymentStatus.SUCCEEDED, PaymentStatus.CANCELED)


class DisputeStatus(enum.StrEnum):
    """A Dispute's status on Stripe (``warning_*`` are inquiries, before any chargeback)."""

    WARNING_NEEDS_RESPONSE = "warning_needs_response"
    WARNING_UNDER_REVIEW = "warning_under_review"
    WARNING_CLOSED = "warning_closed"
    NEEDS_RESPONSE = "needs_response"
    UNDER_REVIEW = "under_review"
    APPEAL_NEEDS_RESPONSE = "appeal_needs_response"
    APPEAL_UNDER_REVIEW = "appeal_under_review"
    WON = "won"
    LOST = "lost"
    PREVENTED = "prevented"


# Over for good: an inquiry that closed, a dispute won, lost, or prevented before it began.
_CLOSED_DISPUTES = frozenset(
    {DisputeStatus.WARNING_CLOSED, DisputeStatus.WON, DisputeStatus.LOST, DisputeStatus.PREVENTED}
)
_AWAITING_EVIDENCE = frozenset(
    {
        DisputeStatus.WARNING_NEEDS_RESPONSE,
        DisputeStatus.NEEDS_RESPONSE,
        DisputeStatus.APPEAL_NEEDS_RESPONSE,
    }
)


@dataclass(frozen=True)
class Dispute:
    """One Dispute of a payment's charge.  ``status`` None: a status this build does not know,
    treated as open (a person looks)."""

    id: str
    status: DisputeStatus | None
    amount: int | None = None
    currency: str | None = None
    reason: str | None = None
    evidence_due_by: datetime | None = None

    @property
    def open(self) -> bool:
        return self.status not in _CLOSED_DISPUTES

    @property
    def awaiting_evidence(self) -> bool:
        return self.status in _AWAITING_EVIDENCE


@dataclass(frozen=True)
class FraudWarning:
    """A Radar early fraud warning on the payment's charge."""

    id: str
    fraud_type: str | None = None
    actionable: bool | None = None


@dataclass(frozen=True)
class Payment:
    """What Stripe says about one PaymentIntent (a small frozen view of it).

    Absent is unknown, never zero: a field Stripe did not send (an older API version, an
    event payload, an emulator) is None, and ``decide`` moves no money on it.  Fields that
    were sent but malformed (wrong JSON type, out of range, not an ISO currency) are None
    too, and ``problems`` says what was wrong with them.

    Refunds, disputes and fraud warnings live on the charge and on objects of their own; an
    event payload never carries them (``expand`` does not apply to events), so there they
    are None: unknown, which is not "none".
    """

    id: str
    status: PaymentStatus | None
    amount: int | None
    amount_received: int | None
    currency: str | None
    created: datetime | None
    last_payment_error: str | None = None
    # The latest charge failed (``latest_charge.status == "failed"``): a failed attempt even
    # after Stripe cleared ``last_payment_error`` on a later update of the PaymentIntent.
    charge_failed: bool = False
    charge_failure_code: str | None = None
    # Money refunded to the customer (never the uncaptured remainder that API versions
    # before 2025-03-31 also record as a refund); None: unknown.
    amount_refunded: int | None = None
    disputes: tuple[Dispute, ...] | None = None
    fraud_warnings: tuple[FraudWarning, ...] | None = None
    payment_method_type: str | None = None
    # When an authorised, uncaptured payment is cancelled by Stripe unless captured.
    capture_before: datetime | None = None
    customer: str | None = None
    customer_email: str | None = None
    livemode: bool = False
    customer_name: str | None = None  # the charge's billing name, for the customer index
    metadata: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def disputed(self) -> bool:
        """A dispute is open or was lost (known from the Dispute objects)."""
        return any(d.open or d.status is DisputeStatus.LOST for d in self.disputes or ())

    @property
    def aftermath_known(self) -> bool:
        """Refunds and disputes were read (an expanded charge), not merely absent."""
        return self.amount_refunded is not None and self.disputes is not None


class EntryStatus(enum.StrEnum):
    INFLIGHT = "INFLIGHT"
    APPLIED = "APPLIED"
    VOID = "VOID"


@dataclass(frozen=True)
class Entry:
    """What the ledger holds for one payment."""

    reference: str
    status: EntryStatus
    amount: int
    currency: str
    created_at: datetime
    committed_amount: int = 0
    voided_amount: int = 0
    source: str = ""
    destination: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Taken back from the customer by a reversal linked to this payment (a person's fix for
    # a refund or a failed payment that had been credited).
    reversed_amount: int = 0

    @property
    def remaining(self) -> int:
        return self.amount - self.committed_amount - self.voided_amount


DEFAULT_SLA_BY_METHOD: Mapping[str, timedelta] = {
    "us_bank_account": timedelta(days=7),
    "sepa_debit": timedelta(days=15),
    "bacs_debit": timedelta(days=7),
    "au_becs_debit": timedelta(days=7),
    "acss_debit": timedelta(days=8),
}


@dataclass(frozen=True)
class Policy:
    """Knobs of the decision table (RECON_FAILED_GRACE, RECON_PROCESSING_SLA, ...)."""

    failed_grace: timedelta = timedelta(hours=1)
    processing_sla: timedelta = timedelta(hours=24)
    # Bank debits take days to settle (ACH debit up to 4 business days, SEPA Direct Debit up
    # to 14 days): a card's SLA would flood CX and trip the blast-radius guard with them.
    processing_sla_by_method: Mapping[str, timedelta] = field(
        default_factory=lambda: dict(DEFAULT_SLA_BY_METHOD)
    )
    # Stripe cancels an authorised, uncaptured card payment after 7 days unless captured;
    # the merchant must act before that, so it is ticketed this long before the deadline.
    capture_window: timedelta = timedelta(days=7)
    capture_warning: timedelta = timedelta(days=2)
    # A dispute whose evidence is due within this long is critical.
    dispute_urgent: timedelta = timedelta(days=3)
    create_missing: bool = False
    # Metadata keys on the PaymentIntent that name the ledger balances for a record that
    # ``create_missing`` creates; without a destination the record cannot be created.
    destination_key: str = "ledger_destination"
    source_key: str = "ledger_source"
    default_source: str = "@stripe"


class Action(enum.StrEnum):
    COMMIT = "commit"  # commit ``commit_amount``; void the rest when ``void_remainder``
    VOID = "void"
    WAIT = "wait"
    MATCHED = "matched"  # ledger already agrees with Stripe
    CREATE = "create"  # create the missing record APPLIED (policy ``create_missing``)
    TICKET = "ticket"  # no ledger change; a person must look
    NOTHING = "nothing"


class TicketKind(enum.StrEnum):
    AMOUNT_MISMATCH = "amount_mismatch"
    STUCK_PAYMENT = "stuck_payment"
    UNKNOWN_PAYMENT = "unknown_payment"
    MISSING_RECORD = "missing_record"
    CREDITED_BUT_FAILED = "credited_but_failed"
    PAID_BUT_VOIDED = "paid_but_voided"
    REFUND_AFTER_CREDIT = "refund_after_credit"
    DISPUTE_OPENED = "dispute_opened"
    FRAUD_WARNING = "fraud_warning"
    # Stripe's data for the payment lacks a field the decision needs, or carries one that
    # is malformed: nothing was changed, a person looks.
    UNVERIFIABLE_PAYMENT = "unverifiable_payment"
    # A second ledger entry linked to a PaymentIntent that already has its own: never
    # committed or voided automatically (the payment credits once, through its own entry).
    DUPLICATE_ENTRY = "duplicate_entry"
    INCIDENT = "incident"


class Severity(enum.IntEnum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class TicketSpec:
    kind: TicketKind
    severity: Severity


@dataclass(frozen=True)
class CreateSpec:
    """The record ``create_missing`` writes: APPLIED from ``source`` to ``destination``."""

    reference: str
    amount: int
    currency: str
    source: str
    destination: str


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    commit_amount: int | None = None
    void_remainder: bool = False
    ticket: TicketSpec | None = None
    create: CreateSpec | None = None
    # True when this pass finds the payment reconciled: open tickets for it (other than
    # ``ticket``'s kind and ``keeps``) close themselves.
    resolves: bool = False
    # Kinds this decision could not judge (their evidence was not read): left open.
    keeps: frozenset[TicketKind] = frozenset()

    @property
    def changes_ledger(self) -> bool:
        return self.action in (Action.COMMIT, Action.VOID, Action.CREATE)
