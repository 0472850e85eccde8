"""Signed payloads whose fields are malformed (issue 14): processed end to end by the real
intake's in-process worker, they move no money whatever the signature says; a ticket says
why.  Stripe itself (the local server) holds the honest PaymentIntent, so a worker that
quietly re-read and acted on it would pass a test that only looked at the ledger: these
tests also ask for the ticket.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.hostile.harness import Intake, event, new_id, pi_object, sign

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PAYLOADS: dict[str, Callable[[str], str]] = {}


def _payload(name: str) -> Callable[[Callable[[str], str]], Callable[[str], str]]:
    def register(fn: Callable[[str], str]) -> Callable[[str], str]:
        PAYLOADS[name] = fn
        return fn

    return register


def _with(pi: str, **fields: Any) -> str:
    return json.dumps(event(pi_object(pi, **fields)))


@_payload("amount_received true")
def _true(pi: str) -> str:
    return _with(pi, amount_received=True)


@_payload("amount_received 4999.9")
def _fraction(pi: str) -> str:
    return _with(pi, amount_received=4999.9)


@_payload("amount_received 5000.0")
def _whole_float(pi: str) -> str:
    return _with(pi, amount_received=5000.0)


@_payload("amount_received a string")
def _string(pi: str) -> str:
    return _with(pi, amount_received="5000")


@_payload("amount_received negative")
def _negative(pi: str) -> str:
    return _with(pi, amount_received=-5000)


@_payload("amount_received over 10^12")
def _huge(pi: str) -> str:
    return _with(pi, amount_received=10**13)


@_payload("amount_received past 64 bits")
def _past64(pi: str) -> str:
    return _with(pi, amount_received=123456789).replace("123456789", "9" * 30)


@_payload("amount_received an object")
def _object(pi: str) -> str:
    return _with(pi, amount_received={"value": 5000})


@_payload("amount true")
def _amount_true(pi: str) -> str:
    return _with(pi, amount=True)


@_payload("currency not ISO 4217")
def _zzz(pi: str) -> str:
    return _with(pi, currency="zzz")


@_payload("currency with a space")
def _space(pi: str) -> str:
    return _with(pi, currency="usd ")


@_payload("currency a homoglyph")
def _homoglyph(pi: str) -> str:
    return _with(pi, currency="u\u0455d")


@_payload("currency with a long s (upper-cases to USD)")
def _long_s(pi: str) -> str:
    return _with(pi, currency="u\u017fd")


@_payload("currency with a dotless i (upper-cases to INR)")
def _dotless_i(pi: str) -> str:
    return _with(pi, currency="\u0131nr")


@_payload("currency in full-width letters")
def _fullwidth(pi: str) -> str:
    return _with(pi, currency="\uff55\uff53\uff44")


@_payload("currency a number")
def _numeric(pi: str) -> str:
    return _with(pi, currency=840)


@_payload("status unknown")
def _status(pi: str) -> str:
    text = _with(pi)
    return text.replace('"status": "succeeded"', '"status": "succeeded\u200b"', 1)


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_a_signed_payload_with_a_malformed_field_moves_no_money_and_opens_a_ticket(
    intake: Intake, kind: str
) -> None:
    pi = new_id("pi")
    intake.seed_inflight(pi, 5000)
    # The truth on Stripe: paid in full.  Acting on it here would still be acting on an
    # event that a forger (or a bug) could have sent.
    assert intake.stripe is not None
    intake.stripe.state.create_payment_intent(
        id=pi, amount=5000, currency="usd", status="succeeded", amount_received=5000
    )
    text = PAYLOADS[kind](pi)
    evt_id = json.loads(text)["id"]
    response = intake.post(text.encode(), sign(text))
    assert response.status_code == 200, response.text
    row = intake.settled(evt_id)
    assert row["status"] in ("processed", "ignored"), row["last_error"]
    entry = intake.entry(pi)
    assert entry is not None and entry.status.value == "INFLIGHT"
    assert entry.committed_amount == 0
    tickets = [t for t in intake.tickets_for(pi) if t["status"] == "open"]
    assert [t["kind"] for t in tickets] == ["unverifiable_payment"], tickets


def test_an_honest_payload_still_commits_at_once(intake: Intake) -> None:
    pi = new_id("pi")
    intake.seed_inflight(pi, 5000)
    text = json.dumps(event(pi_object(pi)))
    evt_id = json.loads(text)["id"]
    assert intake.post(text.encode(), sign(text)).status_code == 200
    intake.settled(evt_id)
    entry = intake.entry(pi)
    assert entry.status.value == "APPLIED" and entry.committed_amount == 5000


def test_an_over_long_receipt_email_does_not_fail_the_ticket_insert(intake: Intake) -> None:
    """A discrepancy on a payment whose text fields are longer than the ticket's columns:
    the ticket is still opened (the text cut), never a failed event that nobody is told of."""
    pi = new_id("pi")
    intake.seed_inflight(pi, 5000)
    email = "a" * 480 + "@example.com"
    text = json.dumps(event(pi_object(pi, amount_received=6000, receipt_email=email)))
    evt_id = json.loads(text)["id"]
    assert intake.post(text.encode(), sign(text)).status_code == 200
    row = intake.settled(evt_id)
    assert row["status"] == "processed", row["last_error"]
    tickets = intake.tickets_for(pi)
    assert [t["kind"] for t in tickets] == ["amount_mismatch"]
    assert intake.entry(pi).committed_amount == 0


def test_a_payload_with_huge_metadata_is_stored_and_acted_on_within_bounds(
    intake: Intake,
) -> None:
    pi = new_id("pi")
    intake.seed_inflight(pi, 5000)
    meta = {f"k{i}": "v" * 400 for i in range(50)}
    text = json.dumps(event(pi_object(pi, metadata=meta)))
    evt_id = json.loads(text)["id"]
    assert intake.post(text.encode(), sign(text)).status_code == 200
    intake.settled(evt_id)
    assert intake.entry(pi).committed_amount == 5000


@pytest.mark.parametrize(
    ("envelope", "cause"),
    [({"livemode": True}, "events:livemode:live"), ({"account": "acct_evil"}, "events:account")],
)
def test_an_event_of_another_mode_or_account_is_stored_never_acted_on_and_ticketed(
    intake: Intake, envelope: dict[str, Any], cause: str
) -> None:
    pi = new_id("pi")
    intake.seed_inflight(pi, 5000)
    text = json.dumps(event(pi_object(pi), **envelope))
    evt_id = json.loads(text)["id"]
    assert intake.post(text.encode(), sign(text)).status_code == 200
    row = intake.settled(evt_id)
    assert row["status"] == "ignored"
    assert intake.entry(pi).committed_amount == 0
    incidents = intake.rows(
        "SELECT * FROM recon_tickets WHERE kind = 'incident' AND payment_id LIKE :c",
        c=cause + "%",
    )
    assert incidents and incidents[0]["status"] == "open"


def test_a_thin_event_acts_only_on_what_stripe_says_when_asked(intake: Intake) -> None:
    """A thin event carries no object: the worker fetches the payment, so a forged thin
    event can only make the service look at Stripe's own answer."""
    pi = new_id("pi")
    intake.seed_inflight(pi, 5000)
    assert intake.stripe is not None
    intake.stripe.state.create_payment_intent(id=pi, amount=5000, currency="usd", status="canceled")
    thin = {
        "id": new_id("evt"),
        "object": "v2.core.event",
        "type": "v1.payment_intent.succeeded",
        "created": "2026-01-01T00:00:00.000Z",
        "related_object": {"id": pi, "type": "payment_intent", "url": f"/v1/payment_intents/{pi}"},
    }
    text = json.dumps(thin)
    assert intake.post(text.encode(), sign(text)).status_code == 200
    intake.settled(thin["id"])
    entry = intake.entry(pi)
    assert entry.committed_amount == 0 and entry.status.value == "VOID"


