"""Helpers for the console's tests (ASGI and browser): settings, a settable clock, operators,
tickets seeded as the pipeline writes them, and signing in."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from ledger.sql import transactions
from reconcile.model import Policy
from reconcile.tables import audit, tickets
from reconcile.usecases import reconcile_payment
from tests.support import ago, epoch, make_services, seed_entry
from worker import operators as ops
from worker.settings import Settings

SECRET = "test-console-secret-" + "x" * 24
PASSWORD = "correct horse battery staple"


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


def console_settings(url: str, **kw: Any) -> Settings:
    values: dict[str, Any] = {"database_url": url, "console_secret": SECRET, **kw}
    return Settings(**values)


def add_operator(
    engine: Engine,
    name: str,
    role: str = "operator",
    *,
    email: str | None = None,
    password: str | None = None,
) -> ops.Operator:
    with engine.begin() as conn:
        return ops.add_operator(
            conn,
            name,
            email or f"{re.sub(r'[^a-z0-9]', '', name.lower()) or 'op'}@example.com",
            role,
            now=datetime.now(UTC),
            password=password,
        )


def session_cookie(app: Any, engine: Engine, operator: ops.Operator, *, now: datetime) -> str:
    """A signed session cookie value for ``operator``, as signing in would set it."""
    with engine.begin() as conn:
        token = ops.create_session(conn, operator, via="password", address="test", now=now)
    return app.state.console.cookies.session_value(token)


def seed_ticket(engine: Engine, **values: Any) -> int:
    now = values.pop("now", None) or datetime.now(UTC)
    row = {
        "kind": "stuck_payment",
        "severity": 3,
        "status": "open",
        "payment_id": "pi_seeded",
        "summary": "stuck_payment: payment pi_seeded is processing",
        "suggested_fix": "Check the dashboard.",
        "reason": "processing_past_sla",
        "opened_at": now,
        "last_seen_at": now,
        "occurrences": 1,
        "amount": 200000,
        "currency": "USD",
        **values,
    }
    with engine.begin() as conn:
        return int(
            conn.execute(tickets.insert().values(**row).returning(tickets.c.id)).scalar_one()
        )


def stuck_ticket_that_stripe_now_says_succeeded(
    engine: Engine, stripe: Any, pid: str = "pi_stuck_topup", amount: int = 200000
) -> int:
    """The pipeline's own path: an INFLIGHT top-up whose payment stayed processing past the
    SLA gets a stuck_payment ticket; afterwards Stripe says it succeeded."""
    stripe.state.create_payment_intent(
        id=pid,
        amount=amount,
        currency="usd",
        status="processing",
        created=epoch(ago(hours=3)),
        customer="cus_praise",
        metadata={"ledger_destination": "wallet:praise"},
        record_events=False,
    )
    seed_entry(
        engine,
        pid,
        amount,
        created=ago(hours=3),
        destination="wallet:praise",
        metadata={"customer_email": "praise@example.com"},
    )
    svc = make_services(
        engine, stripe.url, stripe.api_key, policy=Policy(processing_sla=timedelta(hours=1))
    )
    reconcile_payment(svc, pid, actor="system")
    with engine.connect() as conn:
        tid = conn.execute(
            select(tickets.c.id).where(tickets.c.payment_id == pid, tickets.c.status == "open")
        ).scalar_one()
    stripe.state.update_payment_intent(pid, status="succeeded", record_events=False)
    return int(tid)


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Everything a fix could change."""
    out = {}
    with engine.connect() as conn:
        for name, table, key in (
            ("tickets", tickets, tickets.c.id),
            ("audit", audit, audit.c.id),
            ("transactions", transactions, transactions.c.id),
        ):
            out[name] = [dict(r) for r in conn.execute(select(table).order_by(key)).mappings()]
    return out
