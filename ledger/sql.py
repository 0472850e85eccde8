"""SqlLedger: the built-in ledger, in the service's own database (PostgreSQL or SQLite).

Every method runs on the caller's connection and inside the caller's transaction, so a
reconciliation can lock an entry, change it and write its audit row atomically.  The
caller commits.

Concurrency rules:
- a transaction row is locked (``SELECT ... FOR UPDATE``) before its state is read for a
  change, so a commit and a void racing on one entry serialise and the loser sees the
  winner's result and raises a typed error;
- balance rows are updated with ``balance = balance + :delta`` in one statement, always in
  name order, so two transactions touching the same pair of balances never deadlock;
- SQLite has no row locks: the engine begins every transaction with ``BEGIN IMMEDIATE``
  (worker/db.py), which serialises writers for the whole file.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping

from ledger.checks import is_amount, to_commit, to_void, validate_new
from ledger.errors import (
    CurrencyMismatch,
    InvalidAmount,
    LedgerError,
    ReferenceConflict,
    StateError,
    TransactionNotFound,
)
from ledger.model import (
    Balance,
    NewTransaction,
    Settled,
    Settlement,
    Transaction,
    TxnStatus,
    Violation,
)
from ledger.pgsets import recordset, rows_json
from ledger.protocol import LINK_KEY
from ledger.types import UtcDateTime

metadata = MetaData()


def is_indicator(name: str) -> bool:
    """An indicator balance (``@stripe``, ``@World``) exists once per currency, as in Blnk."""
    return name.startswith("@")


# substr rather than LIKE '@%': the same text on both dialects, and no '%' for a driver's
# paramstyle to trip on.
_NAMED = "substr(name, 1, 1) <> '@'"

# A balance is a (name, currency) pair.  Indicator balances may have one row per currency;
# a named balance holds one currency, which the partial unique index enforces even against
# two first uses racing in different currencies.
balances = Table(
    "ledger_balances",
    metadata,
    Column("name", String(200), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("balance", BigInteger, nullable=False, default=0),
    Column("inflight_credit", BigInteger, nullable=False, default=0),
    Column("inflight_debit", BigInteger, nullable=False, default=0),
    Column("created_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("name", "currency", name="ledger_balances_pkey"),
    Index(
        "uq_ledger_balances_named",
        "name",
        unique=True,
        postgresql_where=text(_NAMED),
        sqlite_where=text(_NAMED),
    ),
)

transactions = Table(
    "ledger_transactions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("reference", String(255), nullable=False, unique=True),
    Column("source", String(200), nullable=False),
    Column("destination", String(200), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(10), nullable=False),
    Column("committed_amount", BigInteger, nullable=False, default=0),
    Column("voided_amount", BigInteger, nullable=False, default=0),
    # Denormalised from metadata[LINK_KEY] so the link lookup is an index probe on both
    # dialects, not a JSON scan.
    Column("link", String(255), nullable=True),
    Column("meta", JSON, nullable=False, default=dict),
    Column("expires_at", UtcDateTime(), nullable=True),
    Column("claimed_until", UtcDateTime(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index("ix_ledger_transactions_link", "link"),
    Index("ix_ledger_transactions_status_created", "status", "created_at"),
    ForeignKeyConstraint(
        ["source", "currency"],
        ["ledger_balances.name", "ledger_balances.currency"],
        name="ledger_transactions_source_fkey",
    ),
    ForeignKeyConstraint(
        ["destination", "currency"],
        ["ledger_balances.name", "ledger_balances.currency"],
        name="ledger_transactions_destination_fkey",
    ),
    # A balance's recent transactions (a customer's wallet history); migration 0006.
    Index("ix_ledger_transactions_destination_created", "destination", "created_at"),
)

postings = Table(
    "ledger_postings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("transaction_id", String(40), ForeignKey("ledger_transactions.id"), nullable=False),
    Column("kind", String(10), nullable=False),  # create | commit | void
    Column("amount", BigInteger, nullable=False),
    Column("idempotency_key", String(255), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    UniqueConstraint("transaction_id", "idempotency_key", name="uq_ledger_postings_idem"),
    Index("ix_ledger_postings_transaction", "transaction_id"),
)


# The commit/void path is hot (every reconciled payment) and Python-bound: statements are
# built once here with bind parameters instead of per call, and each one is a single round
# trip (both balances in one UPDATE, the transaction's new state RETURNed, not re-read).
_b = balances.c
_t = transactions.c
_BY_REF = select(transactions).where(_t.reference == bindparam("ref"))
_BY_REF_LOCKED = _BY_REF.with_for_update()


def _delta(for_source: str, for_destination: str) -> Any:
    return case(
        (_b.name == bindparam("src"), bindparam(for_source, type_=BigInteger)),
        else_=bindparam(for_destination, type_=BigInteger),
    )


# Both rows through the primary key (name, currency) with an IN list on the name and the
# currency fixed, which PostgreSQL walks in key order: two transactions on the same pair of
# balances lock them alike and cannot deadlock.
_MOVE = (
    update(balances)
    .where(_b.name.in_([bindparam("first"), bindparam("second")]), _b.currency == bindparam("cur"))
    .values(
        balance=_b.balance + _delta("src_applied", "dst_applied"),
        inflight_credit=_b.inflight_credit + _delta("src_credit", "dst_credit"),
        inflight_debit=_b.inflight_debit + _delta("src_debit", "dst_debit"),
    )
)
_POST = postings.insert().values(
    transaction_id=bindparam("tid"),
    kind=bindparam("p_kind"),
    amount=bindparam("p_amount"),
    idempotency_key=bindparam("p_key"),
    created_at=bindparam("now"),
)
# Any change of state also gives back a sweeper's claim on the row.
_STORE = (
    update(transactions)
    .where(_t.id == bindparam("tid"))
    .values(
        committed_amount=bindparam("new_committed"),
        voided_amount=bindparam("new_voided"),
        status=bindparam("new_status"),
        claimed_until=None,
        updated_at=bindparam("now"),
    )
    .returning(*transactions.c)
)
# On PostgreSQL the balance move and the posting ride along with the state change as
# data-modifying CTEs: one round trip for every write of a commit or void, the same rows
# written and locked (the transaction row is already locked; the balances in key order, as
# above).  SQLite has no INSERT or UPDATE inside WITH, so there they stay three statements.
_WRITE_ALL = _STORE.add_cte(_MOVE.cte("moved"), _POST.cte("posting"))


# Set-based settling (PostgreSQL): each statement takes the whole set as arrays.  The state
# change only applies to rows still in the state the caller read under its lock; fewer rows
# than asked means the caller's picture is wrong and it must roll back.
_SETTLED_COLS = (
    ("id", "text"),
    ("was_committed", "bigint"),
    ("was_voided", "bigint"),
    ("committed", "bigint"),
    ("voided", "bigint"),
    ("status", "text"),
)
# The per-entry rows of a set travel as one JSON document (ledger/pgsets.py): binding an
# array per column made psycopg escape every element in Python.
_SETTLE_SET = f"""
    UPDATE ledger_transactions AS t
       SET committed_amount = u.committed, voided_amount = u.voided, status = u.status,
           claimed_until = NULL, updated_at = %(now)s
      FROM {recordset(_SETTLED_COLS)}
     WHERE t.id = u.id AND t.status = 'INFLIGHT'
       AND t.committed_amount = u.was_committed AND t.voided_amount = u.was_voided
    RETURNING t.id
    """
# Balances are locked in key order before they are moved, as the single-entry path does
# (its IN list walks the primary key), so a batch and a single commit cannot deadlock: the
# MATERIALIZED CTE locks them all (LockRows on Sort) before the UPDATE joins a row to them.
_MOVE_SET = text(
    """
    WITH locked AS MATERIALIZED (
        SELECT name, currency FROM ledger_balances
         WHERE (name, currency) IN (SELECT * FROM unnest(CAST(:names AS text[]),
                                                         CAST(:currencies AS text[])))
         ORDER BY name, currency
           FOR UPDATE
    )
    UPDATE ledger_balances AS b
       SET balance = b.balance + v.applied,
           inflight_credit = b.inflight_credit + v.credit,
           inflight_debit = b.inflight_debit + v.debit
      FROM unnest(CAST(:names AS text[]), CAST(:currencies AS text[]),
                  CAST(:applied AS bigint[]), CAST(:credit AS bigint[]),
                  CAST(:debit AS bigint[]))
           AS v(name, currency, applied, credit, debit)
     WHERE b.name = v.name AND b.currency = v.currency
       AND (SELECT count(*) FROM locked) >= 0
    """
)
_POSTED_COLS = (("tid", "text"), ("kind", "text"), ("amount", "bigint"))
# The state change and its postings in one round trip: the rows are locked already, and a
# set whose state changed (fewer ids returned than asked) is rolled back whole by the caller,
# postings included.
_SETTLE_AND_POST_SET = f"""
    WITH settled AS ({_SETTLE_SET}),
    posted AS (
        INSERT INTO ledger_postings (transaction_id, kind, amount, idempotency_key, created_at)
        SELECT u.tid, u.kind, u.amount, NULL, %(now)s FROM {recordset(_POSTED_COLS, "posted")}
    )
    SELECT id FROM settled
    """


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _after(key: tuple[datetime, str]) -> Any:
    t = transactions
    # ``created_at >= ...`` repeats what the OR implies so that the planner starts the index
    # scan at the key: with the OR alone it was a filter, and each batch of a sweep walked
    # again over the index entries of every entry settled before it (a backlog's claims grew
    # quadratic: 10,000 entries at 3.3 s of CPU, 30,000 at 3.95 s per 10,000).
    return and_(
        t.c.created_at >= key[0],
        or_(t.c.created_at > key[0], and_(t.c.created_at == key[0], t.c.id > key[1])),
    )


def _row_to_txn(row: RowMapping) -> Transaction:
    created = row["created_at"]
    assert created is not None
    return Transaction(
        id=row["id"],
        reference=row["reference"],
        source=row["source"],
        destination=row["destination"],
        amount=int(row["amount"]),
        currency=row["currency"],
        status=TxnStatus(row["status"]),
        committed_amount=int(row["committed_amount"]),
        voided_amount=int(row["voided_amount"]),
        metadata=dict(row["meta"] or {}),
        expires_at=row["expires_at"],
        created_at=created,
        updated_at=row["updated_at"],
    )


class SqlLedger:
    """Ledger on a SQLAlchemy connection; the caller owns the transaction and commits it."""

    def __init__(self, conn: Connection, clock: Any = _utcnow) -> None:
        self.conn = conn
        self._clock = clock
        self._dialect = conn.dialect.name

    # -- helpers -------------------------------------------------------------------------

    def _insert_ignore(self, table: Table, values: Mapping[str, Any]) -> int:
        stmt: Any
        if self._dialect == "postgresql":
            stmt = postgresql.insert(table).values(**values).on_conflict_do_nothing()
        else:
            stmt = sqlite.insert(table).values(**values).on_conflict_do_nothing()
        # RETURNING, not rowcount: SQLAlchemy 2 leaves an INSERT's rowcount at -1 (truthy)
        # unless asked to keep it, which made a create that lost a race look like a winner.
        key = next(iter(table.primary_key.columns))
        return len(self.conn.execute(stmt.returning(key)).all())

    def _ensure_balance(self, name: str, currency: str) -> None:
        inserted = self._insert_ignore(
            balances,
            {
                "name": name,
                "currency": currency,
                "balance": 0,
                "inflight_credit": 0,
                "inflight_debit": 0,
                "created_at": self._clock(),
            },
        )
        if inserted or is_indicator(name):
            return
        # Not inserted: either this very (name, currency) exists, or the name is taken in
        # another currency (the partial unique index said no).
        found = self.conn.execute(
            select(balances.c.currency).where(balances.c.name == name)
        ).scalar_one()
        if found != currency:
            raise CurrencyMismatch(
                f"balance {name!r} holds {found}; it cannot take {currency} (a named balance "
                f"keeps one currency; only indicator balances such as '@stripe' hold several)"
            )

    @staticmethod
    def _move_params(
        source: str, destination: str, currency: str, applied: int, inflight: int
    ) -> dict[str, Any]:
        """Bind values for _MOVE: ``applied`` into balances, ``inflight`` into reservations."""
        first, second = sorted((source, destination))
        return {
            "first": first,
            "second": second,
            "cur": currency,
            "src": source,
            "src_applied": -applied,
            "dst_applied": applied,
            "src_credit": 0,
            "dst_credit": inflight,
            "src_debit": inflight,
            "dst_debit": 0,
        }

    def _move(
        self, source: str, destination: str, currency: str, *, applied: int = 0, inflight: int = 0
    ) -> None:
        self.conn.execute(
            _MOVE, self._move_params(source, destination, currency, applied, inflight)
        )

    def _select(self, where: Any, lock: bool) -> Transaction | None:
        stmt = select(transactions).where(where)
        if lock:
            stmt = stmt.with_for_update()
        row = self.conn.execute(stmt).mappings().first()
        return _row_to_txn(row) if row else None

    def _locked(self, reference: str) -> Transaction:
        row = self.conn.execute(_BY_REF_LOCKED, {"ref": reference}).mappings().first()
        if row is None:
            raise TransactionNotFound(reference)
        return _row_to_txn(row)

    def _posted(self, txn_id: str, key: str | None) -> bool:
        if key is None:
            return False
        return (
            self.conn.execute(
                select(postings.c.id).where(
                    postings.c.transaction_id == txn_id, postings.c.idempotency_key == key
                )
            ).first()
            is not None
        )

    def _post(self, txn_id: str, kind: str, amount: int, key: str | None, now: datetime) -> None:
        self.conn.execute(
            _POST, {"tid": txn_id, "p_kind": kind, "p_amount": amount, "p_key": key, "now": now}
        )

    def _write(
        self,
        txn: Transaction,
        *,
        applied: int,
        inflight: int,
        kind: str,
        amount: int,
        key: str | None,
        committed: int,
        voided: int,
        status: TxnStatus,
        now: datetime,
    ) -> Transaction:
        """Move the balances, record the posting and the new state; return that state."""
        params = {
            **self._move_params(txn.source, txn.destination, txn.currency, applied, inflight),
            "tid": txn.id,
            "p_kind": kind,
            "p_amount": amount,
            "p_key": key,
            "new_committed": committed,
            "new_voided": voided,
            "new_status": status.value,
            "now": now,
        }
        if self._dialect == "postgresql":
            row = self.conn.execute(_WRITE_ALL, params).mappings().one()
        else:
            self.conn.execute(_MOVE, params)
            self._post(txn.id, kind, amount, key, now)
            row = self.conn.execute(_STORE, params).mappings().one()
        return _row_to_txn(row)

    # -- the protocol --------------------------------------------------------------------

    def create(self, new: NewTransaction) -> Transaction:
        new = validate_new(new)
        existing = self.get(new.reference, lock=True)
        if existing is not None:
            return self._same_terms(existing, new)
        self._ensure_balance(new.source, new.currency)
        self._ensure_balance(new.destination, new.currency)
        now = self._clock()
        txn_id = "txn_" + uuid.uuid4().hex
        link = new.metadata.get(LINK_KEY) or new.reference
        inserted = self._insert_ignore(
            transactions,
            {
                "id": txn_id,
                "reference": new.reference,
                "source": new.source,
                "destination": new.destination,
                "amount": new.amount,
                "currency": new.currency,
                "status": (TxnStatus.INFLIGHT if new.inflight else TxnStatus.APPLIED).value,
                "committed_amount": 0 if new.inflight else new.amount,
                "voided_amount": 0,
                "link": link,
                "meta": dict(new.metadata),
                "expires_at": new.expires_at,
                "claimed_until": None,
                "created_at": now,
                "updated_at": now,
            },
        )
        if not inserted:
            # Lost a race with a concurrent create of the same reference: theirs stands.
            winner = self.get(new.reference, lock=True)
            assert winner is not None
            return self._same_terms(winner, new)
        if new.inflight:
            self._move(new.source, new.destination, new.currency, inflight=new.amount)
        else:
            self._move(new.source, new.destination, new.currency, applied=new.amount)
        self._post(txn_id, "create", new.amount, None, now)
        got = self.get(new.reference)
        assert got is not None
        return got

    @staticmethod
    def _same_terms(existing: Transaction, new: NewTransaction) -> Transaction:
        theirs = (existing.source, existing.destination, existing.amount, existing.currency)
        ours = (new.source, new.destination, new.amount, new.currency)
        if theirs != ours:
            raise ReferenceConflict(
                f"reference {new.reference!r} already exists with other terms "
                f"({existing.amount} {existing.currency} {existing.source}->"
                f"{existing.destination})"
            )
        return existing

    def get(self, reference: str, *, lock: bool = False) -> Transaction | None:
        row = (
            self.conn.execute(_BY_REF_LOCKED if lock else _BY_REF, {"ref": reference})
            .mappings()
            .first()
        )
        return _row_to_txn(row) if row else None

    def find_linked(self, link: str, *, lock: bool = False) -> Transaction | None:
        txn = self.get(link, lock=lock)
        if txn is None:
            txn = self._select(transactions.c.link == link, lock)
        return txn

    def commit(
        self, reference: str, amount: int | None = None, *, idempotency_key: str | None = None
    ) -> Transaction:
        if amount is not None and not is_amount(amount):
            raise InvalidAmount(f"commit amount must be a positive integer: {amount!r}")
        txn = self._locked(reference)
        if self._posted(txn.id, idempotency_key):
            return txn
        take = to_commit(txn, amount)
        if take is None:
            return txn  # a full commit retried after it happened: nothing to do
        now = self._clock()
        committed = txn.committed_amount + take
        status = TxnStatus.APPLIED if committed + txn.voided_amount == txn.amount else txn.status
        return self._write(
            txn,
            applied=take,
            inflight=-take,
            kind="commit",
            amount=take,
            key=idempotency_key,
            committed=committed,
            voided=txn.voided_amount,
            status=status,
            now=now,
        )

    def void(self, reference: str, *, idempotency_key: str | None = None) -> Transaction:
        txn = self._locked(reference)
        if self._posted(txn.id, idempotency_key):
            return txn
        if to_void(txn) is None:
            return txn
        now = self._clock()
        rest = txn.remaining
        status = TxnStatus.APPLIED if txn.committed_amount else TxnStatus.VOID
        return self._write(
            txn,
            applied=0,
            inflight=-rest,
            kind="void",
            amount=rest,
            key=idempotency_key,
            committed=txn.committed_amount,
            voided=txn.voided_amount + rest,
            status=status,
            now=now,
        )

    def commit_many(self, items: Sequence[tuple[str, int | None]]) -> list[Settled]:
        return [self._settle_one(ref, self.commit, amount) for ref, amount in items]

    def void_many(self, references: Sequence[str]) -> list[Settled]:
        return [self._settle_one(ref, self._void_all) for ref in references]

    def _void_all(self, reference: str, _: int | None) -> Transaction:
        return self.void(reference)

    def _settle_one(
        self,
        reference: str,
        act: Callable[[str, int | None], Transaction],
        amount: int | None = None,
    ) -> Settled:
        # A savepoint per item: one refusal leaves the others' writes in the transaction.
        savepoint = self.conn.begin_nested()
        try:
            txn = act(reference, amount)
        except LedgerError as exc:
            savepoint.rollback()
            return Settled(reference, error=exc)
        savepoint.commit()
        return Settled(reference, transaction=txn)

    # -- set-based (SettlesInSets) --------------------------------------------------------

    def lock_many(
        self, ids: Sequence[str], known: Mapping[str, Transaction] | None = None
    ) -> dict[str, Transaction]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        # Only the state columns change after a transaction is created (_STORE, _SETTLE_SET):
        # with every row known, those are all that is read again, and a row whose state is
        # as known answers the known read (its meta is not parsed and converted once more).
        slim = known is not None and all(i in known for i in wanted)
        t = transactions
        cols = (
            [t.c.id, t.c.status, t.c.committed_amount, t.c.voided_amount, t.c.updated_at]
            if slim
            else [t]
        )
        out: dict[str, Transaction] = {}
        for start in range(0, len(wanted), 1000):
            stmt = select(*cols).where(t.c.id.in_(wanted[start : start + 1000])).order_by(t.c.id)
            if self._dialect == "postgresql":
                stmt = stmt.with_for_update()  # rows are locked in id order (LockRows on Sort)
            for row in self.conn.execute(stmt).mappings():
                if not slim:
                    out[row["id"]] = _row_to_txn(row)
                    continue
                assert known is not None
                was = known[row["id"]]
                state = (
                    TxnStatus(row["status"]),
                    int(row["committed_amount"]),
                    int(row["voided_amount"]),
                    row["updated_at"],
                )
                if state == (was.status, was.committed_amount, was.voided_amount, was.updated_at):
                    out[row["id"]] = was
                else:
                    out[row["id"]] = dataclasses.replace(
                        was,
                        status=state[0],
                        committed_amount=state[1],
                        voided_amount=state[2],
                        updated_at=state[3],
                    )
        return out

    def settle_locked(self, settlements: Sequence[Settlement]) -> list[Transaction]:
        if not settlements:
            return []
        now = self._clock()
        planned: list[tuple[Settlement, int, int, TxnStatus]] = []
        seen: set[str] = set()
        for s in settlements:
            t = s.txn
            if t.id in seen:
                raise StateError(f"{t.reference}: settled twice in one set")
            seen.add(t.id)
            moved = s.commit + s.void
            if (
                t.status is not TxnStatus.INFLIGHT
                or s.commit < 0
                or s.void < 0
                or moved <= 0
                or moved > t.remaining
                or (s.void and moved != t.remaining)  # a void releases all that is left
            ):
                raise StateError(
                    f"{t.reference}: cannot commit {s.commit} and void {s.void} of "
                    f"{t.status.value} {t.amount} (committed {t.committed_amount}, "
                    f"voided {t.voided_amount})"
                )
            committed = t.committed_amount + s.commit
            voided = t.voided_amount + s.void
            status = TxnStatus.INFLIGHT
            if committed + voided == t.amount:
                status = TxnStatus.APPLIED if committed else TxnStatus.VOID
            planned.append((s, committed, voided, status))
        if self._dialect != "postgresql":
            return [self._settle_rowwise(s, now) for s, *_ in planned]
        rows = rows_json(
            _SETTLED_COLS,
            {
                "id": [s.txn.id for s, *_ in planned],
                "was_committed": [s.txn.committed_amount for s, *_ in planned],
                "was_voided": [s.txn.voided_amount for s, *_ in planned],
                "committed": [c for _, c, _, _ in planned],
                "voided": [v for _, _, v, _ in planned],
                "status": [st.value for *_, st in planned],
            },
        )
        deltas: dict[tuple[str, str], list[int]] = {}
        tids: list[str] = []
        kinds: list[str] = []
        amounts: list[int] = []
        for s, *_ in planned:
            t = s.txn
            moved = s.commit + s.void
            src = deltas.setdefault((t.source, t.currency), [0, 0, 0])
            dst = deltas.setdefault((t.destination, t.currency), [0, 0, 0])
            # as _move_params: a commit moves ``commit`` into the balances and both out of
            # the reservations; a void only releases its part of the reservations
            src[0] -= s.commit
            dst[0] += s.commit
            dst[1] -= moved
            src[2] -= moved
            for kind, amount in (("commit", s.commit), ("void", s.void)):
                if amount:
                    tids.append(t.id)
                    kinds.append(kind)
                    amounts.append(amount)
        posted = rows_json(_POSTED_COLS, {"tid": tids, "kind": kinds, "amount": amounts})
        changed = self.conn.exec_driver_sql(
            _SETTLE_AND_POST_SET, {"now": now, "rows": rows, "posted": posted}
        ).all()
        if len(changed) != len(planned):
            # The postings went in with the statement: the caller's rollback takes them.
            raise StateError(
                f"{len(planned) - len(changed)} of {len(planned)} entries changed after they "
                "were locked and read"
            )
        keys = sorted(deltas)
        self.conn.execute(
            _MOVE_SET,
            {
                "names": [k[0] for k in keys],
                "currencies": [k[1] for k in keys],
                "applied": [deltas[k][0] for k in keys],
                "credit": [deltas[k][1] for k in keys],
                "debit": [deltas[k][2] for k in keys],
            },
        )
        # The rows now hold exactly what was written (they were locked and matched the state
        # they were read in), so the new states need no second read.
        return [
            dataclasses.replace(
                s.txn,
                committed_amount=committed,
                voided_amount=voided,
                status=status,
                updated_at=now,
            )
            for s, committed, voided, status in planned
        ]

    def _settle_rowwise(self, s: Settlement, now: datetime) -> Transaction:
        # SQLite: the file is already held by this writer (BEGIN IMMEDIATE); one entry at a
        # time with the statements of commit and void, checked against the state read.
        txn = self._locked(s.txn.reference)
        if (txn.status, txn.committed_amount, txn.voided_amount) != (
            s.txn.status,
            s.txn.committed_amount,
            s.txn.voided_amount,
        ):
            raise StateError(f"{txn.reference}: changed after it was locked and read")
        if s.commit:
            txn = self.commit(txn.reference, s.commit)
        if s.void:
            txn = self.void(txn.reference)
        return txn

    def claim_inflight(
        self,
        older_than: datetime,
        limit: int,
        lease: timedelta,
        now: datetime,
        after: tuple[datetime, str] | None = None,
    ) -> Sequence[Transaction]:
        t = transactions
        free = or_(t.c.claimed_until.is_(None), t.c.claimed_until < now)
        pick = (
            select(t.c.id)
            .where(t.c.status == TxnStatus.INFLIGHT.value, t.c.created_at < older_than, free)
            .order_by(t.c.created_at, t.c.id)
            .limit(limit)
        )
        if after is not None:
            pick = pick.where(_after(after))
        picked: Any = transactions.c.id.in_(pick.scalar_subquery())
        if self._dialect == "postgresql":
            # SKIP LOCKED: a second sweeper takes the next rows instead of waiting on ours.
            pick = pick.with_for_update(skip_locked=True)
            # ``= ANY(ARRAY(...))``, not ``IN (...)``: for IN the planner hashed the picked
            # ids and scanned the whole table to join them (19 ms a batch at 10,000 rows,
            # growing with the table); the array is probed through the primary key.
            picked = transactions.c.id == func.any(func.array(pick.scalar_subquery()))
        stmt = (
            update(transactions)
            .where(picked)
            .values(claimed_until=now + lease)
            .returning(*transactions.c)
        )
        rows = self.conn.execute(stmt).mappings().all()
        return sorted((_row_to_txn(r) for r in rows), key=lambda t: (t.created_at, t.id))

    def inflight_quantiles(self, older_than: datetime, parts: int) -> list[datetime]:
        """Creation times that cut the INFLIGHT entries older than ``older_than`` into
        ``parts`` runs of about equal size (``parts - 1`` of them, ascending)."""
        t = transactions
        if parts <= 1:
            return []
        stmt = (
            select(t.c.created_at)
            .where(t.c.status == TxnStatus.INFLIGHT.value, t.c.created_at < older_than)
            .order_by(t.c.created_at)
        )
        total = self.conn.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
        out: list[datetime] = []
        for k in range(1, parts):
            at = self.conn.execute(stmt.offset(total * k // parts).limit(1)).scalar()
            if at is not None and (not out or at > out[-1]):
                out.append(at)
        return out

    def list_inflight(
        self, older_than: datetime, limit: int, after: tuple[datetime, str] | None = None
    ) -> Sequence[Transaction]:
        t = transactions
        stmt = select(t).where(t.c.status == TxnStatus.INFLIGHT.value, t.c.created_at < older_than)
        if after is not None:
            stmt = stmt.where(_after(after))
        rows = self.conn.execute(stmt.order_by(t.c.created_at, t.c.id).limit(limit)).mappings()
        return [_row_to_txn(r) for r in rows]

    def find_linked_many(self, links: Sequence[str]) -> dict[str, Transaction]:
        out: dict[str, Transaction] = {}
        wanted = list(dict.fromkeys(links))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            asked = set(chunk)  # membership per row: a list made this quadratic in the chunk
            rows = self.conn.execute(
                select(transactions).where(
                    or_(transactions.c.reference.in_(chunk), transactions.c.link.in_(chunk))
                )
            ).mappings()
            for row in rows:
                txn = _row_to_txn(row)
                # A reference match wins over a metadata link, as in find_linked.
                if txn.reference in asked:
                    out[txn.reference] = txn
                link = row["link"]
                if link in asked and link not in out:
                    out[link] = txn
        return out

    def release(self, references: Sequence[str]) -> None:
        if references:
            # Only rows still claimed: a settled row gave its claim back when it changed,
            # and rewriting it anyway would leave a dead row version for nothing.
            self.conn.execute(
                update(transactions)
                .where(
                    transactions.c.reference.in_(list(references)),
                    transactions.c.claimed_until.is_not(None),
                )
                .values(claimed_until=None)
            )

    def list_transactions(
        self, status: TxnStatus | None = None, limit: int = 100, offset: int = 0
    ) -> list[Transaction]:
        stmt = select(transactions).order_by(transactions.c.created_at, transactions.c.id)
        if status is not None:
            stmt = stmt.where(transactions.c.status == status.value)
        rows = self.conn.execute(stmt.limit(limit).offset(offset)).mappings().all()
        return [_row_to_txn(r) for r in rows]

    def balances(self) -> Sequence[Balance]:
        rows = (
            self.conn.execute(select(balances).order_by(balances.c.name, balances.c.currency))
            .mappings()
            .all()
        )
        return [
            Balance(
                name=r["name"],
                currency=r["currency"],
                balance=int(r["balance"]),
                inflight_credit=int(r["inflight_credit"]),
                inflight_debit=int(r["inflight_debit"]),
            )
            for r in rows
        ]

    def get_balances(self, names: Sequence[str]) -> Sequence[Balance]:
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return []
        rows = self.conn.execute(
            select(balances).where(balances.c.name.in_(wanted)).order_by(balances.c.name)
        ).mappings()
        return [
            Balance(
                name=r["name"],
                currency=r["currency"],
                balance=int(r["balance"]),
                inflight_credit=int(r["inflight_credit"]),
                inflight_debit=int(r["inflight_debit"]),
            )
            for r in rows
        ]

    def recent_for_balance(self, balance: str, limit: int = 20) -> Sequence[Transaction]:
        t = transactions
        rows = self.conn.execute(
            select(t)
            .where(t.c.destination == balance)
            .order_by(t.c.created_at.desc(), t.c.id.desc())
            .limit(limit)
        ).mappings()
        return [_row_to_txn(r) for r in rows]

    def check_invariants(self) -> list[Violation]:
        out: list[Violation] = []
        sums = self.conn.execute(
            select(
                balances.c.currency,
                func.sum(balances.c.balance),
                func.sum(balances.c.inflight_credit - balances.c.inflight_debit),
            ).group_by(balances.c.currency)
        ).all()
        for currency, total, inflight in sums:
            if int(total or 0) != 0:
                out.append(Violation("zero_sum", f"{currency} balances sum to {total}, not 0"))
            if int(inflight or 0) != 0:
                out.append(
                    Violation("zero_sum_inflight", f"{currency} inflight sums to {inflight}")
                )
        t = transactions
        bad = self.conn.execute(
            select(t.c.reference, t.c.amount, t.c.committed_amount, t.c.voided_amount, t.c.status)
            .where(
                or_(
                    t.c.committed_amount + t.c.voided_amount > t.c.amount,
                    t.c.committed_amount < 0,
                    t.c.voided_amount < 0,
                    and_(t.c.committed_amount == t.c.amount, t.c.voided_amount == t.c.amount),
                    and_(t.c.status == "VOID", t.c.committed_amount != 0),
                    and_(
                        t.c.status == "APPLIED",
                        t.c.committed_amount + t.c.voided_amount != t.c.amount,
                    ),
                    and_(
                        t.c.status == "INFLIGHT",
                        t.c.committed_amount + t.c.voided_amount >= t.c.amount,
                    ),
                )
            )
            .limit(100)
        ).all()
        for ref, amount, committed, voided, status in bad:
            out.append(
                Violation(
                    "transaction_amounts",
                    f"{ref}: {status} amount={amount} committed={committed} voided={voided}",
                )
            )
        out.extend(self._balances_match_transactions())
        return out

    def _balances_match_transactions(self) -> list[Violation]:
        """Each balance equals what its transactions say, applied and reserved alike."""
        t = transactions
        reserved = case(
            (t.c.status == "INFLIGHT", t.c.amount - t.c.committed_amount - t.c.voided_amount),
            else_=0,
        )
        expected: dict[tuple[str, str], list[int]] = {}
        for side, sign in ((t.c.destination, 1), (t.c.source, -1)):
            rows = self.conn.execute(
                select(
                    side, t.c.currency, func.sum(t.c.committed_amount), func.sum(reserved)
                ).group_by(side, t.c.currency)
            ).all()
            for name, currency, committed, held in rows:
                cur = expected.setdefault((name, currency), [0, 0, 0])
                cur[0] += sign * int(committed or 0)
                if sign > 0:
                    cur[1] += int(held or 0)
                else:
                    cur[2] += int(held or 0)
        out: list[Violation] = []
        for bal in self.balances():
            want = expected.get((bal.name, bal.currency), [0, 0, 0])
            have = [bal.balance, bal.inflight_credit, bal.inflight_debit]
            if have != want:
                out.append(
                    Violation(
                        "balance_matches_transactions",
                        f"{bal.label}: balance/inflight_credit/inflight_debit {have} "
                        f"but transactions say {want}",
                    )
                )
        return out