def test_no_failed_event_keeps_a_whole_sql_statement_as_its_error(intake: Intake) -> None:
    for row in intake.rows("SELECT event_id, last_error FROM recon_inbox"):
        error = row["last_error"] or ""
        assert "[SQL:" not in error and "[parameters:" not in error, error[:300]
        assert len(error) <= 500


def test_a_nul_in_metadata_is_stored_as_received_and_kept_out_of_every_text_column(
    intake: Intake,
) -> None:
    """PostgreSQL's json column holds a ``\\u0000`` escape, its text columns cannot: the
    event is stored as sent, and the ticket it leads to shows U+FFFD instead of failing."""
    pi = new_id("pi")
    meta = {"ledger_destination": "wallet:a\u0000b", "n\u0000te": "x\u0000"}
    assert intake.stripe is not None
    intake.stripe.state.create_payment_intent(
        id=pi,
        amount=5000,
        currency="usd",
        status="succeeded",
        amount_received=5000,
        metadata=meta,
    )
    text = json.dumps(event(pi_object(pi, metadata=meta)))
    assert "\\u0000" in text
    evt_id = json.loads(text)["id"]
    assert intake.post(text.encode(), sign(text)).status_code == 200
    row = intake.settled(evt_id)
    assert row["status"] == "processed", row["last_error"]
    stored = intake.inbox_row(evt_id)
    assert stored is not None and stored["payload"]["data"]["object"]["metadata"] == meta
    tickets = intake.tickets_for(pi)
    assert [t["kind"] for t in tickets] == ["missing_record"]
    assert tickets[0]["balance"] == "wallet:a\ufffdb"
