"""Shared fixtures: the real PostgreSQL and Redis (each test isolated), and SQLite.

Under CI=true an unreachable PostgreSQL or Redis fails the run loudly: integration tests
that quietly skip would let a broken ledger through.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from tests.support import PG_URL, throwaway_schema
from worker.db import make_engine, normalize_url
from worker.schema import all_metadata

REDIS_URL = os.environ.get("RECON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(what: str, exc: BaseException) -> None:
    msg = f"{what} unreachable: {exc}"
    if IN_CI:
        pytest.fail(f"{msg} (CI=true: integration tests must run, not skip)", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    engine = create_engine(normalize_url(PG_URL), pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        _unavailable("PostgreSQL", exc)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_schema(pg_admin: Engine) -> Iterator[str]:
    """A fresh, empty schema of its own; dropped afterwards.  Returns its database URL."""
    with throwaway_schema(admin=pg_admin) as url:
        yield url


@pytest.fixture
def pg_engine(pg_schema: str) -> Iterator[Engine]:
    engine = make_engine(pg_schema)
    for md in all_metadata():
        md.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'recon.db'}")
    for md in all_metadata():
        md.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def db_engine(request: pytest.FixtureRequest) -> Engine:
    """The same contract suite on both dialects the ledger supports."""
    name = "pg_engine" if request.param == "postgresql" else "sqlite_engine"
    return request.getfixturevalue(name)


@pytest.fixture
def redis_client():  # type: ignore[no-untyped-def]
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        _unavailable("Redis", exc)
    yield client
    client.close()
