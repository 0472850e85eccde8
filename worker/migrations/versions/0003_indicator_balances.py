"""indicator balances: one row per (name, currency)

An indicator balance (``@stripe``) now exists once per currency, as in Blnk, so the
balances' key becomes (name, currency); a named balance still holds one currency, which a
partial unique index on the name enforces.  The transactions' foreign keys follow the new
key: (source, currency) and (destination, currency).  Existing rows fit as they are (until
now every name held exactly one currency and every transaction matched its balances').

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_NAMED = "substr(name, 1, 1) <> '@'"
# 0001 left its constraints unnamed: these are the names PostgreSQL gave them, and the
# names batch mode gives them on SQLite through this convention.
_CONVENTION = {
    "pk": "%(table_name)s_pkey",
    "fk": "%(table_name)s_%(column_0_name)s_fkey",
}


def upgrade() -> None:
    with op.batch_alter_table(
        "ledger_transactions", naming_convention=_CONVENTION, recreate="auto"
    ) as batch:
        batch.drop_constraint("ledger_transactions_source_fkey", type_="foreignkey")
        batch.drop_constraint("ledger_transactions_destination_fkey", type_="foreignkey")
    with op.batch_alter_table(
        "ledger_balances", naming_convention=_CONVENTION, recreate="auto"
    ) as batch:
        batch.drop_constraint("ledger_balances_pkey", type_="primary")
        batch.create_primary_key("ledger_balances_pkey", ["name", "currency"])
    op.create_index(
        "uq_ledger_balances_named",
        "ledger_balances",
        ["name"],
        unique=True,
        postgresql_where=sa.text(_NAMED),
        sqlite_where=sa.text(_NAMED),
    )
    with op.batch_alter_table(
        "ledger_transactions", naming_convention=_CONVENTION, recreate="auto"
    ) as batch:
        batch.create_foreign_key(
            "ledger_transactions_source_fkey",
            "ledger_balances",
            ["source", "currency"],
            ["name", "currency"],
        )
        batch.create_foreign_key(
            "ledger_transactions_destination_fkey",
            "ledger_balances",
            ["destination", "currency"],
            ["name", "currency"],
        )


def downgrade() -> None:
    # Only possible while no name holds two currencies: the old key was the name alone.
    with op.batch_alter_table(
        "ledger_transactions", naming_convention=_CONVENTION, recreate="auto"
    ) as batch:
        batch.drop_constraint("ledger_transactions_source_fkey", type_="foreignkey")
        batch.drop_constraint("ledger_transactions_destination_fkey", type_="foreignkey")
    op.drop_index("uq_ledger_balances_named", table_name="ledger_balances")
    with op.batch_alter_table(
        "ledger_balances", naming_convention=_CONVENTION, recreate="auto"
    ) as batch:
        batch.drop_constraint("ledger_balances_pkey", type_="primary")
        batch.create_primary_key("ledger_balances_pkey", ["name"])
    with op.batch_alter_table(
        "ledger_transactions", naming_convention=_CONVENTION, recreate="auto"
    ) as batch:
        batch.create_foreign_key(
            "ledger_transactions_source_fkey", "ledger_balances", ["source"], ["name"]
        )
        batch.create_foreign_key(
            "ledger_transactions_destination_fkey", "ledger_balances", ["destination"], ["name"]
        )
