"""Webhook deliveries signed the way Stripe signs them, for feeding the intake endpoint."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import stripe


def signed_webhook(
    event: Mapping[str, Any] | Any,
    secret: str | Sequence[str],
    timestamp: float | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a Stripe webhook delivery carrying `event`.

    Several secrets give several `v1=` signatures in one header, as Stripe sends while an
    endpoint's secret is being rolled."""
    if hasattr(event, "to_dict"):
        event = event.to_dict()
    payload = json.dumps(event, indent=2)
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise ValueError("at least one webhook secret is needed")
    timestamp = int(time.time() if timestamp is None else timestamp)
    header = stripe.WebhookSignature.generate_signature_header(payload, secrets[0], timestamp)
    for extra in secrets[1:]:
        other = stripe.WebhookSignature.generate_signature_header(payload, extra, timestamp)
        header += "," + other.split(",", 1)[1]
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": header,
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    }
    return payload.encode("utf-8"), headers
