"""The ports of the reconciliation core: everything a use case needs from the outside.

``Services`` is the one object the worker (worker/wiring.py) builds from settings and tests
build by hand (tests/support.py): the database, the ledger bound to a connection, a factory
of Stripe gateways, the policy and the guard, ticket sinks, the clock, and metric hooks.
Nothing in reconcile/ reads settings or the environment itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from ledger.protocol import Ledger
from reconcile.guard import Guard
from reconcile.model import Policy
from reconcile.stripe_gateway import StripeGateway

__all__ = ["Hooks", "Services", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _noop(*_: Any) -> None:
    return None


@dataclass
class Hooks:
    """Callbacks for metrics; the worker plugs Prometheus in, tests leave them empty."""

    action: Callable[[str], None] = _noop
    ticket: Callable[[str, str], None] = _noop
    run: Callable[[str, str], None] = _noop
    stripe_request: Callable[[str, str], None] = _noop
    # (cause) when an event is stored but not acted on: another mode or Connect account.
    event_refused: Callable[[str], None] = _noop


@dataclass
class Services:
    engine: Engine
    ledger_for: Callable[[Connection], Ledger]
    new_gateway: Callable[[], StripeGateway]
    policy: Policy = field(default_factory=Policy)
    guard: Guard = field(default_factory=Guard)
    sinks: tuple[str, ...] = ()
    # Queue customer.update messages (RECON_CUSTOMER_UPDATES); off by default.
    customer_updates: bool = False
    dashboard_base: str = "https://dashboard.stripe.com"
    sweep_min_age: timedelta = timedelta(minutes=10)
    # Entries claimed, locked and settled together.  A set costs a fixed handful of
    # statements, so bigger sets drain a backlog faster: 10,000 dense entries took 5.97 s in
    # sets of 100 and 4.71 s in sets of 500 (tests/bench/reconcile.py, side by side).
    sweep_batch: int = 500
    # Entries whose Stripe state the sweep reads ahead of the batch it applies, per chunk:
    # listing a stretch of time once costs a part-filled page per chunk, so chunks are big.
    sweep_read_ahead: int = 2000
    claim_lease: timedelta = timedelta(minutes=10)
    clock: Callable[[], datetime] = utcnow
    hooks: Hooks = field(default_factory=Hooks)
    # The mode of the API key (True live, False test; None: unknown, not checked) and the
    # Connect accounts whose events this service acts on (none: only the platform's own).
    # An event from another mode or account is stored and never acted on.
    livemode: bool | None = None
    accounts: frozenset[str] = frozenset()
    # How far back a catch-up with no stored cursor reads (Stripe keeps 30 days of events).
    catch_up_first_window: timedelta = timedelta(days=3)
    # A running run writes its heartbeat this often; one silent for run_stale_after is
    # presumed dead (its worker was killed): marked partial, its claims given back.
    run_heartbeat: timedelta = timedelta(seconds=10)
    run_stale_after: timedelta = timedelta(seconds=60)
