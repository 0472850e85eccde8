"""Shared fixtures: the real PostgreSQL and Redis (each test isolated), and SQLite.

Under CI=true an unreachable PostgreSQL or Redis fails the run loudly: integration tests
that quietly skip would let a broken ledger through.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from worker.db import make_engine, normalize_url
from worker.schema import all_metadata

PG_URL = os.environ.get(
    "RECON_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
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


def schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_schema(pg_admin: Engine) -> Iterator[str]:
    """A fresh, empty schema of its own; dropped afterwards.  Returns its database URL."""
    schema = "t_" + uuid.uuid4().hex[:12]
    with pg_admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield schema_url(schema)
    finally:
        with pg_admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


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
