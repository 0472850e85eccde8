"""Every table the service owns, for Alembic and for tests that build schemas."""

from __future__ import annotations

from sqlalchemy import MetaData

from ledger.blnk import metadata as blnk_metadata
from ledger.sql import metadata as ledger_metadata
from reconcile.tables import metadata as reconcile_metadata
from worker.operators import metadata as operators_metadata


def all_metadata() -> list[MetaData]:
    return [ledger_metadata, blnk_metadata, reconcile_metadata, operators_metadata]
