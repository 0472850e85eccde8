"""Builds the reconciliation services from Settings: one place that knows every knob."""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy import Connection

from ledger.blnk import BlnkClient, BlnkLedger
from ledger.protocol import Ledger
from ledger.sql import SqlLedger
from reconcile.guard import Guard
from reconcile.ports import Hooks, Services
from reconcile.ratelimit import EndpointLimiters, RateLimiter, make_rate_limiter
from reconcile.stripe_gateway import StripeGateway
from worker import metrics
from worker.db import engine_for
from worker.settings import Settings, get_settings

_lock = threading.Lock()
_cache: dict[int, Services] = {}


class ConfigError(RuntimeError):
    pass


def sinks_of(settings: Settings) -> tuple[str, ...]:
    out: list[str] = []
    if settings.ticket_webhook_url:
        out.append("webhook")
    if settings.slack_webhook_url:
        out.append("slack")
    return tuple(out)


def ledger_factory(settings: Settings) -> Callable[[Connection], Ledger]:
    """What binds a ledger to a connection: SqlLedger, or BlnkLedger over one shared client.

    The Blnk key goes into the client and nowhere else: never into a message or a log.
    """
    if settings.ledger == "sql":
        return SqlLedger
    url = (settings.blnk_url or "").strip()
    key = settings.blnk_api_key.get_secret_value().strip()
    if not url:
        raise ConfigError(
            "RECON_LEDGER=blnk needs BLNK_URL (Blnk Core's address, e.g. http://blnk:5001)"
        )
    if not url.startswith(("http://", "https://")):
        # Not echoed: a URL may carry credentials.
        raise ConfigError("BLNK_URL must start with http:// or https:// (e.g. http://blnk:5001)")
    if not key:
        raise ConfigError(
            "RECON_LEDGER=blnk needs BLNK_API_KEY (scopes: transactions:read, "
            "transactions:write, balances:read)"
        )
    client = BlnkClient(url, key, on_request=metrics.blnk_request)

    def blnk_ledger(conn: Connection) -> Ledger:
        return BlnkLedger(conn, client)

    return blnk_ledger


def build_services(settings: Settings) -> Services:
    ledger_for = ledger_factory(settings)
    if settings.customer_updates and not settings.ticket_webhook_url:
        raise ConfigError(
            "RECON_CUSTOMER_UPDATES is on but RECON_TICKET_WEBHOOK_URL is not set: "
            "customer.update messages go to the ticket webhook sink"
        )
    engine = engine_for(settings.database_url)
    burst = settings.stripe_rate_burst
    limiter: RateLimiter = make_rate_limiter(
        settings.redis_url, settings.stripe_global_rate, burst=burst
    )
    endpoints = EndpointLimiters(
        settings.redis_url, settings.stripe_endpoint_rate_limit, burst=burst
    )
    api_key = settings.stripe_api_key.get_secret_value()

    def new_gateway() -> StripeGateway:
        if not api_key:
            raise ConfigError("STRIPE_API_KEY is not set: Stripe cannot be read")
        return StripeGateway(
            api_key,
            settings.stripe_api_base,
            limiter,
            endpoint_limiter=endpoints,
            api_version=settings.stripe_api_version,
            on_request=metrics.stripe_request,
        )

    return Services(
        engine=engine,
        ledger_for=ledger_for,
        new_gateway=new_gateway,
        policy=settings.policy(),
        guard=Guard(
            max_voids=settings.max_voids,
            max_void_share=settings.max_void_share,
            max_new_tickets=settings.max_new_tickets,
            max_ticket_share=settings.max_ticket_share,
        ),
        sinks=sinks_of(settings),
        customer_updates=settings.customer_updates,
        dashboard_base=settings.dashboard_base,
        sweep_min_age=settings.sweep_min_age,
        sweep_batch=settings.sweep_batch,
        sweep_read_ahead=settings.sweep_read_ahead,
        livemode=settings.stripe_livemode,
        accounts=settings.connect_accounts,
        catch_up_first_window=settings.catch_up_first_window,
        run_heartbeat=settings.run_heartbeat,
        run_stale_after=settings.run_stale_after,
        hooks=Hooks(
            action=metrics.count_action,
            ticket=metrics.count_ticket,
            run=metrics.count_run,
            stripe_request=metrics.stripe_request,
            event_refused=metrics.count_event_refused,
        ),
    )


def services(settings: Settings | None = None) -> Services:
    """Per-process Services, built once per Settings object."""
    s = settings or get_settings()
    with _lock:
        svc = _cache.get(id(s))
        if svc is None:
            svc = _cache[id(s)] = build_services(s)
        return svc


def reset() -> None:
    with _lock:
        _cache.clear()
