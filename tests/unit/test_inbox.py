"""The inbox's pure parts: which PaymentIntent an event is about, and what is an event."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from reconcile.inbox import (
    InvalidEvent,
    event_payment_id,
    initial_status,
    is_handled,
    mark_failed,
    parse_event,
)

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "stripe-fixtures" / "fixtures3.json"
PI = "pi_3PgafyB7WZ01zgkW0abcdefg"


def _resources() -> dict[str, Any]:
    if FIXTURES.exists():
        return json.loads(FIXTURES.read_text())["resources"]
    # Trimmed copies of Stripe's published examples, for a checkout without ../shared.
    return {
        "event": {
            "id": "evt_1Pgc76B7WZ01zgkWwyRHS12y",
            "object": "event",
            "api_version": None,
            "created": 1234567890,
            "data": {"object": {}},
            "livemode": False,
            "pending_webhooks": 0,
            "request": {"id": None, "idempotency_key": None},
            "type": "plan.created",
        },
        "payment_intent": {"id": PI, "object": "payment_intent", "status": "succeeded"},
        "charge": {"id": "ch_1", "object": "charge", "payment_intent": None},
        "refund": {"id": "re_1", "object": "refund", "charge": "ch_1", "payment_intent": None},
        "dispute": {"id": "dp_1", "object": "dispute", "charge": "ch_1", "payment_intent": None},
    }


RES = _resources()


def event(event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
    evt = copy.deepcopy(RES["event"])
    evt["type"] = event_type
    evt["data"] = {"object": obj}
    return evt


def obj(kind: str, **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(RES[kind])
    out.update(changes)
    return out


@pytest.mark.parametrize(
    "event_type",
    ["payment_intent.succeeded", "payment_intent.canceled", "payment_intent.payment_failed"],
)
def test_a_payment_intent_event_is_about_its_own_object(event_type: str) -> None:
    evt = event(event_type, obj("payment_intent", id=PI))
    assert event_payment_id(evt) == PI


@pytest.mark.parametrize(
    ("event_type", "kind"),
    [
        ("charge.succeeded", "charge"),
        ("charge.refunded", "charge"),
        ("charge.refund.updated", "refund"),
        ("refund.created", "refund"),
        ("charge.dispute.created", "dispute"),
        ("charge.dispute.closed", "dispute"),
    ],
)
def test_charge_refund_and_dispute_events_point_at_their_payment_intent(
    event_type: str, kind: str
) -> None:
    assert event_payment_id(event(event_type, obj(kind, payment_intent=PI))) == PI


def test_an_expanded_payment_intent_on_a_charge_is_followed_to_its_id() -> None:
    expanded = obj("payment_intent", id=PI)
    assert event_payment_id(event("charge.succeeded", obj("charge", payment_intent=expanded))) == PI


def test_a_charge_without_a_payment_intent_names_none_and_is_stored_ignored() -> None:
    evt = event("charge.succeeded", obj("charge", payment_intent=None))
    assert event_payment_id(evt) is None
    assert initial_status(evt) == "ignored"


def test_events_of_other_families_name_no_payment_and_are_stored_ignored() -> None:
    evt = copy.deepcopy(RES["event"])  # Stripe's example: plan.created
    assert event_payment_id(evt) is None
    assert not is_handled(evt["type"])
    assert initial_status(evt) == "ignored"


def test_handled_events_with_a_payment_are_stored_pending() -> None:
    assert initial_status(event("payment_intent.succeeded", obj("payment_intent", id=PI))) == (
        "pending"
    )


@pytest.mark.parametrize(
    "event_type",
    ["payment_intent.created", "charge.dispute.funds_withdrawn", "refund.updated"],
)
def test_payment_refund_and_dispute_families_are_handled(event_type: str) -> None:
    assert is_handled(event_type)


@pytest.mark.parametrize(
    "event_type", ["customer.created", "invoice.paid", "plan.created", "payment_method.attached"]
)
def test_unrelated_families_are_not_handled(event_type: str) -> None:
    assert not is_handled(event_type)


def test_a_well_formed_event_parses_to_its_dict() -> None:
    evt = event("payment_intent.succeeded", obj("payment_intent", id=PI))
    assert parse_event(json.dumps(evt).encode()) == evt


def _without(key: str) -> dict[str, Any]:
    evt = event("payment_intent.succeeded", obj("payment_intent", id=PI))
    del evt[key]
    return evt


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json", "JSON"),
        (b"\xff\xfe", "JSON"),
        (b"[1, 2]", "object"),
        (json.dumps({**_without("id"), "id": "ch_123"}).encode(), "event id"),
        (json.dumps(_without("id")).encode(), "event id"),
        (json.dumps(_without("type")).encode(), "type"),
        (json.dumps(_without("created")).encode(), "created"),
        (json.dumps({**_without("created"), "created": "yesterday"}).encode(), "created"),
        (json.dumps(_without("data")).encode(), "data.object"),
        (json.dumps({**_without("data"), "data": {"object": "pi_1"}}).encode(), "data.object"),
        (json.dumps({**_without("id"), "id": "evt_" + "x" * 300}).encode(), "too long"),
    ],
)
def test_a_body_that_is_not_a_stripe_event_is_rejected_with_the_reason(
    body: bytes, why: str
) -> None:
    with pytest.raises(InvalidEvent, match=why):
        parse_event(body)


def test_a_failure_text_is_stored_masked_and_truncated() -> None:
    captured: dict[str, Any] = {}

    class Conn:
        def execute(self, stmt: Any) -> Any:
            captured.update(stmt.compile().params)

            class Result:
                rowcount = 1

            return Result()

    from datetime import UTC, datetime

    error = "boom sk_test_abcdef123 at postgresql://user:hunter2@db/x " + "y" * 5000
    assert mark_failed(Conn(), "evt_1", error, datetime.now(UTC))  # type: ignore[arg-type]
    stored = captured["last_error"]
    assert "sk_test_abcdef123" not in stored and "hunter2" not in stored
    assert len(stored) <= 2000


@pytest.mark.parametrize(
    ("created", "why"),
    [
        (-1, "out of range"),
        (2**63, "out of range"),
        (10**30, "non-integer"),  # read as a float past 64 bits: never an integer here
        (1.5, "non-integer"),
    ],
)
def test_a_created_time_the_inbox_column_cannot_hold_is_rejected_before_the_database(
    created: Any, why: str
) -> None:
    evt = event("payment_intent.succeeded", obj("payment_intent", id=PI))
    body = json.dumps({**evt, "created": created}).encode()
    with pytest.raises(InvalidEvent, match=why):
        parse_event(body)
