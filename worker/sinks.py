"""Ticket delivery: drains the outbox (recon_ticket_deliveries) to a JSON webhook and Slack.

``reconcile.tickets`` queues one pending row per configured sink in the transaction that
opens (or escalates) a ticket.  ``deliver_due`` runs as its own periodic task so a slow or
broken receiver never holds up reconciliation:

1. claim: one short transaction picks due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL),
   counts the attempt and pushes ``next_attempt_at`` forward as a lease, so a second
   worker skips them; it also reads the tickets (without locking them);
2. send: HTTP outside any transaction;
3. record: one short transaction per row: delivered, or a failed attempt with backoff.

Delivery is at least once: a worker that dies between send and record lets the lease
lapse and the row is sent again.  ``X-Recon-Delivery`` lets receivers drop the duplicate.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import requests
from sqlalchemy import Engine

from ledger.money import Money
from reconcile import tickets
from reconcile.model import Severity
from reconcile.redact import redact
from reconcile.tickets import EVENT_ESCALATED, DeliveryClaim
from worker.logs import get_logger
from worker.settings import Settings

DELIVERY_TASK_NAME = "tickets.deliver"

SIGNATURE_HEADER = "X-Recon-Signature"
DELIVERY_HEADER = "X-Recon-Delivery"

# Short: a receiver that hangs must not stall the whole batch behind it.
TIMEOUT_SECONDS = 5.0
# 12 attempts with this backoff span about six hours: long enough to ride out a receiver
# outage or a fixed-by-morning misconfiguration, short enough that a dead sink is noticed.
MAX_ATTEMPTS = 12
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_CAP = timedelta(hours=1)

log = get_logger(__name__)

_warned_unsigned = False


# --------------------------------------------------------------------------- signatures


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The header value for ``body``: Stripe's scheme, so receivers can reuse their code."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_ticket_signature(
    body: bytes,
    header: str,
    secret: str,
    tolerance: int = 300,
    now: float | None = None,
) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its time is within tolerance.

    Malformed headers answer False rather than raising: a receiver should answer 400 to
    anything it cannot verify, whatever the reason.
    """
    if not secret or not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    # The timestamp is inside the MAC, so a replayed old request cannot be re-dated.
    if tolerance and abs(current - timestamp) > tolerance:
        return False
    expected = sign(body, secret, timestamp).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, c) for c in candidates)


# --------------------------------------------------------------------------- payloads


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _label(severity: int) -> str:
    try:
        return Severity(severity).label
    except ValueError:
        return str(severity)


def _formatted(ticket: Mapping[str, Any]) -> str | None:
    amount, currency = ticket.get("amount"), ticket.get("currency")
    if amount is None or not currency:
        return None
    try:
        return Money(int(amount), str(currency)).format()
    except Exception:  # a bad currency on a ticket must not block its delivery
        return f"{amount} {currency}"


def webhook_payload(
    ticket: Mapping[str, Any], *, delivery_id: int, severity: int, event: str
) -> dict[str, Any]:
    return {
        "event": event,
        "delivery_id": delivery_id,
        "id": ticket["id"],
        "kind": ticket["kind"],
        # The severity this event is about: an escalation carries the raised one.
        "severity": _label(severity),
        "status": ticket["status"],
        "payment_id": ticket["payment_id"],
        "reference": ticket.get("reference"),
        "customer": ticket.get("customer"),
        "customer_email": ticket.get("customer_email"),
        "balance": ticket.get("balance"),
        "amount": ticket.get("amount"),
        "currency": ticket.get("currency"),
        "amount_formatted": _formatted(ticket),
        "summary": ticket.get("summary"),
        "suggested_fix": ticket.get("suggested_fix"),
        "customer_message": ticket.get("customer_message"),
        "dashboard_url": ticket.get("dashboard_url"),
        "occurrences": ticket.get("occurrences"),
        "opened_at": ticket.get("opened_at"),
        "stripe_state": ticket.get("stripe_state"),
        "ledger_state": ticket.get("ledger_state"),
    }


def customer_update_payload(update: Mapping[str, Any], *, delivery_id: int) -> dict[str, Any]:
    """What the application receives to notify its customer (email, push...)."""
    return {
        "event": tickets.EVENT_CUSTOMER_UPDATE,
        "delivery_id": f"customer-update:{delivery_id}",
        "change": update["change"],
        "payment_id": update["payment_id"],
        "ticket_id": update.get("ticket_id"),
        "customer": {
            "stripe_customer": update.get("customer"),
            "email": update.get("customer_email"),
            "name": update.get("customer_name"),
            "balance": update.get("balance"),
        },
        "amount": update.get("amount"),
        "currency": update.get("currency"),
        "amount_formatted": _formatted(update),
        "message": update.get("message"),
        "occurred_at": update.get("created_at"),
    }


