"""customer index (recon customer) and the ledger index it reads transactions by

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recon_customers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("stripe_customer", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    op.create_table(
        "recon_customer_keys",
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("value", sa.String(length=400), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["recon_customers.id"]),
        sa.PrimaryKeyConstraint("kind", "value", "customer_id"),
    )
    op.create_index(
        "uq_recon_customer_keys_identity",
        "recon_customer_keys",
        ["kind", "value"],
        unique=True,
        postgresql_where=sa.text("kind <> 'name'"),
        sqlite_where=sa.text("kind <> 'name'"),
    )
    op.create_index(
        "ix_recon_customer_keys_name_prefix",
        "recon_customer_keys",
        ["value"],
        postgresql_ops={"value": "varchar_pattern_ops"},
        postgresql_where=sa.text("kind = 'name'"),
        sqlite_where=sa.text("kind = 'name'"),
    )
    op.create_index(
        "ix_recon_customer_keys_customer", "recon_customer_keys", ["customer_id"], unique=False
    )
    op.create_table(
        "recon_customer_payments",
        sa.Column("payment_id", sa.String(length=255), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("balance", sa.String(length=200), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("status", sa.String(length=30), nullable=True),
        sa.Column("amount_received", sa.BigInteger(), nullable=True),
        sa.Column("amount_refunded", sa.BigInteger(), nullable=True),
        sa.Column("disputed", sa.Boolean(), nullable=True),
        sa.Column("last_payment_error", sa.String(length=200), nullable=True),
        sa.Column("livemode", sa.Boolean(), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stripe_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["recon_customers.id"]),
        sa.PrimaryKeyConstraint("payment_id"),
    )
    op.create_index(
        "ix_recon_customer_payments_customer",
        "recon_customer_payments",
        ["customer_id", "created"],
        unique=False,
    )
    op.create_table(
        "recon_customer_updates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("change_key", sa.String(length=300), nullable=False),
        sa.Column("change", sa.String(length=40), nullable=False),
        sa.Column("payment_id", sa.String(length=255), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=True),
        sa.Column("customer", sa.String(length=255), nullable=True),
        sa.Column("customer_email", sa.String(length=320), nullable=True),
        sa.Column("customer_name", sa.String(length=200), nullable=True),
        sa.Column("balance", sa.String(length=200), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("change_key"),
    )
    op.create_index(
        "ix_recon_customer_updates_due",
        "recon_customer_updates",
        ["status", "next_attempt_at"],
        unique=False,
    )
    # A customer's recent transactions are read by their balance (reconcile/usecases/customers.py).
    op.create_index(
        "ix_ledger_transactions_destination_created",
        "ledger_transactions",
        ["destination", "created_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_transactions_destination_created", table_name="ledger_transactions")
    op.drop_index("ix_recon_customer_updates_due", table_name="recon_customer_updates")
    op.drop_table("recon_customer_updates")
    op.drop_index("ix_recon_customer_payments_customer", table_name="recon_customer_payments")
    op.drop_table("recon_customer_payments")
    op.drop_index("ix_recon_customer_keys_customer", table_name="recon_customer_keys")
    op.drop_index("ix_recon_customer_keys_name_prefix", table_name="recon_customer_keys")
    op.drop_index("uq_recon_customer_keys_identity", table_name="recon_customer_keys")
    op.drop_table("recon_customer_keys")
    op.drop_table("recon_customers")
