"""Every table the service owns, for Alembic and for tests that build schemas."""

from __future__ import annotations

from sqlalchemy import MetaData


def all_metadata() -> list[MetaData]:
    from ledger.sql import metadata as ledger_md

    mds = [ledger_md]
    try:
        from reconcile.tables import metadata as recon_md
    except ImportError:  # pragma: no cover - before the reconcile tables exist
        pass
    else:
        mds.append(recon_md)
    return mds
