"""Blnk adapter: claims/locks per reference, and idempotency keys of partial commits

Blnk has no row locks to offer a client, so BlnkLedger (ledger/blnk.py) keeps its own rows
in the service's database: a row per reference to lock (``find_linked(lock=True)``) and to
lease (the sweep's claims), and the key -> child of keyed partial commits.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_blnk_claims",
        sa.Column("reference", sa.String(length=255), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("reference"),
    )
    op.create_table(
        "ledger_blnk_commit_keys",
        sa.Column("reference", sa.String(length=255), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("child_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("reference", "idempotency_key"),
    )


def downgrade() -> None:
    op.drop_table("ledger_blnk_commit_keys")
    op.drop_table("ledger_blnk_claims")
