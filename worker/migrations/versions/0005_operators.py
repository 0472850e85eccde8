"""console operators, their sessions and sign-in attempts (worker/operators.py)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 10:17:36.765738
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recon_operators",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "recon_console_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("operator_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("via", sa.String(length=10), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["operator_id"], ["recon_operators.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_recon_console_sessions_operator", "recon_console_sessions", ["operator_id"])
    op.create_table(
        "recon_console_login_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("login", sa.String(length=320), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_recon_console_login_attempts_login",
        "recon_console_login_attempts",
        ["login", "at"],
    )
    op.create_index(
        "ix_recon_console_login_attempts_address",
        "recon_console_login_attempts",
        ["address", "at"],
    )


def downgrade() -> None:
    op.drop_index(
        "ix_recon_console_login_attempts_address", table_name="recon_console_login_attempts"
    )
    op.drop_index(
        "ix_recon_console_login_attempts_login", table_name="recon_console_login_attempts"
    )
    op.drop_table("recon_console_login_attempts")
    op.drop_index("ix_recon_console_sessions_operator", table_name="recon_console_sessions")
    op.drop_table("recon_console_sessions")
    op.drop_table("recon_operators")