_EMOJI = {1: ":information_source:", 2: ":warning:", 3: ":rotating_light:", 4: ":fire:"}


def _mrkdwn(text: Any) -> str:
    # Slack reads &, < and > as markup (links, mentions); ticket text is data, not markup.
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(ticket: Mapping[str, Any], *, severity: int, event: str) -> dict[str, Any]:
    label = _label(severity).upper()
    emoji = _EMOJI.get(severity, ":warning:")
    verb = "escalated" if event == EVENT_ESCALATED else "opened"
    amount = _formatted(ticket) or "amount unknown"
    customer = ticket.get("customer_email") or ticket.get("customer") or "unknown customer"
    pid = _mrkdwn(ticket["payment_id"])
    url = ticket.get("dashboard_url")
    payment = f"<{url}|{pid}>" if url else pid
    head = (
        f"{emoji} *{label}* {_mrkdwn(ticket['kind'])} ticket #{ticket['id']} {verb}: "
        f"{_mrkdwn(amount)}, {_mrkdwn(customer)}, payment {payment}"
    )
    fix = ticket.get("suggested_fix") or "-"
    message = ticket.get("customer_message")
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": head}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(ticket.get("summary"))}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Suggested fix:* {_mrkdwn(fix)}"}},
    ]
    if message:
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"*Message for the customer:* {_mrkdwn(message)}",
                },
            }
        )
    # ``text`` is what notifications and old clients show: it must stand on its own.
    text = (
        f"[{label}] {ticket['kind']} ticket #{ticket['id']} {verb}: {amount}, {customer}, "
        f"payment {ticket['payment_id']}. {ticket.get('summary')}\nSuggested fix: {fix}"
    )
    if message:
        text += f"\nMessage for the customer: {message}"
    return {"text": text, "blocks": blocks}


# --------------------------------------------------------------------------- sending


class SendError(Exception):
    """A failed attempt; ``short`` is safe to store and log (no URL, no secret)."""

    def __init__(self, short: str) -> None:
        super().__init__(short)
        self.short = short


# Slack answers errors as a bare code ("invalid_token", "channel_not_found"): worth keeping,
# and a code of this shape cannot carry a URL or a secret.  Any other body is dropped.
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,59}")


