"""Reconciliation held to real Stripe's variants, played by the local server (its FACTS.md):
API versions before and after basil, payloads without amount_received, failed attempts whose
error was cleared, disputes and refunds as objects, early fraud warnings, thin events, and
events from another mode or Connect account."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from ledger.sql import SqlLedger
from reconcile import inbox
from reconcile.model import Policy
from reconcile.ports import Hooks
from reconcile.tables import inbox as inbox_table
from reconcile.usecases import process_event, run_catch_up, run_sweep
from tests.integration.test_reconcile_scenario import (
    POLICY,
    ROOMY,
    Books,
    check_end_state,
    run_all,
    seed,
    snapshot,
)
from tests.stripe_server import run_server
from tests.stripe_server.versions import PRE_BASIL
from tests.support import ago, epoch, make_services, now_utc, open_tickets, seed_entry

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.mark.parametrize(
    "account",
    [
        {"api_version": PRE_BASIL},
        {},  # the library's current version (2026-10-28.endive)
        {"omit_fields": ["payment_intent.amount_received"]},
        {"api_version": PRE_BASIL, "omit_fields": ["payment_intent.amount_received"]},
        {"companion_events": True},
    ],
    ids=[
        "pre-basil",
        "current",
        "no-amount_received",
        "pre-basil-no-amount_received",
        "charge-events",
    ],
)
def test_the_scenario_ends_as_the_table_says_under_each_variant(
    pg_engine: Engine, account: dict[str, Any]
) -> None:
    books = Books(pg_engine, SqlLedger)
    with run_server(**account) as stripe:
        kinds = seed(books, stripe, per_kind=3)
        svc = books.services(stripe, policy=POLICY, guard=ROOMY)
        first = run_all(svc)
        assert [r.status for r in first] == ["succeeded"] * 3, [r.errors for r in first]
        check_end_state(books, kinds)
        before = books.snapshot()
        second = run_all(svc)
        assert all(r.counts.get("commit", 0) == r.counts.get("void", 0) == 0 for r in second)
        assert books.snapshot() == before
        check_end_state(books, kinds)


def store(engine: Engine, events: list[dict[str, Any]]) -> list[str]:
    with engine.begin() as conn:
        for event in events:
            inbox.store_event(conn, event, source="webhook", now=now_utc())
    return [e["id"] for e in events]


def deliver(svc: Any, engine: Engine, events: list[dict[str, Any]]) -> list[Any]:
    """As the worker does: each event stored, then processed."""
    return [process_event(svc, event_id) for event_id in store(engine, events)]


def tickets_of(engine: Engine, pid: str) -> list[tuple[str, int]]:
    return sorted(
        (t["kind"], t["severity"]) for t in open_tickets(engine) if t["payment_id"] == pid
    )


@pytest.mark.parametrize("version", [PRE_BASIL, None], ids=["pre-basil", "current"])
def test_a_partial_capture_ends_matched_with_one_low_ticket_and_no_refund_ticket(
    pg_engine: Engine, version: str | None
) -> None:
    account = {"api_version": version} if version else {}
    with run_server(**account) as stripe:
        created = ago(hours=3)
        auth = stripe.state.create_payment_intent(
            id="pi_pc",
            amount=5000,
            currency="usd",
            status="requires_capture",
            created=epoch(created),
        )
        seed_entry(pg_engine, "pi_pc", 5000, created=created)
        capture = stripe.state.capture("pi_pc", 3000)
        if version == PRE_BASIL:
            assert "charge.refunded" in [e["type"] for e in capture.events]
        svc = make_services(pg_engine, stripe.url, stripe.api_key, policy=POLICY)
        deliver(svc, pg_engine, auth.events + capture.events)
        run_sweep(svc, trigger="test", actor="system")
        run_catch_up(svc, trigger="test", actor="system", since=ago(hours=4))
        # A later pass over the settled entry reads the charge (and its refunds) again.
        deliver(svc, pg_engine, capture.events)
    assert snapshot(pg_engine)["pi_pc"] == ("APPLIED", 3000, 2000)
    assert tickets_of(pg_engine, "pi_pc") == [("amount_mismatch", 1)]


def test_a_real_refund_after_a_partial_capture_before_basil_is_ticketed_once(
    pg_engine: Engine,
) -> None:
    with run_server(api_version=PRE_BASIL) as stripe:
        created = ago(hours=3)
        stripe.state.create_payment_intent(
            id="pi_pr",
            amount=5000,
            currency="usd",
            status="requires_capture",
            created=epoch(created),
        )
        seed_entry(pg_engine, "pi_pr", 5000, created=created)
        stripe.state.capture("pi_pr", 3000)
        svc = make_services(pg_engine, stripe.url, stripe.api_key, policy=POLICY)
        run_sweep(svc, trigger="test", actor="system")
        refund = stripe.state.refund("pi_pr", 1000, reason="requested_by_customer")
        deliver(svc, pg_engine, refund.events)
    kinds = [k for k, _ in tickets_of(pg_engine, "pi_pr")]
    assert kinds == ["amount_mismatch", "refund_after_credit"]
    ticket = next(t for t in open_tickets(pg_engine) if t["kind"] == "refund_after_credit")
    assert ticket["stripe_state"]["amount_refunded"] == 1000


def test_a_failed_refund_clears_its_refund_after_credit_ticket(pg_engine: Engine) -> None:
    with run_server() as stripe:
        created = ago(hours=3)
        stripe.state.create_payment_intent(
            id="pi_rf", amount=2000, currency="usd", status="succeeded", created=epoch(created)
        )
        seed_entry(pg_engine, "pi_rf", 2000, created=created, status="APPLIED")
        svc = make_services(pg_engine, stripe.url, stripe.api_key, policy=POLICY)
        refund = stripe.state.refund("pi_rf", 2000)
        deliver(svc, pg_engine, refund.events)
        assert [k for k, _ in tickets_of(pg_engine, "pi_rf")] == ["refund_after_credit"]
        failed = stripe.state.update_refund(
            refund.refund["id"], status="failed", failure_reason="expired_or_canceled_card"
        )
        types = [e["type"] for e in failed.events]
        assert "refund.failed" in types or "charge.refund.updated" in types
        deliver(svc, pg_engine, failed.events)
    assert tickets_of(pg_engine, "pi_rf") == []


def test_a_disputes_ticket_shows_its_deadline_escalates_and_closes_itself_when_won(
    pg_engine: Engine,
) -> None:
    with run_server() as stripe:
        created = ago(days=2)
        stripe.state.create_payment_intent(
            id="pi_dp", amount=2000, currency="usd", status="succeeded", created=epoch(created)
        )
        seed_entry(pg_engine, "pi_dp", 2000, created=created, status="APPLIED")
        svc = make_services(pg_engine, stripe.url, stripe.api_key, policy=POLICY)
        due = now_utc() + timedelta(days=10)
        opened = stripe.state.open_dispute(
            "pi_dp", status="needs_response", reason="fraudulent", due_by=epoch(due)
        )
        deliver(svc, pg_engine, opened.events)
        (ticket,) = open_tickets(pg_engine)
        assert (ticket["kind"], ticket["severity"]) == ("dispute_opened", 3)
        assert f"evidence due {due.isoformat(timespec='minutes')}" in ticket["summary"]
        assert "20.00 USD at stake" in ticket["summary"] and "fraudulent" in ticket["summary"]
        dispute = opened.dispute["id"]
        soon = stripe.state.update_dispute(dispute, due_by=epoch(now_utc() + timedelta(days=2)))
        deliver(svc, pg_engine, soon.events)
        assert tickets_of(pg_engine, "pi_dp") == [("dispute_opened", 4)]
        stripe.state.update_dispute(dispute, status="under_review")
        won = stripe.state.update_dispute(dispute, status="won")
        deliver(svc, pg_engine, won.events)
    assert tickets_of(pg_engine, "pi_dp") == []
    assert snapshot(pg_engine)["pi_dp"] == ("APPLIED", 2000, 0)


def test_a_lost_dispute_says_what_was_withdrawn(pg_engine: Engine) -> None:
    with run_server() as stripe:
        created = ago(days=2)
        stripe.state.create_payment_intent(
            id="pi_dl", amount=2000, currency="usd", status="succeeded", created=epoch(created)
        )
        seed_entry(pg_engine, "pi_dl", 2000, created=created, status="APPLIED")
        svc = make_services(pg_engine, stripe.url, stripe.api_key, policy=POLICY)
        opened = stripe.state.open_dispute("pi_dl", status="needs_response")
        lost = stripe.state.update_dispute(opened.dispute["id"], status="lost")
        deliver(svc, pg_engine, lost.events)
    (ticket,) = open_tickets(pg_engine)
    assert ticket["kind"] == "dispute_opened" and ticket["reason"] == "dispute_lost"
    assert "20.00 USD withdrawn" in ticket["summary"]


def test_a_failed_payment_whose_intent_was_later_updated_is_voided_after_the_grace_period(
    pg_engine: Engine,
) -> None:
    with run_server() as stripe:
        created = ago(hours=3)
        stripe.state.create_payment_intent(
            id="pi_fu",
            amount=2000,
            currency="usd",
            status="requires_payment_method",
            last_payment_error={"type": "card_error", "code": "card_declined"},
            created=epoch(created),
        )
        stripe.state.touch_payment_intent("pi_fu", metadata={"note": "customer contacted"})
        pi = stripe.state.payment_intent("pi_fu", expand_charge=True)
        assert pi is not None and pi["last_payment_error"] is None
        assert pi["latest_charge"]["status"] == "failed"
        seed_entry(pg_engine, "pi_fu", 2000, created=created)
        svc = make_services(pg_engine, stripe.url, stripe.api_key, policy=POLICY)
        result = run_sweep(svc, trigger="test", actor="system")
    assert result.counts.get("void") == 1
    assert snapshot(pg_engine)["pi_fu"] == ("VOID", 0, 2000)


def test_an_early_fraud_warning_on_a_credited_payment_opens_a_fraud_ticket(
    pg_engine: Engine,
) -> None:
    with run_server() as stripe:
        created = ago(days=1)
        stripe.state.create_payment_intent(
            id="pi_ef", amount=2000, currency="usd", status="succeeded", created=epoch(created)
        )
        seed_entry(pg_engine, "pi_ef", 2000, created=created, status="APPLIED")
        svc = make_services(pg_engine, stripe.url, stripe.api_key, policy=POLICY)
        warning = stripe.state.add_early_fraud_warning("pi_ef", fraud_type="made_with_stolen_card")
        deliver(svc, pg_engine, warning.events)
        # A later ordinary pass cannot see warnings, so it leaves the ticket open.
        run_catch_up(svc, trigger="test", actor="system", since=ago(hours=1))
    (ticket,) = open_tickets(pg_engine)
    assert (ticket["kind"], ticket["severity"]) == ("fraud_warning", 3)
    assert "made_with_stolen_card" in ticket["summary"]


def test_a_thin_event_is_processed_by_fetching_its_related_object(pg_engine: Engine) -> None:
    with run_server(thin_events=True) as stripe:
        created = ago(hours=1)
        stripe.state.create_payment_intent(
            id="pi_th",
            amount=1500,
            currency="usd",
            status="processing",
            created=epoch(created),
            record_events=False,
        )
        seed_entry(pg_engine, "pi_th", 1500, created=created)
        paid = stripe.state.update_payment_intent("pi_th", status="succeeded")
        svc = make_services(pg_engine, stripe.url, stripe.api_key, policy=POLICY)
        thin = [inbox.parse_event(json.dumps(t)) for t in paid.thin_events]
        assert thin and all(e["object"] == "v2.core.event" for e in thin)
        outcomes = deliver(svc, pg_engine, thin)
        opened = stripe.state.open_dispute("pi_th", status="needs_response")
        dispute_thin = [inbox.parse_event(json.dumps(t)) for t in opened.thin_events]
        deliver(svc, pg_engine, dispute_thin)
    assert any(o.status == "processed" for o in outcomes)
    assert snapshot(pg_engine)["pi_th"] == ("APPLIED", 1500, 0)
    assert [k for k, _ in tickets_of(pg_engine, "pi_th")] == ["dispute_opened"]


@pytest.mark.parametrize(
    ("envelope", "cause"),
    [({"livemode": True}, "livemode"), ({"account": "acct_other"}, "account")],
)
def test_an_event_of_another_mode_or_account_is_stored_and_changes_nothing(
    pg_engine: Engine, envelope: dict[str, Any], cause: str
) -> None:
    refused: list[str] = []
    with run_server() as stripe:
        created = ago(hours=1)
        stripe.state.create_payment_intent(
            id="pi_lm",
            amount=1000,
            currency="usd",
            status="processing",
            created=epoch(created),
            record_events=False,
        )
        seed_entry(pg_engine, "pi_lm", 1000, created=created)
        paid = stripe.state.update_payment_intent("pi_lm", status="succeeded", envelope=envelope)
        svc = make_services(
            pg_engine,
            stripe.url,
            stripe.api_key,
            policy=POLICY,
            livemode=False,
            hooks=Hooks(event_refused=refused.append),
        )
        twice = deliver(svc, pg_engine, paid.events) + [
            process_event(svc, paid.events[-1]["id"], force=True)
        ]
    assert {o.status for o in twice} == {"ignored"}
    assert snapshot(pg_engine)["pi_lm"] == ("INFLIGHT", 0, 0)
    with pg_engine.connect() as conn:
        row = (
            conn.execute(select(inbox_table).where(inbox_table.c.event_id == paid.events[-1]["id"]))
            .mappings()
            .one()
        )
    assert row["status"] == "ignored" and row["last_error"]
    (incident,) = open_tickets(pg_engine)
    assert incident["kind"] == "incident" and incident["payment_id"].startswith(f"events:{cause}")
    assert incident["occurrences"] == 2
    assert refused == [cause, cause]


def test_events_that_can_only_wait_cost_no_stripe_read_while_the_entry_is_young(
    pg_engine: Engine,
) -> None:
    with run_server() as stripe:
        created = ago(minutes=2)
        change = stripe.state.create_payment_intent(
            id="pi_wt", amount=1000, currency="usd", status="processing", created=epoch(created)
        )
        seed_entry(pg_engine, "pi_wt", 1000, created=created)
        svc = make_services(pg_engine, stripe.url, stripe.api_key, policy=POLICY)
        before = stripe.calls()
        outcomes = deliver(svc, pg_engine, change.events)
        assert stripe.calls() == before
    assert outcomes and all(o.status == "processed" for o in outcomes)


def test_the_shared_budgets_are_never_exceeded_in_any_second(pg_engine: Engine) -> None:
    from reconcile.ratelimit import EndpointLimiters, LocalRateLimiter
    from reconcile.stripe_gateway import StripeGateway

    with run_server(rate_limit=25, endpoint_rate_limit=25) as stripe:
        for n in range(120):
            created = ago(days=3, hours=n * 3)  # sparse: one retrieve each
            stripe.state.create_payment_intent(
                id=f"pi_b{n}",
                amount=100,
                currency="usd",
                status="succeeded",
                created=epoch(created),
                record_events=False,
            )
            seed_entry(pg_engine, f"pi_b{n}", 100, created=created)
        endpoints = EndpointLimiters(None, rate=20)
        global_limiter = LocalRateLimiter(20)
        svc = make_services(
            pg_engine,
            stripe.url,
            stripe.api_key,
            policy=Policy(),
            guard=ROOMY,
            sweep_batch=50,
        )
        svc.new_gateway = lambda: StripeGateway(
            stripe.api_key, stripe.url, global_limiter, endpoint_limiter=endpoints
        )
        result = run_sweep(svc, trigger="test", actor="system")
        peak = stripe.peak_calls(window=1.0)
        limited = stripe.calls(outcome="429")
    assert result.counts.get("commit") == 120
    assert peak <= 25 and limited == 0, (peak, limited)
