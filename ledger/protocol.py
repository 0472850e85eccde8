"""The one interface reconciliation talks to; SqlLedger and BlnkLedger implement it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from sqlalchemy import Connection

from ledger.model import (
    Balance,
    NewTransaction,
    Settled,
    Settlement,
    Transaction,
    TxnStatus,
    Violation,
)

# The metadata key that links a transaction to a Stripe PaymentIntent when its reference
# follows another convention.  The ledger only stores it; it knows nothing of Stripe.
LINK_KEY = "stripe_payment_intent"

# A caller rehearsing (its database transaction will be rolled back) marks the connection
# (``rehearsal``) before it makes a ledger on it.  A ledger whose writes do not roll back
# with that connection (Blnk, over HTTP) then sends no write and answers what it would give.
DRY_RUN = "ledger.dry_run"


@contextmanager
def rehearsal(conn: Connection, dry_run: bool) -> Iterator[None]:
    """Mark ``conn`` as rehearsing for the block (``conn.info`` outlives the checkout, so
    the mark is always taken off again)."""
    before = conn.info.get(DRY_RUN)
    conn.info[DRY_RUN] = dry_run
    try:
        yield
    finally:
        if before is None:
            conn.info.pop(DRY_RUN, None)
        else:
            conn.info[DRY_RUN] = before


# The most items one bulk call takes (Blnk: api/model/transaction.go MaxBulkInflightItems).
BULK_MAX = 100


class Ledger(Protocol):
    def create(self, new: NewTransaction) -> Transaction:
        """Create INFLIGHT or APPLIED; a retry with identical terms returns the existing one."""
        ...

    def get(self, reference: str, *, lock: bool = False) -> Transaction | None: ...

    def find_linked(self, link: str, *, lock: bool = False) -> Transaction | None:
        """The transaction whose reference is ``link``, else one whose metadata LINK_KEY is
        ``link``: a reference match always wins (references are unique)."""
        ...

    def commit(
        self, reference: str, amount: int | None = None, *, idempotency_key: str | None = None
    ) -> Transaction: ...

    def void(self, reference: str, *, idempotency_key: str | None = None) -> Transaction: ...

    def commit_many(self, items: Sequence[tuple[str, int | None]]) -> list[Settled]:
        """``commit`` for many (reference, amount or None for the rest) at once, one result
        per item in order; an item that fails does not stop the others."""
        ...

    def void_many(self, references: Sequence[str]) -> list[Settled]:
        """``void`` for many references at once, one result per item in order."""
        ...

    def claim_inflight(
        self,
        older_than: datetime,
        limit: int,
        lease: timedelta,
        now: datetime,
        after: tuple[datetime, str] | None = None,
    ) -> Sequence[Transaction]:
        """Claim up to ``limit`` INFLIGHT transactions created before ``older_than``.

        ``after`` (created_at, id) keyset-pages a pass, so that one pass never examines an
        entry twice even though it gives its claims back after each batch.

        A claimed row is skipped by other claimers until its lease ends, so that several
        workers never take the same entry; a crashed worker's claims simply expire.
        """
        ...

    def list_inflight(
        self, older_than: datetime, limit: int, after: tuple[datetime, str] | None = None
    ) -> Sequence[Transaction]:
        """Read-only page of INFLIGHT transactions (what a dry run looks at), keyset-paged."""
        ...

    def find_linked_many(self, links: Sequence[str]) -> dict[str, Transaction]:
        """``find_linked`` for many links in one round trip: link -> transaction."""
        ...

    def release(self, references: Sequence[str]) -> None:
        """Give back the claims on these transactions at once."""
        ...

    def list_transactions(
        self, status: TxnStatus | None = None, limit: int = 100, offset: int = 0
    ) -> Sequence[Transaction]:
        """Transactions (of one status, or all), oldest first: for people looking."""
        ...

    def balances(self) -> Sequence[Balance]: ...

    def get_balances(self, names: Sequence[str]) -> Sequence[Balance]:
        """These balances (those that exist), by name: one customer's wallets."""
        ...

    def recent_for_balance(self, balance: str, limit: int = 20) -> Sequence[Transaction]:
        """Transactions into ``balance``, newest first: a customer's wallet history."""
        ...

    def check_invariants(self) -> list[Violation]: ...


@runtime_checkable
class SettlesInSets(Protocol):
    """A ledger that can lock and settle many entries with a few statements (SqlLedger).

    Both run on the caller's transaction: the caller locks, decides on what the lock
    shows, settles, writes its own records, and commits all of it or none.
    """

    def lock_many(
        self, ids: Sequence[str], known: Mapping[str, Transaction] | None = None
    ) -> dict[str, Transaction]:
        """Lock these transactions (by id, in id order) and return them: id -> state.

        ``known``: the caller's earlier reads, by id.  A ledger may then read only what can
        have changed since, and answer the earlier read where nothing has."""
        ...

    def settle_locked(self, settlements: Sequence[Settlement]) -> list[Transaction]:
        """Commit and void many locked entries at once; the new states, in order.

        Raises StateError, having written nothing the caller may keep (it must roll back),
        when an entry is no longer in the state its Settlement names.
        """
        ...


@runtime_checkable
class LocksInBulk(Protocol):
    """A ledger with no transaction of its own around a set (Blnk): the service's own rows
    keep other workers off the entries while ``commit_many``/``void_many`` settle them, each
    entry's result standing alone.  Runs on the caller's transaction, which holds the locks.
    """

    def lock_references(self, references: Sequence[str]) -> dict[str, Transaction]:
        """Lock these references (in one order for every worker) and read them: ref -> state."""
        ...
