"""The ledger's error tree.  Callers catch ``LedgerError`` or one precise leaf."""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""


class InvalidInput(LedgerError):
    """The request can never succeed as written (bad amount, currency, reference...)."""


class InvalidAmount(InvalidInput, ValueError):
    pass


class UnknownCurrency(InvalidInput, ValueError):
    def __init__(self, code: str) -> None:
        super().__init__(f"unknown currency code: {code!r} (expected ISO 4217, e.g. USD, JPY)")
        self.code = code


class CurrencyMismatch(InvalidInput):
    pass


class TransactionNotFound(LedgerError, LookupError):
    def __init__(self, reference: str) -> None:
        super().__init__(f"no ledger transaction with reference {reference!r}")
        self.reference = reference


class ReferenceConflict(LedgerError):
    """A create with an existing reference but different terms: not a retry, a collision."""


class StateError(LedgerError):
    """The transaction is not in a state that allows the operation."""


class AlreadyCommitted(StateError):
    pass


class AlreadyVoided(StateError):
    pass


class NotInflight(StateError):
    pass


class CommitAmountExceeded(StateError):
    pass


class LedgerUnavailable(LedgerError):
    """The backing store could not be reached; the operation may be retried."""
