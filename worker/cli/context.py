"""What every command needs: settings, an engine, a ledger bound to a connection."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import NoReturn

from pydantic import ValidationError
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, NoSuchModuleError

from ledger.errors import LedgerError
from ledger.protocol import Ledger, rehearsal
from reconcile.ports import Services
from reconcile.redact import redact
from worker.cli.output import EXIT_ATTENTION, fail
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
            # The message, never the value: a setting may hold a secret (a key, a URL with
            # its password), and pydantic's messages quote what they refused.
            fail(f"bad configuration: {where}: {redact(str(first.get('msg')))}")

    @cached_property
    def engine(self) -> Engine:
        url = self.settings.database_url
        try:
            return engine_for(url)
        except (ArgumentError, NoSuchModuleError, ValueError) as exc:
            # The URL itself is not shown: it holds the database password.
            fail(f"bad configuration: RECON_DATABASE_URL is not a usable database URL "
                 f"({type(exc).__name__})")  # fmt: skip

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except DataError as exc:
            fail_database(exc)
        except DBAPIError as exc:
            fail(database_problem(exc), 1)

    @cached_property
    def ledger_for(self) -> Callable[[Connection], Ledger]:
        """The configured ledger (RECON_LEDGER): SqlLedger, or BlnkLedger."""
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
    def rehearse(self) -> Iterator[Connection]:
        """A transaction that is always rolled back, marked as a rehearsal so that a ledger
        whose writes would not roll back (Blnk) sends none: what --dry-run runs in."""
        with self.begin() as conn:
            nested = conn.begin_nested()
            try:
                with rehearsal(conn, True):
                    yield conn
            finally:
                nested.rollback()

    @contextmanager
    def ledger(self) -> Iterator[Ledger]:
        """A read of the configured ledger; its errors end the command in one line."""
        with self.begin() as conn:
            ledger = self.ledger_for(conn)
            try:
                yield ledger
            except LedgerError as exc:
                fail(f"{type(exc).__name__}: {exc}", EXIT_ATTENTION)


app_state = App()

_NOT_MIGRATED = ("no such table", "does not exist", "no such column", "undefinedtable")


def fail_database(exc: DBAPIError) -> NoReturn:
    """End the command in one line: exit 2 when the database refused a value (out of range,
    a NUL...), which is bad input and no outage; exit 1 when the database is the problem."""
    if isinstance(exc, DataError):
        fail(f"the database refused a value: {database_problem(exc, outage=False)}")
    fail(database_problem(exc), EXIT_ATTENTION)


def database_problem(exc: DBAPIError, *, outage: bool = True) -> str:
    """One line saying what is wrong with the database, secrets masked."""
    detail = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
    first = redact(detail[0] if detail else type(exc).__name__)
    if not outage:
        return first
    if any(m in first.lower() for m in _NOT_MIGRATED):
        return (
            f"the database is not migrated to this version ({first}); run `recon db upgrade` first"
        )
    return f"database unavailable: {first}"
