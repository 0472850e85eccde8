"""What every command needs: settings, an engine, a ledger bound to a connection."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

from pydantic import ValidationError
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError, ProgrammingError

from ledger.protocol import Ledger
from reconcile.ports import Services
from worker.cli.output import fail
from worker.db import engine_for
from worker.settings import Settings


@dataclass
class App:
    @cached_property
    def settings(self) -> Settings:
        try:
            return Settings()
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
            fail(f"bad configuration: {where}: {first.get('msg')}")

    @cached_property
    def engine(self) -> Engine:
        return engine_for(self.settings.database_url)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except (OperationalError, ProgrammingError) as exc:
            detail = str(exc.orig).splitlines()[0] if exc.orig else str(exc)
            if "no such table" in detail or "does not exist" in detail:
                fail(f"the database has no schema yet ({detail}); run `recon db upgrade` first", 1)
            fail(f"database unavailable: {detail}", 1)

    @contextmanager
    def rehearse(self) -> Iterator[Connection]:
        """A transaction that is always rolled back: what --dry-run runs in."""
        with self.begin() as conn:
            nested = conn.begin_nested()
            try:
                yield conn
            finally:
                nested.rollback()

    @cached_property
    def ledger_for(self) -> Callable[[Connection], Ledger]:
        from worker.wiring import ConfigError, ledger_factory

        try:
            return ledger_factory(self.settings)
        except ConfigError as exc:
            fail(str(exc))

    def services(self) -> Services:
        """The use cases' services, without reading Stripe (no API key needed)."""
        from worker.wiring import ConfigError, build_services

        try:
            return build_services(self.settings)
        except ConfigError as exc:
            fail(str(exc))

    @contextmanager
    def ledger(self) -> Iterator[Ledger]:
        with self.begin() as conn:
            yield self.ledger_for(conn)


app_state = App()
