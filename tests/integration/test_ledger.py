"""What only SqlLedger does: its storage, its statements, its races.

The behaviour every ledger shares is the contract, in test_ledger_contract.py.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from ledger.errors import (
    CurrencyMismatch,
)
from ledger.model import NewTransaction
from ledger.sql import SqlLedger

pytestmark = pytest.mark.integration


def new(ref="pi_1", amount=5000, currency="USD", **kw) -> NewTransaction:
    return NewTransaction(
        reference=ref,
        source=kw.pop("source", "@stripe"),
        destination=kw.pop("destination", "wallet:alice"),
        amount=amount,
        currency=currency,
        **kw,
    )


def run(engine: Engine, fn):
    with engine.begin() as conn:
        return fn(SqlLedger(conn))


def balances(engine: Engine) -> dict[str, tuple[int, int, int]]:
    return {
        b.name: (b.balance, b.inflight_credit, b.inflight_debit)
        for b in run(engine, lambda lg: lg.balances())
    }


def assert_invariants(engine: Engine) -> None:
    assert run(engine, lambda lg: lg.check_invariants()) == []


def test_keeps_an_expiry_time(db_engine):
    when = datetime(2026, 12, 1, 12, tzinfo=UTC)
    txn = run(db_engine, lambda lg: lg.create(new(expires_at=when)))
    assert txn.expires_at == when


def test_two_first_uses_of_a_named_balance_in_two_currencies_racing_leave_one(pg_engine):
    barrier = threading.Barrier(2)
    outcome: dict[str, object] = {}

    def attempt(currency: str) -> None:
        with pg_engine.connect() as conn:
            barrier.wait()
            try:
                with conn.begin():
                    SqlLedger(conn).create(new(f"pi_{currency}", 100, currency))
                outcome[currency] = "ok"
            except CurrencyMismatch as exc:
                outcome[currency] = exc

    threads = [threading.Thread(target=attempt, args=(c,)) for c in ("USD", "EUR")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(v == "ok" for v in outcome.values()) == [False, True], outcome
    named = [b for b in run(pg_engine, lambda lg: lg.balances()) if b.name == "wallet:alice"]
    assert len(named) == 1
    assert_invariants(pg_engine)


def test_two_creates_of_one_reference_racing_record_it_once(pg_engine):
    barrier = threading.Barrier(4)
    ids: list[str] = []

    def attempt() -> None:
        with pg_engine.connect() as conn:
            barrier.wait()
            with conn.begin():
                ids.append(SqlLedger(conn).create(new()).id)

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1
    assert balances(pg_engine)["wallet:alice"] == (0, 5000, 0)
    assert_invariants(pg_engine)


def test_a_commit_on_postgresql_is_two_statements_before_the_commit(pg_engine):
    from sqlalchemy import event

    run(pg_engine, lambda lg: lg.create(new()))
    seen: list[str] = []

    def count(conn, cursor, statement, *args):  # noqa: ANN001
        seen.append(statement.split()[0])

    with pg_engine.begin() as conn:
        event.listen(conn, "before_cursor_execute", count)
        SqlLedger(conn).commit("pi_1")
        event.remove(conn, "before_cursor_execute", count)
    # The lock (SELECT ... FOR UPDATE) and one statement that moves both balances, writes
    # the posting and stores the new state; COMMIT is the third round trip.
    assert seen == ["SELECT", "WITH"], seen


def test_check_reports_a_balance_tampered_with_outside_the_ledger(db_engine):
    from sqlalchemy import update

    from ledger.sql import balances as balances_table

    run(db_engine, lambda lg: lg.create(new(inflight=False)))
    with db_engine.begin() as conn:
        conn.execute(
            update(balances_table).where(balances_table.c.name == "wallet:alice").values(balance=1)
        )
    rules = {v.rule for v in run(db_engine, lambda lg: lg.check_invariants())}
    assert {"zero_sum", "balance_matches_transactions"} <= rules


def test_times_come_back_aware_in_utc_and_naive_ones_are_refused(db_engine):
    from datetime import timezone

    paris = timezone(timedelta(hours=1))
    when = datetime(2026, 12, 1, 13, tzinfo=paris)
    txn = run(db_engine, lambda lg: lg.create(new(expires_at=when)))
    assert txn.expires_at == datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert txn.expires_at.tzinfo is not None and txn.created_at.tzinfo is not None
    with pytest.raises(Exception, match="naive datetime"):
        run(db_engine, lambda lg: lg.create(new("pi_naive", expires_at=datetime(2026, 12, 1))))
