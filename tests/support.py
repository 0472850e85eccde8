"""Helpers shared by integration tests, the demo and the benchmarks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from ledger.model import NewTransaction
from ledger.sql import SqlLedger
from reconcile.engine import Guard, Services
from reconcile.model import Policy
from reconcile.ratelimit import LocalRateLimiter
from reconcile.stripe_gateway import StripeGateway
from reconcile.tables import tickets


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
    **kw: Any,
) -> Services:
    limiter = LocalRateLimiter(rate)
    gkw = {"backoff_initial": 0.01, "backoff_max": 0.2, **(gateway_kw or {})}
    return Services(
        engine=engine,
        ledger_for=SqlLedger,
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
