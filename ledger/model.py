"""Values the ledger hands out.  Frozen: a caller never mutates the books by accident."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger.errors import LedgerError
from ledger.money import Money


class TxnStatus(enum.StrEnum):
    INFLIGHT = "INFLIGHT"
    APPLIED = "APPLIED"
    VOID = "VOID"


@dataclass(frozen=True)
class Transaction:
    id: str
    reference: str
    source: str
    destination: str
    amount: int
    currency: str
    status: TxnStatus
    committed_amount: int
    voided_amount: int
    created_at: datetime
    metadata: Mapping[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def remaining(self) -> int:
        return self.amount - self.committed_amount - self.voided_amount

    @property
    def money(self) -> Money:
        return Money(self.amount, self.currency)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reference": self.reference,
            "status": self.status.value,
            "amount": self.amount,
            "committed_amount": self.committed_amount,
            "voided_amount": self.voided_amount,
            "remaining_amount": self.remaining,
            "currency": self.currency,
            "source": self.source,
            "destination": self.destination,
            "metadata": dict(self.metadata),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


@dataclass(frozen=True)
class Balance:
    """One balance in one currency.  An indicator (``@stripe``) has one of these per
    currency, so ``label`` (name and currency) is what tells two of them apart."""

    name: str
    currency: str
    balance: int
    inflight_credit: int
    inflight_debit: int

    @property
    def label(self) -> str:
        return f"{self.name} ({self.currency})"

    def __str__(self) -> str:
        return (
            f"{self.label}: {Money(self.balance, self.currency).format()} applied, "
            f"{Money(self.inflight_credit, self.currency).format()} inflight in, "
            f"{Money(self.inflight_debit, self.currency).format()} inflight out"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "currency": self.currency,
            "balance": self.balance,
            "inflight_credit": self.inflight_credit,
            "inflight_debit": self.inflight_debit,
        }


@dataclass(frozen=True)
class NewTransaction:
    reference: str
    source: str
    destination: str
    amount: int
    currency: str
    inflight: bool = True
    metadata: Mapping[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Violation:
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


@dataclass(frozen=True)
class Settled:
    """One item of a bulk commit or void: the transaction as it now stands, or why not.

    A retry that finds the work already done (a full commit already committed, a void
    already voided) is a success, as it is for ``commit`` and ``void``.
    """

    reference: str
    transaction: Transaction | None = None
    error: LedgerError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Settlement:
    """One entry of a set-based settle: commit ``commit``, then void ``void`` (the rest).

    ``txn`` is the state the caller read under its lock; the settle refuses (and changes
    nothing) when the row no longer holds exactly that state.
    """

    txn: Transaction
    commit: int = 0
    void: int = 0