def _post(session: requests.Session, url: str, body: bytes, headers: dict[str, str]) -> None:
    try:
        resp = session.post(
            url,
            data=body,
            headers={"Content-Type": "application/json", **headers},
            timeout=TIMEOUT_SECONDS,
            # A redirected POST turns into a GET in requests: treat it as a misconfiguration.
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        # The exception text carries the URL (a Slack URL is a credential): class name only.
        raise SendError(type(exc).__name__) from None
    if 200 <= resp.status_code < 300:
        return
    short = f"HTTP {resp.status_code}"
    code = (resp.text or "").strip()[:60]
    if _ERROR_CODE.fullmatch(code):
        short += f" {code}"
    raise SendError(short)


def _send_webhook(session: requests.Session, settings: Settings, claim: DeliveryClaim) -> None:
    global _warned_unsigned
    url = settings.ticket_webhook_url
    if not url:
        raise SendError("webhook sink not configured")
    if claim.kind == "customer_update":
        payload = customer_update_payload(claim.ticket, delivery_id=claim.id)
        delivery = str(payload["delivery_id"])
    else:
        payload = webhook_payload(
            claim.ticket, delivery_id=claim.id, severity=claim.severity, event=claim.event
        )
        delivery = str(claim.id)
    body = json.dumps(payload, default=_json_default, separators=(",", ":")).encode()
    headers = {DELIVERY_HEADER: delivery}
    secret = settings.ticket_webhook_secret.get_secret_value()
    if secret:
        # Wall-clock time, not the task's ``now``: receivers check it against their clock.
        headers[SIGNATURE_HEADER] = sign(body, secret, int(time.time()))
    elif not _warned_unsigned:
        _warned_unsigned = True
        log.warning(
            "ticket_webhook_unsigned",
            hint="set RECON_TICKET_WEBHOOK_SECRET so receivers can verify ticket webhooks",
        )
    _post(session, url, body, headers)


def _send_slack(session: requests.Session, settings: Settings, claim: DeliveryClaim) -> None:
    url = settings.slack_webhook_url
    if not url:
        raise SendError("slack sink not configured")
    body = json.dumps(
        slack_payload(claim.ticket, severity=claim.severity, event=claim.event),
        default=_json_default,
    ).encode()
    _post(session, url, body, {})


# --------------------------------------------------------------------------- the task


def backoff(attempts: int, rng: random.Random | None = None) -> timedelta:
    """Delay before the next try after ``attempts`` failures: doubling, capped, jittered.

    The jitter (between half and all of the delay) spreads retries of many tickets that
    failed together, so a receiver coming back is not hit by all of them at once.
    """
    raw = BACKOFF_BASE * (1 << min(max(attempts - 1, 0), 20))
    delay = min(raw, BACKOFF_CAP)
    factor: float = (rng or random).uniform(0.5, 1.0)
    return delay * factor


def _lease(limit: int) -> timedelta:
    # Long enough for the whole batch to time out one request after another (connect and
    # read timeouts each), so a slow batch is not claimed again by the next beat.
    return timedelta(seconds=60 + limit * 2 * TIMEOUT_SECONDS)


def _scrub(text: str, secrets: Iterable[str | None]) -> str:
    # Belt and braces: whatever path produced the text, no configured secret or sink URL
    # leaves this function, and known credential shapes are masked too.
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return redact(text)[:200]


def deliver_due(
    engine: Engine,
    settings: Settings,
    *,
    now: datetime | None = None,
    limit: int = 100,
    session: requests.Session | None = None,
) -> dict[str, int]:
    """Send every due pending delivery once; answers counts per outcome.

    ``delivered``: receiver answered 2xx.  ``retrying``: failed attempt, tried again after
    a backoff.  ``gave_up``: the attempt that used up MAX_ATTEMPTS: the row is now
    ``failed`` and stays in the table for ``recon tickets`` and ``requeue_failed``.
    """
    now = now or datetime.now(UTC)
    counts = {"claimed": 0, "delivered": 0, "retrying": 0, "gave_up": 0}
    with engine.begin() as conn:
        claims = tickets.claim_deliveries(
            conn, now=now, limit=limit, lease_until=now + _lease(limit)
        )
    if settings.customer_updates and len(claims) < limit:
        # customer.update messages ride the same machinery: signed, retried, recorded.
        with engine.begin() as conn:
            claims += tickets.claim_customer_updates(
                conn, now=now, limit=limit - len(claims), lease_until=now + _lease(limit)
            )
    if not claims:
        return counts
    counts["claimed"] = len(claims)
    secrets = (
        settings.ticket_webhook_secret.get_secret_value(),
        settings.ticket_webhook_url,
        settings.slack_webhook_url,
    )
    own_session = session is None
    http = session or requests.Session()
    try:
        for claim in claims:
            error: str | None = None
            try:
                if claim.sink == "webhook":
                    _send_webhook(http, settings, claim)
                elif claim.sink == "slack":
                    _send_slack(http, settings, claim)
                else:
                    raise SendError(f"unknown sink {claim.sink[:40]!r}")
            except SendError as exc:
                error = exc.short
            except Exception as exc:  # one bad ticket must not stop the batch
                error = type(exc).__name__
            outcome = _record(engine, claim, now, None if error is None else _scrub(error, secrets))
            counts[outcome] += 1
    finally:
        if own_session:
            http.close()
    return counts


def _record(engine: Engine, claim: DeliveryClaim, now: datetime, error: str | None) -> str:
    fields = {"delivery_id": claim.id, "sink": claim.sink, "kind": claim.kind}
    fields["ticket_id"] = (
        claim.ticket.get("ticket_id") if claim.kind != "ticket" else claim.ticket["id"]
    )
    if error is None:
        with engine.begin() as conn:
            tickets.mark_delivered(conn, claim, now)
        log.info("ticket_delivered", attempts=claim.attempts, **fields)
        return "delivered"
    gave_up = claim.attempts >= MAX_ATTEMPTS
    retry_at = now if gave_up else now + backoff(claim.attempts)
    with engine.begin() as conn:
        tickets.mark_delivery_failed(
            conn, claim, error=error, next_attempt_at=retry_at, give_up=gave_up
        )
    if gave_up:
        log.error("ticket_delivery_failed", attempts=claim.attempts, error=error, **fields)
        return "gave_up"
    log.warning("ticket_delivery_retry", attempts=claim.attempts, error=error, **fields)
    return "retrying"


def requeue_failed(
    engine: Engine, *, ids: Iterable[int] | None = None, now: datetime | None = None
) -> int:
    """Give failed deliveries a fresh set of attempts (after fixing the sink); answers how many."""
    with engine.begin() as conn:
        return tickets.requeue_failed_deliveries(conn, now=now or datetime.now(UTC), ids=ids)
