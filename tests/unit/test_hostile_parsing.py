"""Issue 14's payload and parsing rules without I/O: the reasons parse_event gives, the
look-alike currencies, errors kept short.  The same kinds run end to end against the real
intake in tests/hostile/."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy.exc import DataError

from ledger.errors import UnknownCurrency
from ledger.money import normalize_currency
from reconcile.inbox import MAX_DEPTH, InvalidEvent, parse_event
from reconcile.redact import describe
from reconcile.stripe_objects import payment_from_stripe


def _event(**fields: object) -> dict[str, object]:
    evt: dict[str, object] = {
        "id": "evt_1",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": 1_700_000_000,
        "livemode": False,
        "data": {"object": {"id": "pi_1", "object": "payment_intent"}},
    }
    evt.update(fields)
    return evt


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "not_object"),
        (b"{", "not_json"),
        (json.dumps(_event(id="evt_a/../b")).encode(), "bad_id"),
        (json.dumps(_event(id="evt_a\u0000")).encode(), "bad_id"),
        (json.dumps(_event(type="payment_intent.\u0455ucceeded")).encode(), "bad_type"),
        (json.dumps(_event(created=2**63)).encode(), "bad_created"),
        (json.dumps(_event(livemode="false")).encode(), "not_event"),
        (
            json.dumps(
                _event(data={"object": {"id": "pi_1?x=1", "object": "payment_intent"}})
            ).encode(),
            "bad_id",
        ),
        (
            json.dumps(
                _event(x=json.loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)))
            ).encode(),
            "too_deep",
        ),
    ],
)
def test_parse_event_says_why_an_event_is_refused(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(body)
    assert caught.value.reason == reason


def test_an_event_created_ahead_of_the_clock_is_refused_only_past_the_slack() -> None:
    now = time.time()
    ahead = json.dumps(_event(created=int(now) + 100)).encode()
    assert parse_event(ahead, now=now, future=300)["id"] == "evt_1"
    with pytest.raises(InvalidEvent) as caught:
        parse_event(ahead, now=now, future=10)
    assert caught.value.reason == "future_event"


def test_a_nul_in_metadata_is_accepted_by_the_parser() -> None:
    evt = _event()
    evt["data"] = {"object": {"id": "pi_1", "metadata": {"k": "a\u0000b"}}}
    assert parse_event(json.dumps(evt).encode())["id"] == "evt_1"


@pytest.mark.parametrize("code", ["u\u017fd", "\u0131nr", "\uff55sd", "usd\u200b"])
def test_a_look_alike_currency_is_no_currency(code: str) -> None:
    with pytest.raises(UnknownCurrency):
        normalize_currency(code)
    payment = payment_from_stripe(
        {"id": "pi_1", "status": "succeeded", "amount_received": 1, "currency": code}
    )
    assert payment.currency is None and payment.problems


def test_a_nul_in_stripe_text_is_shown_as_a_replacement_character() -> None:
    payment = payment_from_stripe(
        {"id": "pi_1", "receipt_email": "a\u0000@x", "metadata": {"k\u0000": "v\u0000"}}
    )
    assert payment.customer_email == "a\ufffd@x"
    assert payment.metadata == {"k\ufffd": "v\ufffd"}


def test_an_over_long_email_is_cut_to_what_the_ticket_keeps() -> None:
    payment = payment_from_stripe({"id": "pi_1", "receipt_email": "a" * 600})
    assert payment.customer_email is not None and len(payment.customer_email) == 320


def test_a_database_error_is_kept_as_its_classes_and_first_line_never_the_sql() -> None:
    class Driver(Exception):
        pass

    orig = Driver("value too long for type character varying(320)\nCONTEXT: secret row")
    exc = DataError("INSERT INTO recon_tickets (...) VALUES (%(a)s)", {"a": "x" * 5000}, orig)
    assert "[SQL:" in str(exc)
    text = describe(exc)
    assert text == "DataError (Driver): value too long for type character varying(320)"


def test_a_described_error_is_redacted_and_short() -> None:
    text = describe(RuntimeError("postgresql://u:hunter2@db/x " + "y" * 1000))
    assert "hunter2" not in text and len(text) <= 300


def _sdk_event_types() -> list[str]:
    """Every event type the pinned SDK names: v1 (``Event.type``) and v2/thin (one class
    each under ``stripe/events``) [H5]."""
    import re
    from pathlib import Path

    import stripe

    root = Path(stripe.__file__).parent
    source = (root / "_event.py").read_text()
    start = source.index("    type: Literal[")
    v1 = re.findall(r'"([^"]+)"', source[start : source.index("]", start)])
    v2 = [
        found
        for path in sorted((root / "events").glob("_v*.py"))
        for found in re.findall(r'type: Literal\["([^"]+)"\]', path.read_text())
    ]
    assert len(v1) > 200 and len(v2) > 100
    return v1 + v2


def test_every_event_type_stripe_names_passes_the_type_check() -> None:
    """Refusing a real type would make Stripe retry it for days and then disable the
    endpoint: the check must let every type of the pinned SDK through."""
    for event_type in _sdk_event_types():
        body = json.dumps(_event(type=event_type)).encode()
        assert parse_event(body)["type"] == event_type
