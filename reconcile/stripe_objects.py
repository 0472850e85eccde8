"""Stripe objects as the decision core sees them: a PaymentIntent's JSON -> :class:`Payment`.

The gateway (reconcile/stripe_gateway.py) reads; this module only interprets what was read,
so it is the one place that knows which Stripe field means what.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import stripe

from reconcile.model import Payment, PaymentStatus

__all__ = ["payment_from_stripe"]


def _as_dict(obj: Mapping[str, Any] | stripe.StripeObject) -> dict[str, Any]:
    # In stripe 16 a StripeObject is not a Mapping (``.get`` raises): convert it whole.
    if isinstance(obj, stripe.StripeObject):
        return obj.to_dict(recursive=True, for_json=True)
    return dict(obj)


def _error_text(error: Any) -> str | None:
    if error is None:
        return None
    if isinstance(error, Mapping):
        for key in ("code", "decline_code", "message", "type"):
            value = error.get(key)
            if value:
                return str(value)
        # Set but saying nothing: still a failed attempt, which the decision needs to know.
        return "unknown_error"
    return str(error)


def _epoch_to_datetime(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value), tz=UTC)


def payment_from_stripe(obj: Mapping[str, Any] | stripe.StripeObject) -> Payment:
    """The :class:`Payment` view of a PaymentIntent (a dict, or a ``StripeObject``).

    ``latest_charge`` counts only when expanded (a dict): refunds and disputes live on the
    charge.  A charge says whether it is disputed but not for how much; a dispute covers the
    whole captured amount except in rare partial disputes, so ``amount_disputed`` is the
    charge's captured amount.
    """
    pi = _as_dict(obj)
    payment_id = str(pi["id"])
    raw_status = pi.get("status")
    try:
        status = PaymentStatus(str(raw_status))
    except ValueError:
        raise ValueError(f"PaymentIntent {payment_id} has unknown status {raw_status!r}") from None

    charge = pi.get("latest_charge")
    charge = charge if isinstance(charge, Mapping) else {}
    disputed = bool(charge.get("disputed") or False)
    amount_disputed = 0
    if disputed:
        amount_disputed = int(charge.get("amount_captured") or charge.get("amount") or 0)

    customer_obj = pi.get("customer")
    customer: str | None
    customer_email: str | None = pi.get("receipt_email") or None
    if isinstance(customer_obj, Mapping):
        customer = customer_obj.get("id")
        customer_email = customer_email or customer_obj.get("email") or None
    else:
        customer = customer_obj or None
    billing = charge.get("billing_details")
    billing = billing if isinstance(billing, Mapping) else {}
    if customer_email is None:
        customer_email = billing.get("email") or None
    customer_name = billing.get("name") or (
        customer_obj.get("name") if isinstance(customer_obj, Mapping) else None
    )

    metadata = pi.get("metadata") or {}
    return Payment(
        id=payment_id,
        status=status,
        amount=int(pi.get("amount") or 0),
        amount_received=int(pi.get("amount_received") or 0),
        currency=str(pi.get("currency") or "").upper(),
        created=_epoch_to_datetime(pi["created"]),
        last_payment_error=_error_text(pi.get("last_payment_error")),
        amount_refunded=int(charge.get("amount_refunded") or 0),
        disputed=disputed,
        amount_disputed=amount_disputed,
        customer=str(customer) if customer else None,
        customer_email=str(customer_email) if customer_email else None,
        livemode=bool(pi.get("livemode") or False),
        customer_name=str(customer_name) if isinstance(customer_name, str) else None,
        metadata={str(k): "" if v is None else str(v) for k, v in dict(metadata).items()},
    )
