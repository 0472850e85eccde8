"""The migrations build exactly the schema the code declares, on both dialects."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from worker.db import make_engine, upgrade
from worker.schema import all_metadata


def _differences(url: str) -> list[object]:
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, list(all_metadata())))  # type: ignore[arg-type]
    finally:
        engine.dispose()


@pytest.mark.integration
def test_upgrading_postgresql_to_head_gives_the_declared_schema(pg_schema: str) -> None:
    assert _differences(pg_schema) == []


def test_upgrading_sqlite_to_head_gives_the_declared_schema(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert _differences(f"sqlite:///{tmp_path / 'recon.db'}") == []
