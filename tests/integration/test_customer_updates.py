"""customer.update: a customer hears that their top-up went through (or did not) before they
ask, through the ticket sinks' machinery: signed, retried, recorded, never sent twice for
one change, and off unless RECON_CUSTOMER_UPDATES is on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import responses
from sqlalchemy import Engine, select

from reconcile.checks import FixAction
from reconcile.tables import customer_updates
from reconcile.usecases import reconcile_payment, resolve_ticket, run_sweep
from tests.stripe_server import run_server
from tests.support import ago, epoch, make_services, open_tickets, seed_entry
from worker.settings import Settings
from worker.sinks import deliver_due, verify_ticket_signature

pytestmark = pytest.mark.integration

HOOK_URL = "https://app.example.com/hooks/recon"
SECRET = "recon_whsec_customer_updates"


def settings() -> Settings:
    return Settings(
        ticket_webhook_url=HOOK_URL, ticket_webhook_secret=SECRET, customer_updates=True
    )


def updates(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        q = select(customer_updates).order_by(customer_updates.c.id)
        return [dict(r) for r in conn.execute(q).mappings()]


def seed(engine: Engine, srv: Any) -> None:
    for pid, status, extra in (
        ("pi_paid", "succeeded", {}),
        ("pi_failed", "canceled", {}),
        ("pi_slow", "processing", {}),
    ):
        srv.state.create_payment_intent(
            id=pid, amount=200_000, currency="usd", status=status, created=epoch(ago(hours=3)),
            customer="cus_praise", receipt_email="praise@example.com", record_events=False,
            **extra,
        )  # fmt: skip
        seed_entry(
            engine, pid, 200_000, created=ago(hours=3), destination="wallet:praise",
            metadata={"customer_name": "Praise Okafor"},
        )  # fmt: skip


@pytest.fixture(params=["pg_engine", "sqlite_engine"])
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue(request.param)


def test_updates_are_off_unless_turned_on(engine):
    with run_server() as srv:
        seed(engine, srv)
        svc = make_services(engine, srv.url, srv.api_key)
        run_sweep(svc, trigger="test", actor="system")
    assert updates(engine) == []


def test_a_credit_and_a_failure_each_queue_one_update_never_two(engine):
    with run_server() as srv:
        seed(engine, srv)
        svc = make_services(engine, srv.url, srv.api_key, sinks=("webhook",), customer_updates=True)
        run_sweep(svc, trigger="test", actor="system")
        run_sweep(svc, trigger="test", actor="system")
        reconcile_payment(svc, "pi_paid", actor="oncall")

    got = {u["payment_id"]: u for u in updates(engine)}
    assert set(got) == {"pi_paid", "pi_failed"}  # the slow one changed nothing yet
    paid = got["pi_paid"]
    assert (paid["change"], paid["amount"], paid["currency"]) == ("credited", 200_000, "USD")
    assert (paid["customer"], paid["customer_email"], paid["customer_name"]) == (
        "cus_praise",
        "praise@example.com",
        "Praise Okafor",
    )
    assert paid["balance"] == "wallet:praise"
    assert "credited with your top-up of 2,000.00 USD" in paid["message"]
    assert got["pi_failed"]["change"] == "voided"
    assert "did not go through" in got["pi_failed"]["message"]


def test_a_fix_by_a_person_tells_the_customer_too(engine):
    with run_server() as srv:
        srv.state.create_payment_intent(
            id="pi_lost", amount=5000, currency="usd", status="succeeded",
            created=epoch(ago(hours=2)), receipt_email="praise@example.com",
            metadata={"ledger_destination": "wallet:praise"}, record_events=False,
        )  # fmt: skip
        svc = make_services(engine, srv.url, srv.api_key, sinks=("webhook",), customer_updates=True)
        reconcile_payment(svc, "pi_lost", actor="system")
        (ticket,) = open_tickets(engine)
        res = resolve_ticket(
            svc, ticket["id"], FixAction.CREATE_RECORD, "paid", "cx-anna", dry_run=False
        )
        assert res.done
    (update,) = updates(engine)
    assert (update["change"], update["ticket_id"], update["amount"]) == (
        "credited",
        ticket["id"],
        5000,
    )
    assert update["message"] == res.customer_message
    assert "credited with your top-up of 50.00 USD" in update["message"]


def test_updates_are_delivered_signed_retried_and_recorded(engine):
    with run_server() as srv:
        seed(engine, srv)
        svc = make_services(engine, srv.url, srv.api_key, sinks=("webhook",), customer_updates=True)
        run_sweep(svc, trigger="test", actor="system")
    now = datetime.now(UTC)
    with responses.RequestsMock() as mock:
        mock.post(HOOK_URL, status=503)
        first = deliver_due(engine, settings(), now=now)
        assert first["retrying"] == 2
        assert all(u["status"] == "pending" and u["attempts"] == 1 for u in updates(engine))
        assert all(u["last_error"] == "HTTP 503" for u in updates(engine))

        mock.replace(responses.POST, HOOK_URL, status=204)
        later = now + timedelta(hours=2)
        done = deliver_due(engine, settings(), now=later)
        assert done["delivered"] == 2
        assert all(u["status"] == "delivered" for u in updates(engine))
        assert deliver_due(engine, settings(), now=later + timedelta(hours=2))["claimed"] == 0
        call = mock.calls[-1]
    body = call.request.body
    assert verify_ticket_signature(body, call.request.headers["X-Recon-Signature"], SECRET)
    sent = json.loads(body)
    assert sent["event"] == "customer.update"
    assert sent["customer"]["email"] == "praise@example.com"
    assert sent["amount_formatted"] == "2,000.00 USD"
    assert call.request.headers["X-Recon-Delivery"].startswith("customer-update:")


def test_updates_queued_stay_queued_while_the_setting_is_off(engine):
    with run_server() as srv:
        seed(engine, srv)
        svc = make_services(engine, srv.url, srv.api_key, sinks=("webhook",), customer_updates=True)
        run_sweep(svc, trigger="test", actor="system")
    off = Settings(ticket_webhook_url=HOOK_URL, ticket_webhook_secret=SECRET)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(HOOK_URL, status=204)
        assert deliver_due(engine, off, now=datetime.now(UTC))["claimed"] == 0
    assert len(updates(engine)) == 2


def test_turning_updates_on_without_a_webhook_is_a_configuration_error():
    from worker.wiring import ConfigError, build_services

    with pytest.raises(ConfigError, match="RECON_TICKET_WEBHOOK_URL"):
        build_services(Settings(customer_updates=True, database_url="sqlite://"))
