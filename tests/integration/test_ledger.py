"""The ledger contract, on the real PostgreSQL and on SQLite alike."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from ledger.errors import (
    AlreadyCommitted,
    AlreadyVoided,
    CommitAmountExceeded,
    CurrencyMismatch,
    InvalidAmount,
    InvalidInput,
    ReferenceConflict,
    StateError,
    TransactionNotFound,
    UnknownCurrency,
)
from ledger.model import NewTransaction, TxnStatus
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


def test_creates_an_inflight_transaction_that_reserves_but_does_not_move_money(db_engine):
    txn = run(db_engine, lambda lg: lg.create(new(metadata={"customer": "cus_1"})))
    assert txn.status is TxnStatus.INFLIGHT
    assert (txn.amount, txn.committed_amount, txn.voided_amount) == (5000, 0, 0)
    assert txn.metadata == {"customer": "cus_1"}
    assert balances(db_engine) == {"@stripe": (0, 0, 5000), "wallet:alice": (0, 5000, 0)}
    assert_invariants(db_engine)


def test_creates_an_applied_transaction_directly(db_engine):
    txn = run(db_engine, lambda lg: lg.create(new(inflight=False)))
    assert txn.status is TxnStatus.APPLIED
    assert txn.committed_amount == 5000
    assert balances(db_engine) == {"@stripe": (-5000, 0, 0), "wallet:alice": (5000, 0, 0)}
    assert_invariants(db_engine)


def test_keeps_an_expiry_time(db_engine):
    when = datetime(2026, 12, 1, 12, tzinfo=UTC)
    txn = run(db_engine, lambda lg: lg.create(new(expires_at=when)))
    assert txn.expires_at == when


def test_a_create_retried_with_the_same_terms_returns_the_same_transaction(db_engine):
    first = run(db_engine, lambda lg: lg.create(new()))
    again = run(db_engine, lambda lg: lg.create(new()))
    assert again.id == first.id
    assert balances(db_engine)["wallet:alice"] == (0, 5000, 0)


def test_a_create_with_a_used_reference_and_other_terms_is_a_conflict(db_engine):
    run(db_engine, lambda lg: lg.create(new()))
    with pytest.raises(ReferenceConflict):
        run(db_engine, lambda lg: lg.create(new(amount=4999)))


def test_commits_in_full(db_engine):
    run(db_engine, lambda lg: lg.create(new()))
    txn = run(db_engine, lambda lg: lg.commit("pi_1"))
    assert txn.status is TxnStatus.APPLIED
    assert txn.committed_amount == 5000
    assert balances(db_engine) == {"@stripe": (-5000, 0, 0), "wallet:alice": (5000, 0, 0)}
    assert_invariants(db_engine)


def test_commits_in_parts_until_the_amount_is_used_up(db_engine):
    run(db_engine, lambda lg: lg.create(new()))
    assert run(db_engine, lambda lg: lg.commit("pi_1", 2000)).status is TxnStatus.INFLIGHT
    assert run(db_engine, lambda lg: lg.commit("pi_1", 1000)).committed_amount == 3000
    last = run(db_engine, lambda lg: lg.commit("pi_1", 2000))
    assert (last.status, last.committed_amount) == (TxnStatus.APPLIED, 5000)
    with pytest.raises(AlreadyCommitted):
        run(db_engine, lambda lg: lg.commit("pi_1", 1))
    assert_invariants(db_engine)


def test_refuses_to_commit_more_than_is_left(db_engine):
    run(db_engine, lambda lg: lg.create(new()))
    run(db_engine, lambda lg: lg.commit("pi_1", 4000))
    with pytest.raises(CommitAmountExceeded):
        run(db_engine, lambda lg: lg.commit("pi_1", 1001))
    assert run(db_engine, lambda lg: lg.get("pi_1")).committed_amount == 4000


def test_a_commit_retried_after_it_happened_is_a_no_op(db_engine):
    run(db_engine, lambda lg: lg.create(new()))
    run(db_engine, lambda lg: lg.commit("pi_1"))
    again = run(db_engine, lambda lg: lg.commit("pi_1"))
    assert again.committed_amount == 5000
    assert balances(db_engine)["wallet:alice"] == (5000, 0, 0)


def test_a_partial_commit_retried_with_its_key_is_a_no_op(db_engine):
    run(db_engine, lambda lg: lg.create(new()))
    run(db_engine, lambda lg: lg.commit("pi_1", 3000, idempotency_key="capture-1"))
    again = run(db_engine, lambda lg: lg.commit("pi_1", 3000, idempotency_key="capture-1"))
    assert again.committed_amount == 3000
    assert_invariants(db_engine)


def test_voids_an_inflight_transaction_and_releases_the_reservation(db_engine):
    run(db_engine, lambda lg: lg.create(new()))
    txn = run(db_engine, lambda lg: lg.void("pi_1"))
    assert (txn.status, txn.voided_amount) == (TxnStatus.VOID, 5000)
    assert balances(db_engine) == {"@stripe": (0, 0, 0), "wallet:alice": (0, 0, 0)}
    assert run(db_engine, lambda lg: lg.void("pi_1")).voided_amount == 5000  # retry: no-op
    assert_invariants(db_engine)


def test_void_after_a_partial_commit_releases_only_the_rest(db_engine):
    run(db_engine, lambda lg: lg.create(new()))
    run(db_engine, lambda lg: lg.commit("pi_1", 3000))
    txn = run(db_engine, lambda lg: lg.void("pi_1"))
    assert (txn.status, txn.committed_amount, txn.voided_amount) == (TxnStatus.APPLIED, 3000, 2000)
    assert balances(db_engine) == {"@stripe": (-3000, 0, 0), "wallet:alice": (3000, 0, 0)}
    assert_invariants(db_engine)


def test_committing_a_voided_transaction_is_a_typed_error(db_engine):
    run(db_engine, lambda lg: lg.create(new()))
    run(db_engine, lambda lg: lg.void("pi_1"))
    with pytest.raises(AlreadyVoided):
        run(db_engine, lambda lg: lg.commit("pi_1"))


def test_voiding_a_fully_committed_transaction_is_a_typed_error(db_engine):
    run(db_engine, lambda lg: lg.create(new()))
    run(db_engine, lambda lg: lg.commit("pi_1"))
    with pytest.raises(AlreadyCommitted):
        run(db_engine, lambda lg: lg.void("pi_1"))


def test_operations_on_an_unknown_reference_raise_not_found(db_engine):
    with pytest.raises(TransactionNotFound):
        run(db_engine, lambda lg: lg.commit("pi_nope"))
    with pytest.raises(TransactionNotFound):
        run(db_engine, lambda lg: lg.void("pi_nope"))
    assert run(db_engine, lambda lg: lg.get("pi_nope")) is None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"amount": -1}, InvalidAmount),
        ({"amount": 0}, InvalidAmount),
        ({"currency": "XXX"}, UnknownCurrency),
        ({"ref": " "}, InvalidInput),
        ({"destination": "@stripe"}, InvalidInput),
    ],
)
def test_refuses_bad_input_and_writes_nothing(db_engine, kwargs, error):
    with pytest.raises(error):
        run(db_engine, lambda lg: lg.create(new(**kwargs)))
    assert balances(db_engine) == {}


def test_a_named_balance_keeps_its_currency_and_refuses_another_with_a_clear_error(db_engine):
    run(db_engine, lambda lg: lg.create(new()))
    with pytest.raises(CurrencyMismatch, match="'wallet:alice' holds USD; it cannot take EUR"):
        run(db_engine, lambda lg: lg.create(new("pi_2", currency="EUR")))
    assert "pi_2" not in {t.reference for t in run(db_engine, lambda lg: lg.list_transactions())}


def test_an_indicator_balance_exists_once_per_currency_created_on_first_use(db_engine):
    run(db_engine, lambda lg: lg.create(new("pi_usd", 5000, "USD", inflight=False)))
    run(db_engine, lambda lg: lg.create(new("pi_jpy", 700, "JPY", destination="w:jp")))
    run(db_engine, lambda lg: lg.create(new("pi_eur", 900, "EUR", destination="w:eu")))
    run(db_engine, lambda lg: lg.commit("pi_jpy"))
    got = {(b.name, b.currency): b for b in run(db_engine, lambda lg: lg.balances())}
    assert sorted(k for k in got if k[0] == "@stripe") == [
        ("@stripe", "EUR"),
        ("@stripe", "JPY"),
        ("@stripe", "USD"),
    ]
    assert got[("@stripe", "USD")].balance == -5000
    assert got[("@stripe", "JPY")].balance == -700
    assert got[("@stripe", "EUR")].inflight_debit == 900
    assert str(got[("@stripe", "JPY")]).startswith("@stripe (JPY): -700 JPY applied")
    assert_invariants(db_engine)


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


def test_handles_zero_decimal_currencies_in_minor_units(db_engine):
    txn = run(db_engine, lambda lg: lg.create(new(amount=500, currency="jpy", destination="w:jp")))
    assert (txn.amount, txn.currency) == (500, "JPY")
    assert run(db_engine, lambda lg: lg.commit(txn.reference)).committed_amount == 500


def test_finds_a_transaction_by_its_stripe_payment_intent_link(db_engine):
    run(
        db_engine, lambda lg: lg.create(new("order-77", metadata={"stripe_payment_intent": "pi_9"}))
    )
    assert run(db_engine, lambda lg: lg.find_linked("pi_9")).reference == "order-77"
    assert run(db_engine, lambda lg: lg.find_linked("order-77")).reference == "order-77"
    assert run(db_engine, lambda lg: lg.find_linked("pi_other")) is None


def test_claims_only_old_inflight_entries_and_not_twice_within_a_lease(db_engine):
    now = datetime.now(UTC)
    for i in range(5):
        run(db_engine, lambda lg, i=i: lg.create(new(f"pi_{i}")))
    run(db_engine, lambda lg: lg.commit("pi_0"))
    later = now + timedelta(hours=1)
    first = run(db_engine, lambda lg: lg.claim_inflight(later, 3, timedelta(minutes=5), later))
    second = run(db_engine, lambda lg: lg.claim_inflight(later, 10, timedelta(minutes=5), later))
    assert len(first) == 3 and len(second) == 1
    assert {t.reference for t in first} | {t.reference for t in second} == {
        "pi_1",
        "pi_2",
        "pi_3",
        "pi_4",
    }
    assert (
        run(
            db_engine,
            lambda lg: lg.claim_inflight(now - timedelta(hours=1), 10, timedelta(minutes=5), later),
        )
        == []
    )
    # A crashed claimer's lease runs out and the entries come back.
    after_lease = later + timedelta(minutes=6)
    assert (
        len(
            run(
                db_engine,
                lambda lg: lg.claim_inflight(after_lease, 10, timedelta(minutes=5), after_lease),
            )
        )
        == 4
    )


def test_concurrent_claimers_never_take_the_same_entry(pg_engine):
    for i in range(200):
        run(pg_engine, lambda lg, i=i: lg.create(new(f"pi_{i:03}")))
    later = datetime.now(UTC) + timedelta(hours=1)
    taken: list[list[str]] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)

    def claimer(slot: int) -> None:
        barrier.wait()
        while True:
            batch = run(
                pg_engine, lambda lg: lg.claim_inflight(later, 7, timedelta(minutes=5), later)
            )
            if not batch:
                return
            taken[slot].extend(t.reference for t in batch)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [r for slot in taken for r in slot]
    assert len(everything) == 200
    assert len(set(everything)) == 200


@pytest.mark.parametrize("rounds", [range(20)])
def test_a_commit_and_a_void_racing_on_one_entry_have_exactly_one_winner(db_engine, rounds):
    for n in rounds:
        ref = f"pi_race_{n}"
        run(db_engine, lambda lg: lg.create(new(ref)))
        barrier = threading.Barrier(2)
        outcome: dict[str, object] = {}

        def attempt(op: str) -> None:
            with db_engine.connect() as conn:
                barrier.wait()
                try:
                    with conn.begin():
                        ledger = SqlLedger(conn)
                        ledger.commit(ref) if op == "commit" else ledger.void(ref)
                    outcome[op] = "won"
                except StateError as exc:
                    outcome[op] = exc

        threads = [threading.Thread(target=attempt, args=(op,)) for op in ("commit", "void")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [op for op, res in outcome.items() if res == "won"]
        losers = [res for res in outcome.values() if res != "won"]
        assert len(winners) == 1, outcome
        assert len(losers) == 1 and isinstance(losers[0], AlreadyCommitted | AlreadyVoided)
        final = run(db_engine, lambda lg: lg.get(ref))
        assert final.status is (TxnStatus.APPLIED if winners == ["commit"] else TxnStatus.VOID)
    assert_invariants(db_engine)


def test_concurrent_partial_commits_never_exceed_the_amount(pg_engine):
    run(pg_engine, lambda lg: lg.create(new(amount=1000)))
    results: list[object] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait()
        try:
            run(pg_engine, lambda lg: lg.commit("pi_1", 300))
            results.append("ok")
        except CommitAmountExceeded as exc:
            results.append(exc)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 3
    assert run(pg_engine, lambda lg: lg.get("pi_1")).committed_amount == 900
    assert_invariants(pg_engine)


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
