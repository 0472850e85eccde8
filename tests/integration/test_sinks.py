"""Ticket delivery from the outbox to a signed JSON webhook and to Slack, on PostgreSQL."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import responses
from sqlalchemy import Engine, select

from reconcile.model import (
    Entry,
    EntryStatus,
    Payment,
    PaymentStatus,
    Severity,
    TicketKind,
    TicketSpec,
)
from reconcile.tables import deliveries
from reconcile.tickets import TicketFacts, claim_deliveries, raise_ticket
from worker import sinks
from worker.settings import Settings
from worker.sinks import MAX_ATTEMPTS, deliver_due, requeue_failed, sign, verify_ticket_signature

pytestmark = pytest.mark.integration

HOOK_URL = "https://cx.example.com/hooks/recon?token=hooktoken_5f3a9c"
SLACK_URL = "https://hooks.slack.com/services/T0001/B0002/slacksecret9x8y7z"
SECRET = "recon_whsec_k3y_for_tests"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def settings(**kw: Any) -> Settings:
    values: dict[str, Any] = {
        "ticket_webhook_url": HOOK_URL,
        "ticket_webhook_secret": SECRET,
        "slack_webhook_url": SLACK_URL,
    }
    values.update(kw)
    return Settings(**values)


def open_ticket(
    engine: Engine,
    *,
    severity: Severity = Severity.HIGH,
    sinks_: tuple[str, ...] = ("webhook", "slack"),
    pid: str = "pi_3Pabc",
) -> int:
    payment = Payment(
        id=pid,
        status=PaymentStatus.SUCCEEDED,
        amount=123456,
        amount_received=123456,
        currency="eur",
        created=NOW - timedelta(hours=3),
        customer="cus_Q1",
        customer_email="ada@example.com",
    )
    entry = Entry(
        reference=pid,
        status=EntryStatus.VOID,
        amount=123456,
        currency="EUR",
        created_at=NOW - timedelta(hours=3),
        voided_amount=123456,
        source="@stripe",
        destination="wallet:ada",
    )
    facts = TicketFacts(payment_id=pid, payment=payment, entry=entry, reason="test", now=NOW)
    with engine.begin() as conn:
        raised = raise_ticket(
            conn,
            TicketSpec(TicketKind.PAID_BUT_VOIDED, severity),
            facts,
            run_id=None,
            sinks=sinks_,
        )
    return raised.ticket_id


def rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r) for r in conn.execute(select(deliveries).order_by(deliveries.c.id)).mappings()
        ]


def by_sink(engine: Engine, sink: str) -> dict[str, Any]:
    (row,) = [r for r in rows(engine) if r["sink"] == sink]
    return row


@responses.activate
def test_the_webhook_receives_the_ticket_as_signed_json_that_verify_signature_accepts(
    pg_engine: Engine,
) -> None:
    ticket_id = open_ticket(pg_engine, sinks_=("webhook",))
    responses.post(HOOK_URL, status=204)

    counts = deliver_due(pg_engine, settings(), now=NOW)

    assert counts == {"claimed": 1, "delivered": 1, "retrying": 0, "gave_up": 0}
    (call,) = responses.calls
    body = call.request.body
    assert isinstance(body, bytes)
    sent = json.loads(body)
    assert sent["event"] == "ticket.opened"
    assert sent["id"] == ticket_id
    assert sent["kind"] == "paid_but_voided"
    assert sent["severity"] == "high"
    assert sent["status"] == "open"
    assert sent["payment_id"] == "pi_3Pabc"
    assert sent["reference"] == "pi_3Pabc"
    assert sent["customer"] == "cus_Q1"
    assert sent["customer_email"] == "ada@example.com"
    assert sent["balance"] == "wallet:ada"
    assert (sent["amount"], sent["currency"]) == (123456, "eur")
    assert sent["amount_formatted"] == "1,234.56 EUR"
    assert "pi_3Pabc" in sent["summary"]
    assert sent["suggested_fix"].startswith("The customer paid")
    assert "1,234.56 EUR" in sent["customer_message"]
    assert sent["dashboard_url"] == "https://dashboard.stripe.com/test/payments/pi_3Pabc"
    assert sent["occurrences"] == 1
    assert datetime.fromisoformat(sent["opened_at"]) == NOW
    assert sent["stripe_state"]["status"] == "succeeded"
    assert sent["ledger_state"]["status"] == "VOID"

    delivery = by_sink(pg_engine, "webhook")
    assert call.request.headers["X-Recon-Delivery"] == str(delivery["id"])
    header = call.request.headers["X-Recon-Signature"]
    assert verify_ticket_signature(body, header, SECRET)
    assert not verify_ticket_signature(body.replace(b"123456", b"999999"), header, SECRET)
    assert not verify_ticket_signature(body, header, "another-secret")
    assert not verify_ticket_signature(body, header, SECRET, now=time.time() + 301)
    assert delivery["status"] == "delivered"
    assert delivery["delivered_at"] == NOW
    assert delivery["attempts"] == 1
    assert delivery["last_error"] is None


def test_verify_signature_refuses_malformed_and_stale_headers() -> None:
    body = b'{"a":1}'
    ts = 1_700_000_000
    good = sign(body, SECRET, ts)
    assert verify_ticket_signature(body, good, SECRET, now=ts + 10)
    # A receiver may see several v1 values during a secret rotation: any match is enough.
    assert verify_ticket_signature(body, f"{good},v1=00ff", SECRET, now=ts)
    assert not verify_ticket_signature(body, good, SECRET, now=ts + 301)
    assert not verify_ticket_signature(body, good.replace(f"t={ts}", f"t={ts + 1}"), SECRET, now=ts)
    for header in ("", "garbage", f"t={ts}", "v1=abc", f"t=x,{good.split(',')[1]}"):
        assert not verify_ticket_signature(body, header, SECRET, now=ts)
    assert not verify_ticket_signature(body, good, "", now=ts)


@responses.activate
def test_slack_gets_a_readable_message_with_the_suggested_fix_and_the_customer_message(
    pg_engine: Engine,
) -> None:
    ticket_id = open_ticket(pg_engine, sinks_=("slack",), severity=Severity.CRITICAL)
    responses.post(SLACK_URL, body="ok")

    deliver_due(pg_engine, settings(), now=NOW)

    (call,) = responses.calls
    sent = json.loads(call.request.body)
    assert "Suggested fix: The customer paid" in sent["text"]
    assert "Message for the customer: We received your top-up of 1,234.56 EUR" in sent["text"]
    assert "CRITICAL" in sent["text"] and f"#{ticket_id}" in sent["text"]
    blocks = "\n".join(b["text"]["text"] for b in sent["blocks"])
    assert ":fire: *CRITICAL* paid_but_voided" in blocks
    assert "1,234.56 EUR" in blocks and "ada@example.com" in blocks
    assert "<https://dashboard.stripe.com/test/payments/pi_3Pabc|pi_3Pabc>" in blocks
    assert "*Suggested fix:* The customer paid" in blocks
    assert "*Message for the customer:* We received" in blocks
    assert "X-Recon-Signature" not in call.request.headers
    assert by_sink(pg_engine, "slack")["status"] == "delivered"


@responses.activate
def test_a_receiver_error_records_a_failed_attempt_and_a_later_run_delivers_it(
    pg_engine: Engine,
) -> None:
    open_ticket(pg_engine, sinks_=("webhook",))
    responses.post(HOOK_URL, status=500)

    counts = deliver_due(pg_engine, settings(), now=NOW)

    assert counts["retrying"] == 1
    row = by_sink(pg_engine, "webhook")
    assert row["status"] == "pending"
    assert row["attempts"] == 1
    assert row["last_error"] == "HTTP 500"
    assert NOW < row["next_attempt_at"] <= NOW + timedelta(seconds=30)

    # Not due yet: nothing is sent before the backoff is over.
    assert deliver_due(pg_engine, settings(), now=NOW + timedelta(seconds=1))["claimed"] == 0
    assert len(responses.calls) == 1

    responses.replace(responses.POST, HOOK_URL, status=200)
    later = row["next_attempt_at"] + timedelta(seconds=1)
    assert deliver_due(pg_engine, settings(), now=later)["delivered"] == 1
    row = by_sink(pg_engine, "webhook")
    assert (row["status"], row["attempts"], row["delivered_at"]) == ("delivered", 2, later)
    assert row["last_error"] is None


@responses.activate
def test_client_errors_rate_limits_and_connection_errors_are_all_retried_later(
    pg_engine: Engine,
) -> None:
    open_ticket(pg_engine, pid="pi_A", sinks_=("webhook",))
    open_ticket(pg_engine, pid="pi_B", sinks_=("webhook",))
    open_ticket(pg_engine, pid="pi_C", sinks_=("webhook",))
    responses.post(HOOK_URL, status=404)
    responses.post(HOOK_URL, status=429)
    responses.post(HOOK_URL, body=requests.ConnectionError(f"cannot reach {HOOK_URL}"))

    counts = deliver_due(pg_engine, settings(), now=NOW)

    assert counts == {"claimed": 3, "delivered": 0, "retrying": 3, "gave_up": 0}
    got = rows(pg_engine)
    assert [r["last_error"] for r in got] == ["HTTP 404", "HTTP 429", "ConnectionError"]
    assert all(r["status"] == "pending" and r["next_attempt_at"] > NOW for r in got)


@responses.activate
def test_secrets_and_sink_urls_never_appear_in_last_error_or_logs(
    pg_engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    open_ticket(pg_engine)
    # Receivers that echo what they were sent, and a transport error naming the URL.
    responses.post(HOOK_URL, status=401, body=f"bad signature for {SECRET} at {HOOK_URL}")
    responses.post(SLACK_URL, body=requests.ConnectionError(f"failed: {SLACK_URL}"))

    deliver_due(pg_engine, settings(), now=NOW)

    errors = [r["last_error"] for r in rows(pg_engine)]
    assert errors == ["HTTP 401", "ConnectionError"]
    out = capsys.readouterr()
    # The failures were logged (so the check below looks at real log lines).
    assert "ticket_delivery_retry" in out.out + out.err
    for text in (*errors, out.out, out.err):
        for secret in (SECRET, "hooktoken_5f3a9c", "slacksecret9x8y7z", "hooks.slack.com"):
            assert secret not in text


@responses.activate
def test_slack_error_codes_are_kept_in_last_error(pg_engine: Engine) -> None:
    open_ticket(pg_engine, sinks_=("slack",))
    responses.post(SLACK_URL, status=403, body="invalid_token")

    deliver_due(pg_engine, settings(), now=NOW)

    assert by_sink(pg_engine, "slack")["last_error"] == "HTTP 403 invalid_token"


@responses.activate
def test_running_deliver_due_twice_sends_each_delivery_once(pg_engine: Engine) -> None:
    open_ticket(pg_engine)
    responses.post(HOOK_URL, status=200)
    responses.post(SLACK_URL, status=200)

    first = deliver_due(pg_engine, settings(), now=NOW)
    second = deliver_due(pg_engine, settings(), now=NOW + timedelta(days=1))

    assert first["delivered"] == 2
    assert second["claimed"] == 0
    assert len(responses.calls) == 2
    assert {r["status"] for r in rows(pg_engine)} == {"delivered"}


@responses.activate
def test_a_delivery_being_sent_is_not_claimed_again_by_a_second_worker(
    pg_engine: Engine,
) -> None:
    open_ticket(pg_engine, sinks_=("webhook",))
    nested: list[dict[str, int]] = []

    def receiver(request: Any) -> tuple[int, dict[str, str], str]:
        # A second worker's beat fires while the first one is mid-request.
        if not nested:
            nested.append(deliver_due(pg_engine, settings(), now=NOW))
        return 200, {}, ""

    responses.add_callback(responses.POST, HOOK_URL, callback=receiver)

    counts = deliver_due(pg_engine, settings(), now=NOW)

    assert counts["delivered"] == 1
    assert nested == [{"claimed": 0, "delivered": 0, "retrying": 0, "gave_up": 0}]
    assert len(responses.calls) == 1


@responses.activate
def test_a_delivery_locked_by_another_worker_is_skipped_not_waited_for(
    pg_engine: Engine,
) -> None:
    open_ticket(pg_engine)
    responses.post(HOOK_URL, status=200)
    responses.post(SLACK_URL, status=200)
    webhook_id = by_sink(pg_engine, "webhook")["id"]

    with pg_engine.connect() as other, other.begin():
        other.execute(
            select(deliveries.c.id).where(deliveries.c.id == webhook_id).with_for_update()
        )
        started = time.monotonic()
        counts = deliver_due(pg_engine, settings(), now=NOW)
        assert time.monotonic() - started < 5

    assert counts["delivered"] == 1
    assert [c.request.url for c in responses.calls] == [SLACK_URL]
    assert by_sink(pg_engine, "webhook")["status"] == "pending"


@responses.activate
def test_a_delivery_that_keeps_failing_is_marked_failed_after_max_attempts_and_stays(
    pg_engine: Engine,
) -> None:
    open_ticket(pg_engine, sinks_=("webhook",))
    responses.post(HOOK_URL, status=503)

    now = NOW
    outcomes = []
    for _ in range(MAX_ATTEMPTS):
        counts = deliver_due(pg_engine, settings(), now=now)
        outcomes.append("gave_up" if counts["gave_up"] else "retrying")
        now = by_sink(pg_engine, "webhook")["next_attempt_at"] + timedelta(seconds=1)

    assert outcomes == ["retrying"] * (MAX_ATTEMPTS - 1) + ["gave_up"]
    row = by_sink(pg_engine, "webhook")
    assert (row["status"], row["attempts"], row["last_error"]) == (
        "failed",
        MAX_ATTEMPTS,
        "HTTP 503",
    )
    # The backoff grew but never beyond its cap.
    assert now - NOW < timedelta(hours=MAX_ATTEMPTS)
    assert deliver_due(pg_engine, settings(), now=now + timedelta(days=30))["claimed"] == 0
    assert len(responses.calls) == MAX_ATTEMPTS

    # Once the receiver is fixed, an operator requeues it and it goes out.
    responses.replace(responses.POST, HOOK_URL, status=200)
    assert requeue_failed(pg_engine, now=now) == 1
    assert deliver_due(pg_engine, settings(), now=now)["delivered"] == 1
    assert by_sink(pg_engine, "webhook")["status"] == "delivered"


@responses.activate
def test_an_escalation_is_sent_as_ticket_escalated_with_the_raised_severity(
    pg_engine: Engine,
) -> None:
    open_ticket(pg_engine, sinks_=("webhook",), severity=Severity.MEDIUM)
    responses.post(HOOK_URL, status=200)
    deliver_due(pg_engine, settings(), now=NOW)

    open_ticket(pg_engine, sinks_=("webhook",), severity=Severity.CRITICAL)
    deliver_due(pg_engine, settings(), now=NOW)

    events = [json.loads(c.request.body) for c in responses.calls]
    assert [(e["event"], e["severity"]) for e in events] == [
        ("ticket.opened", "medium"),
        ("ticket.escalated", "critical"),
    ]
    assert events[1]["occurrences"] == 2


@responses.activate
def test_without_a_secret_the_webhook_is_sent_unsigned(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sinks, "_warned_unsigned", False)
    open_ticket(pg_engine, sinks_=("webhook",))
    responses.post(HOOK_URL, status=200)

    deliver_due(pg_engine, settings(ticket_webhook_secret=""), now=NOW)

    (call,) = responses.calls
    assert "X-Recon-Signature" not in call.request.headers
    assert sinks._warned_unsigned is True


@responses.activate
def test_a_sink_that_is_no_longer_configured_keeps_its_delivery_pending_and_visible(
    pg_engine: Engine,
) -> None:
    open_ticket(pg_engine, sinks_=("slack",))

    counts = deliver_due(pg_engine, settings(slack_webhook_url=None), now=NOW)

    assert counts["retrying"] == 1
    row = by_sink(pg_engine, "slack")
    assert (row["status"], row["last_error"]) == ("pending", "slack sink not configured")
    assert len(responses.calls) == 0


def test_a_worker_that_died_after_claiming_lets_the_lease_lapse_and_the_row_is_sent_again(
    pg_engine: Engine,
) -> None:
    open_ticket(pg_engine, sinks_=("webhook",))
    # A claim whose worker never recorded anything: the row sits leased.
    with pg_engine.begin() as conn:
        claims = claim_deliveries(conn, now=NOW, limit=10, lease_until=NOW + timedelta(minutes=5))
    assert len(claims) == 1
    leased_until = by_sink(pg_engine, "webhook")["next_attempt_at"]
    assert leased_until > NOW

    with responses.RequestsMock() as mock:
        mock.post(HOOK_URL, status=200)
        assert deliver_due(pg_engine, settings(), now=NOW)["claimed"] == 0
        later = leased_until + timedelta(seconds=1)
        assert deliver_due(pg_engine, settings(), now=later)["delivered"] == 1
    assert by_sink(pg_engine, "webhook")["attempts"] == 2


def test_an_error_text_naming_a_sink_url_or_the_secret_is_masked_before_it_is_stored() -> None:
    text = f"boom {SLACK_URL} {SECRET} https://u:pw@host/x sk_live_abc123"
    masked = sinks._scrub(text, (SECRET, HOOK_URL, SLACK_URL))
    for secret in (SLACK_URL, SECRET, "pw@", "sk_live_abc123"):
        assert secret not in masked
    assert masked.startswith("boom ***")


@responses.activate
def test_deliveries_go_out_from_the_embedded_sqlite_database_too(sqlite_engine: Engine) -> None:
    open_ticket(sqlite_engine)
    responses.post(HOOK_URL, status=500)
    responses.post(SLACK_URL, status=200)

    first = deliver_due(sqlite_engine, settings(), now=NOW)
    again = deliver_due(sqlite_engine, settings(), now=NOW)

    assert (first["delivered"], first["retrying"], again["claimed"]) == (1, 1, 0)
    assert {r["sink"]: r["status"] for r in rows(sqlite_engine)} == {
        "webhook": "pending",
        "slack": "delivered",
    }
