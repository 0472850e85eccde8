"""The ledger's error tree.  Callers catch ``LedgerError`` or one precise leaf.

    LedgerError
    ├── InvalidInput            the request can never succeed as written
    │   ├── InvalidAmount, UnknownCurrency, CurrencyMismatch
    │   └── UnknownBalance      the backend has no such balance (Blnk: no such balance id)
    ├── TransactionNotFound
    ├── ReferenceConflict       same reference, other terms
    ├── StateError              the transaction's state refuses the operation
    │   ├── AlreadyCommitted, AlreadyVoided, NotInflight, CommitAmountExceeded
    │   └── InsufficientFunds   the source balance cannot cover it (and may not overdraw)
    ├── UnreadableRecord        the backend answered with a record whose money cannot be read
    └── TransientError          nothing was decided: leave the entry for the next pass
        ├── LedgerUnavailable   unreachable or failing (5xx, timeouts) after the retries
        │   └── LedgerAccessDenied  the backend refused our credentials (401/403)
        └── LedgerBusy          the backend is already acting on it (Blnk: a commit or void
                                queued, 409 GEN_CONFLICT; a lock held, 423)

A ``StateError`` met while acting on Stripe's evidence is a discrepancy for a person; a
``TransientError`` is not: the same pass, run later, will do the work.
"""

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


class UnknownBalance(InvalidInput):
    """The ledger has no balance by that name (Blnk names balances by id or @indicator)."""


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


class InsufficientFunds(StateError):
    pass


class UnreadableRecord(LedgerError):
    """A record whose amount, precision, status or time is missing or malformed.  Absent
    is unknown, never zero: nothing is decided on it and a person must look."""


class TransientError(LedgerError):
    """Nothing was decided; the same operation later may succeed."""


class LedgerUnavailable(TransientError):
    """The backing store could not be reached; the operation may be retried."""


class LedgerAccessDenied(LedgerUnavailable):
    """The backend refused the credentials or their permissions (fix the configuration)."""


class LedgerBusy(TransientError):
    """The backend is already acting on this transaction; retry later."""
