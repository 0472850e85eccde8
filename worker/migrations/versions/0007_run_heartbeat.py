"""run heartbeat: recon_runs.heartbeat_at, holder, claimed

A run whose worker died (SIGKILL, OOM, a lost node) used to stay ``running`` for ever with
its claims held until their lease ended.  A running run now writes ``heartbeat_at`` every
few seconds; one whose heartbeat stopped is marked ``partial`` and the ledger references in
``claimed`` are given back.  Runs that were ``running`` before this migration have no
heartbeat: their ``started_at`` stands in for it, so an old orphan is reaped by the first
run after the upgrade.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("recon_runs") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("holder", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("claimed", sa.JSON(), nullable=True))
    op.create_index("ix_recon_runs_status", "recon_runs", ["status"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_recon_runs_status", table_name="recon_runs")
    with op.batch_alter_table("recon_runs") as batch:
        batch.drop_column("claimed")
        batch.drop_column("holder")
        batch.drop_column("heartbeat_at")
