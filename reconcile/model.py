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


@dataclass(frozen=True)
class Payment:
    """What Stripe says about one PaymentIntent (a small frozen view of it)."""

    id: str
    status: PaymentStatus
    amount: int
    amount_received: int
    currency: str
    created: datetime
    last_payment_error: str | None = None
    amount_refunded: int = 0
    disputed: bool = False
    amount_disputed: int = 0
    customer: str | None = None
    customer_email: str | None = None
    livemode: bool = False
    customer_name: str | None = None  # the charge's billing name, for the customer index
    metadata: Mapping[str, str] = field(default_factory=dict)


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


@dataclass(frozen=True)
class Policy:
    """Knobs of the decision table (RECON_FAILED_GRACE, RECON_PROCESSING_SLA, ...)."""

    failed_grace: timedelta = timedelta(hours=1)
    processing_sla: timedelta = timedelta(hours=24)
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
    # ``ticket``'s kind) close themselves.
    resolves: bool = False

    @property
    def changes_ledger(self) -> bool:
        return self.action in (Action.COMMIT, Action.VOID, Action.CREATE)
