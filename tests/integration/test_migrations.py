"""Alembic migrations on both dialects: data kept, the schema the code declares at the end."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, text

import worker.db
from ledger.model import NewTransaction
from ledger.sql import SqlLedger
from worker.schema import all_metadata

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_db(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_schema")
    else:
        yield f"sqlite:///{tmp_path / 'migrate.db'}"


def _seed_at_0002(engine: Engine) -> None:
    """Rows as the 0002 schema held them: one currency per balance name."""
    now = datetime(2026, 11, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ledger_balances (name, currency, balance, inflight_credit, "
                "inflight_debit, created_at) VALUES ('@stripe', 'USD', -300, 0, 500, :n), "
                "('wallet:a', 'USD', 300, 500, 0, :n)"
            ),
            {"n": now},
        )
        for ref, status, committed in (("pi_1", "INFLIGHT", 0), ("pi_2", "APPLIED", 300)):
            conn.execute(
                text(
                    "INSERT INTO ledger_transactions (id, reference, source, destination, "
                    "amount, currency, status, committed_amount, voided_amount, link, meta, "
                    "created_at, updated_at) VALUES (:id, :ref, '@stripe', 'wallet:a', :amount, "
                    "'USD', :status, :committed, 0, :ref, '{}', :n, :n)"
                ),
                {
                    "id": "txn_" + ref,
                    "ref": ref,
                    "amount": 500 if status == "INFLIGHT" else 300,
                    "status": status,
                    "committed": committed,
                    "n": now,
                },
            )
            conn.execute(
                text(
                    "INSERT INTO ledger_postings (transaction_id, kind, amount, created_at) "
                    "VALUES (:id, 'create', 1, :n)"
                ),
                {"id": "txn_" + ref, "n": now},
            )


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "target_metadata": all_metadata()}
        )
        return list(compare_metadata(ctx, all_metadata()))


def test_upgrading_a_0002_database_keeps_its_rows_and_ends_with_the_declared_schema(empty_db):
    worker.db.upgrade(empty_db, "0002")
    engine = worker.db.make_engine(empty_db)
    try:
        _seed_at_0002(engine)
        worker.db.upgrade(empty_db)
        assert _diff(engine) == []
        with engine.begin() as conn:
            ledger = SqlLedger(conn)
            assert ledger.check_invariants() == []
            assert ledger.get("pi_1").remaining == 500
            ledger.commit("pi_1", 200)
            # The new semantics work on the migrated rows: @stripe takes a second currency,
            # wallet:a refuses one.
            ledger.create(NewTransaction("pi_3", "@stripe", "wallet:jp", 900, "JPY"))
            assert {b.label for b in ledger.balances()} == {
                "@stripe (USD)",
                "@stripe (JPY)",
                "wallet:a (USD)",
                "wallet:jp (JPY)",
            }
            assert ledger.check_invariants() == []
    finally:
        engine.dispose()


def test_sqlite_foreign_keys_are_back_on_and_whole_after_the_rebuild(tmp_path):
    url = f"sqlite:///{tmp_path / 'fk.db'}"
    worker.db.upgrade(url, "0002")
    engine = worker.db.make_engine(url)
    try:
        _seed_at_0002(engine)
        worker.db.upgrade(url)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    finally:
        engine.dispose()


def test_the_indicator_migration_downgrades_while_every_name_holds_one_currency(empty_db):
    worker.db.upgrade(empty_db, "0002")
    engine = worker.db.make_engine(empty_db)
    try:
        _seed_at_0002(engine)
        worker.db.upgrade(empty_db, "0003")
        command.downgrade(worker.db.alembic_config(empty_db), "0002")
        with engine.connect() as conn:
            count = conn.execute(text("SELECT count(*) FROM ledger_transactions")).scalar()
        assert count == 2
        worker.db.upgrade(empty_db)
        assert _diff(engine) == []
    finally:
        engine.dispose()
