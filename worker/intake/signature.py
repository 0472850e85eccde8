"""Stripe-Signature verification for the intake, with the official library."""

from __future__ import annotations

import stripe

__all__ = ["SignatureChecker"]


class SignatureChecker:
    """Verifies with ``stripe.WebhookSignature.verify_header`` against every configured
    secret: while a secret is being rolled, Stripe signs with both and either may be the
    one we still (or already) hold.

    The secret that matched last is tried first, so a valid webhook costs one HMAC even
    while the secret that Stripe signs with is not the first one configured."""

    def __init__(self, secrets: list[str], tolerance: float) -> None:
        self._order = list(secrets)
        self.tolerance = tolerance

    def __bool__(self) -> bool:
        return bool(self._order)

    def check(self, payload: str, header: str) -> str:
        """``"ok"``, ``"stale"`` (a secret matches but the timestamp is too old) or ``"bad"``."""
        order = self._order
        for n, secret in enumerate(order):
            try:
                stripe.WebhookSignature.verify_header(payload, header, secret, self.tolerance)
            except stripe.SignatureVerificationError:
                continue
            if n:
                order.insert(0, order.pop(n))
            return "ok"
        # Tell "stale" from "wrong" by checking again without the tolerance: the library
        # does the HMAC, we never parse its messages.  Only refused webhooks get here.
        for secret in order:
            try:
                stripe.WebhookSignature.verify_header(payload, header, secret, None)
            except stripe.SignatureVerificationError:
                continue
            return "stale"
        return "bad"
