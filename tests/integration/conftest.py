"""Fixtures of the CLI tests: the local Stripe server and a migrated database (PostgreSQL
schema or SQLite file) with an ``invoke`` that runs `recon` against them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner, Result

import worker.db
import worker.settings
import worker.wiring
from tests.stripe_server import run_server
from worker.cli import app
from worker.cli.context import app_state

Invoke = Callable[..., Result]


def _fresh_state() -> None:
    # Settings, engine and services are cached per process; each invocation must read the
    # environment the test gives it.
    app_state.__dict__.pop("settings", None)
    app_state.__dict__.pop("engine", None)
    app_state.__dict__.pop("ledger_for", None)
    worker.settings.get_settings.cache_clear()
    worker.wiring.reset()


@pytest.fixture
def stripe() -> Iterator[Any]:
    with run_server() as srv:
        yield srv


def _make_invoke(url: str, srv: Any) -> Invoke:
    env = {
        "RECON_DATABASE_URL": url,
        "STRIPE_API_KEY": srv.api_key,
        "RECON_STRIPE_API_BASE": srv.url,
        "RECON_PROCESSING_SLA": "1h",
        "RECON_FAILED_GRACE": "1h",
    }

    def invoke(*args: str, extra_env: dict[str, str] | None = None) -> Result:
        _fresh_state()
        return CliRunner().invoke(app, list(args), env={**env, **(extra_env or {})})

    return invoke


@pytest.fixture
def pg(pg_schema: str, stripe: Any) -> Iterator[tuple[Engine, Invoke]]:
    worker.db.upgrade(pg_schema)
    engine = worker.db.engine_for(pg_schema)
    yield engine, _make_invoke(pg_schema, stripe)
    _fresh_state()
    engine.dispose()
    worker.db.engine_for.cache_clear()


@pytest.fixture
def lite(tmp_path: Any, stripe: Any) -> Iterator[tuple[Engine, Invoke]]:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    worker.db.upgrade(url)
    engine = worker.db.engine_for(url)
    yield engine, _make_invoke(url, stripe)
    _fresh_state()
    engine.dispose()
    worker.db.engine_for.cache_clear()


@pytest.fixture(params=["pg", "lite"])
def db(request: pytest.FixtureRequest) -> tuple[Engine, Invoke]:
    """The same CLI test on PostgreSQL and on a SQLite file."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]
