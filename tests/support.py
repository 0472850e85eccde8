"""Helpers shared by integration tests, the demo and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, func, select, text

from ledger.model import NewTransaction
from ledger.protocol import Ledger
from ledger.sql import SqlLedger
from reconcile.guard import Guard
from reconcile.model import Policy
from reconcile.ports import Services
from reconcile.ratelimit import LocalRateLimiter
from reconcile.stripe_gateway import StripeGateway
from reconcile.tables import tickets
from worker.db import make_engine, normalize_url
from worker.schema import all_metadata

PG_URL = os.environ.get(
    "RECON_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def schema_url(schema: str, base: str = PG_URL) -> str:
    """``base`` with every connection's search_path set to ``schema``."""
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def throwaway_schema(
    prefix: str = "t_", *, tables: bool = False, admin: Engine | None = None
) -> Iterator[str]:
    """A fresh PostgreSQL schema (optionally with every table) for one test or benchmark;
    yields its URL and drops the schema afterwards, whatever happened."""
    schema = prefix + uuid.uuid4().hex[:12]
    own = admin is None
    admin = admin or create_engine(normalize_url(PG_URL))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = schema_url(schema)
    try:
        if tables:
            engine = make_engine(url)
            for md in all_metadata():
                md.create_all(engine)
            engine.dispose()
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        if own:
            admin.dispose()


def gateway_for(url: str, api_key: str, *, rate: float = 1000.0, **kw: Any) -> StripeGateway:
    kw.setdefault("backoff_initial", 0.01)
    kw.setdefault("backoff_max", 0.2)
    return StripeGateway(api_key, url, LocalRateLimiter(rate), **kw)


def make_services(
    engine: Engine,
    stripe_url: str,
    api_key: str,
    *,
    policy: Policy | None = None,
    guard: Guard | None = None,
    rate: float = 1000.0,
    gateway_kw: dict[str, Any] | None = None,
    ledger_for: Callable[[Connection], Ledger] = SqlLedger,
    **kw: Any,
) -> Services:
    limiter = LocalRateLimiter(rate)
    gkw = {"backoff_initial": 0.01, "backoff_max": 0.2, **(gateway_kw or {})}
    return Services(
        engine=engine,
        ledger_for=ledger_for,
        new_gateway=lambda: StripeGateway(api_key, stripe_url, limiter, **gkw),
        policy=policy or Policy(),
        guard=guard or Guard(),
        **kw,
    )


def seed_entry(
    engine: Engine,
    reference: str,
    amount: int,
    currency: str = "USD",
    *,
    created: datetime,
    destination: str = "wallet:cus_1",
    source: str = "@stripe",
    status: str = "INFLIGHT",
    metadata: dict[str, Any] | None = None,
) -> None:
    """An entry as the application writes it, backdated to ``created``."""
    with engine.begin() as conn:
        ledger = SqlLedger(conn, clock=lambda: created)
        ledger.create(
            NewTransaction(
                reference,
                source,
                destination,
                amount,
                currency,
                inflight=status != "APPLIED",
                metadata=metadata or {},
            )
        )
        if status == "VOID":
            ledger.void(reference)


def seed_blnk_entry(
    state: Any,
    reference: str,
    amount: int,
    currency: str = "USD",
    *,
    created: datetime,
    destination: str,
    source: str = "@stripe",
    status: str = "INFLIGHT",
    metadata: dict[str, Any] | None = None,
) -> None:
    """An entry as an application writes it into Blnk (``state``: a tests.blnk_server
    BlnkState), backdated to ``created``: precise_amount at the currency's precision,
    skip_queue, the ``@stripe`` side allowed to go negative."""
    from ledger.money import exponent

    body: dict[str, Any] = {
        "reference": reference,
        "precise_amount": amount,
        "precision": 10 ** exponent(currency),
        "currency": currency,
        "source": source,
        "destination": destination,
        "description": f"top-up {reference}",
        "inflight": status != "APPLIED",
        "skip_queue": True,
        "allow_overdraft": source.startswith("@"),
    }
    if metadata:
        body["meta_data"] = dict(metadata)
    code, txn = state.create_transaction(body, at=created)
    assert code == 201, txn
    if status == "VOID":
        state.update_inflight(txn["transaction_id"], "void", None, skip_queue=True, at=created)


def epoch(when: datetime) -> int:
    return int(when.timestamp())


def open_tickets(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(tickets).where(tickets.c.status == "open").order_by(tickets.c.id)
        ).mappings()
        return [dict(r) for r in rows]


def ticket_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(tickets)).scalar_one())


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def ago(**kw: float) -> datetime:
    return now_utc() - timedelta(**kw)
