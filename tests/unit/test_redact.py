"""One redact(), and every path that stores, logs or shows foreign text goes through it."""

from __future__ import annotations

import pytest
import stripe

from reconcile import inbox
from reconcile.redact import redact
from reconcile.stripe_gateway import StripeGateway
from worker import sinks
from worker.logs import redact_processor

SECRETS = {
    "live key": "sk_live_51HqLyjWDarjtT1zdp7dcAbC",
    "test key": "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
    "restricted key": "rk_live_51HqLyjWDarjtT1zdp7dc",
    "restricted test key": "rk_test_51HqLyjWDarjtT1zdp7dc",
    "webhook secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "masked key Stripe quotes back": "sk_test_****1234",
    "URL password": "hunter2",
}
TEXT = (
    "boom: {live key} {test key} key={restricted key} {restricted test key} "
    "secret {webhook secret}; Invalid API Key provided: {masked key Stripe quotes back}; "
    "postgresql+psycopg://recon:{URL password}@db:5432/recon"
).format(**SECRETS)


def leaked(text: str) -> list[str]:
    return [name for name, secret in SECRETS.items() if secret in text]


def test_redact_masks_every_credential_shape() -> None:
    out = redact(TEXT)
    assert leaked(out) == []
    assert "postgresql+psycopg://***@db:5432/recon" in out
    assert "Invalid API Key provided: ***" in out


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "pi_3MtwBwLkdIwHu7ix28a3tqPa evt_1 cus_9s6XKzkNRiz8i3 https://example.com/x"
    assert redact(text) == text


def test_log_lines_are_redacted() -> None:
    event = redact_processor(None, "info", {"event": "x", "error": TEXT, "nested": [TEXT]})
    assert leaked(str(event)) == []


def test_inbox_errors_are_redacted_before_they_are_stored() -> None:
    assert leaked(inbox.stored_error(TEXT)) == []


@pytest.mark.parametrize("status", [400, 402, 404, 409])
def test_stripe_error_messages_are_redacted_before_they_reach_our_exceptions(
    status: int,
) -> None:
    gateway = StripeGateway("sk_test_dummy")
    error = stripe.InvalidRequestError(TEXT, param=None, http_status=status)
    _, raised = gateway._classify("payment_intents.retrieve", error, missing_ok=False)
    assert raised is not None
    assert leaked(str(raised)) == []


def test_ticket_sink_errors_are_redacted_before_they_are_stored() -> None:
    assert leaked(sinks._scrub(TEXT, ())) == []
