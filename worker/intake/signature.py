"""Stripe-Signature verification for the intake, with the official library."""

from __future__ import annotations

import stripe

__all__ = ["check_stripe_signature"]


def check_stripe_signature(payload: str, header: str, secrets: list[str], tolerance: float) -> str:
    """``"ok"``, ``"stale"`` (a secret matches but the timestamp is too old) or ``"bad"``.

    Every configured secret is tried: while a secret is being rolled, Stripe signs with
    both and either may be the one we still (or already) hold."""
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
            return "ok"
        except stripe.SignatureVerificationError:
            continue
    # Tell "stale" from "wrong" by checking again without the tolerance: the library does
    # the HMAC, we never parse its messages.
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, None)
            return "stale"
        except stripe.SignatureVerificationError:
            continue
    return "bad"
