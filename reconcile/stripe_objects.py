"""Stripe objects as the decision core sees them: a PaymentIntent's JSON -> :class:`Payment`.

The gateway (reconcile/stripe_gateway.py) reads; this module only interprets what was read,
so it is the one place that knows which Stripe field means what.  Every value is data from
outside: a field that is absent or null stays None (unknown, never 0 or ""), and one that
is present but malformed (a JSON type other than Stripe's, an amount out of range, a
currency that is not ISO 4217, a status this build does not know) is None too, with what
was wrong recorded in ``Payment.problems`` so that no money moves on it.

Facts relied on (see tests/stripe_server/FACTS.md for the sources):

- Amounts are integers in the currency's smallest unit; ``currency`` is a lower-case ISO
  4217 code; ``created`` is Unix seconds.
- ``latest_charge`` is an id unless expanded; event payloads are never expanded.
- Before API version 2025-03-31 (basil), a partial capture and the cancel of an uncaptured
  payment create a Refund of the uncaptured remainder, which counts in the charge's
  ``amount_refunded``; from basil on they do not.  The version that decides is the one of
  the capture or cancel request, not the one an object is read in.
- A failed attempt leaves ``latest_charge.status == "failed"`` (with ``failure_code``) even
  after ``last_payment_error`` is cleared by a later update of the PaymentIntent.
- A charge says ``disputed``; the disputes themselves (status, amount, reason,
  ``evidence_details.due_by``) are Dispute objects, listed by ``payment_intent``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import stripe

from ledger.money import ISO_CURRENCIES
from reconcile.model import Dispute, DisputeStatus, FraudWarning, Payment, PaymentStatus

__all__ = [
    "BASIL",
    "MAX_AMOUNT",
    "dispute_from_stripe",
    "fraud_warning_from_stripe",
    "needs_refund_list",
    "payment_from_stripe",
]

BASIL: Final = "2025-03-31"
# No Stripe amount comes near this (eight digits for most currencies); anything above is
# not an amount but an attack or a bug, and must never reach a BIGINT column.
MAX_AMOUNT: Final = 10**12
# Unix seconds between 2000 and 2100: anything else is not a Stripe timestamp.
_EPOCH_RANGE: Final = (946_684_800, 4_102_444_800)
_MAX_TEXT: Final = 500
# The longest id and email address the ticket and customer tables keep (RFC 5321 allows
# 320 characters for an address).
_MAX_ID: Final = 255
_MAX_EMAIL: Final = 320
# Refunds that still take (or took) money back from the customer.
_LIVE_REFUND: Final = frozenset({"succeeded", "pending", "requires_action"})


def _as_dict(obj: Mapping[str, Any] | stripe.StripeObject) -> dict[str, Any]:
    # In stripe 16 a StripeObject is not a Mapping (``.get`` raises): convert it whole.
    if isinstance(obj, stripe.StripeObject):
        return obj.to_dict(recursive=True, for_json=True)
    return dict(obj)


class _Reader:
    """Reads fields of one Stripe object, noting what was malformed."""

    def __init__(self, obj: Mapping[str, Any], where: str) -> None:
        self.obj = obj
        self.where = where
        self.problems: list[str] = []

    def _bad(self, name: str, value: Any, expected: str) -> None:
        shown = repr(value)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        self.problems.append(f"{self.where}.{name}: expected {expected}, got {shown}")

    def amount(self, name: str) -> int | None:
        value = self.obj.get(name)
        if value is None:
            return None
        # bool is an int in Python; ``true`` is not an amount.
        if isinstance(value, bool) or not isinstance(value, int):
            self._bad(name, value, "an integer amount")
            return None
        if not 0 <= value < MAX_AMOUNT:
            self._bad(name, value, f"an amount from 0 to {MAX_AMOUNT - 1}")
            return None
        return value

    def currency(self, name: str = "currency") -> str | None:
        value = self.obj.get(name)
        if value is None:
            return None
        # ASCII first: Python upper-cases "u\u017fd" (long s) to "USD" and "\u0131nr" (dotless i)
        # to "INR", so a look-alike would otherwise pass as the real code.
        if not isinstance(value, str) or not value.isascii() or value.upper() not in ISO_CURRENCIES:
            self._bad(name, value, "an ISO 4217 currency code")
            return None
        return value.upper()

    def time(self, name: str) -> datetime | None:
        value = self.obj.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self._bad(name, value, "Unix seconds")
            return None
        if not _EPOCH_RANGE[0] <= value <= _EPOCH_RANGE[1]:
            self._bad(name, value, "Unix seconds between 2000 and 2100")
            return None
        return datetime.fromtimestamp(value, tz=UTC)

    def text(self, name: str, limit: int = _MAX_TEXT) -> str | None:
        value = self.obj.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            self._bad(name, value, "a string")
            return None
        return _clean(value[:limit])

    def flag(self, name: str) -> bool | None:
        value = self.obj.get(name)
        if value is None:
            return None
        if not isinstance(value, bool):
            self._bad(name, value, "true or false")
            return None
        return value

    def child(self, name: str) -> Mapping[str, Any] | None:
        value = self.obj.get(name)
        return value if isinstance(value, Mapping) else None


def _clean(text: str) -> str:
    """Text as every column can hold it: a NUL (which JSON may carry, PostgreSQL's text
    types cannot) shown as U+FFFD instead of failing the insert of a ticket or an entry."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _error_text(error: Any) -> str | None:
    if error is None:
        return None
    if isinstance(error, Mapping):
        for key in ("code", "decline_code", "message", "type"):
            value = error.get(key)
            if value and isinstance(value, str):
                return _clean(value[:_MAX_TEXT])
        # Set but saying nothing: still a failed attempt, which the decision needs to know.
        return "unknown_error"
    return _clean(str(error)[:_MAX_TEXT])


def pre_basil(api_version: str | None) -> bool | None:
    """Whether objects of ``api_version`` count the uncaptured remainder as refunded;
    None when the version is unknown."""
    if not api_version or len(api_version) < 10:
        return None
    return api_version[:10] < BASIL


# The reasons a pre-basil remainder refund carries (none, or an expired authorisation).
_REMAINDER_REASONS: Final = (None, "expired_uncaptured_charge")


def _remainder(charge: Mapping[str, Any]) -> int | None:
    amount, captured = charge.get("amount"), charge.get("amount_captured")
    if not isinstance(amount, int) or isinstance(amount, bool):
        return None
    captured = captured if isinstance(captured, int) and not isinstance(captured, bool) else 0
    return max(0, amount - captured)


def _customer_refunds(
    charge: Mapping[str, Any],
    reader: _Reader,
    api_version: str | None,
    refunds: Iterable[Mapping[str, Any]] | None,
) -> int | None:
    """Money refunded to the customer, never the uncaptured remainder; None: unknown.

    What an object shows was fixed when the capture or cancel happened, under the API
    version of *that* request: a charge captured under an old version still counts its
    remainder refund when read with a new one.  So the version an object is read in only
    settles it for old versions; otherwise the Refund objects tell (the gateway lists them
    when this answers None), the remainder being the refund of exactly the uncaptured
    amount that Stripe made itself (no reason, or ``expired_uncaptured_charge``)."""
    remainder = _remainder(charge)
    if remainder is None:
        return None
    if refunds is None:
        embedded = charge.get("refunds")
        listed = embedded if isinstance(embedded, Mapping) else {}
        data = listed.get("data")
        # An empty list says nothing: since 2022-11-15 it is there only when expanded.
        if isinstance(data, list) and data and not listed.get("has_more"):
            refunds = data
    if refunds is not None:
        live = [r for r in refunds if isinstance(r, Mapping) and r.get("status") in _LIVE_REFUND]
        amounts = []
        for refund in live:
            amount = _Reader(refund, "refund").amount("amount")
            if amount is None:
                reader.problems.append("refund: an amount that is not an amount")
                return None
            amounts.append((amount, refund.get("reason")))
        if remainder:
            for i, (amount, reason) in enumerate(amounts):
                if amount == remainder and reason in _REMAINDER_REASONS:
                    del amounts[i]
                    break
        return sum(amount for amount, _ in amounts)
    refunded = reader.amount("amount_refunded")
    if refunded is None or remainder == 0 or refunded == 0:
        return refunded
    if pre_basil(api_version):
        return max(0, refunded - remainder)
    return None


def dispute_from_stripe(obj: Mapping[str, Any]) -> tuple[Dispute, list[str]]:
    reader = _Reader(obj, "dispute")
    raw_status = obj.get("status")
    status: DisputeStatus | None = None  # one this build does not know: treated as open
    if isinstance(raw_status, str) and raw_status in DisputeStatus.__members__.values():
        status = DisputeStatus(raw_status)
    evidence = reader.child("evidence_details") or {}
    due_by = _Reader(evidence, "dispute.evidence_details").time("due_by")
    dispute = Dispute(
        id=_clean(str(obj.get("id") or "?")[:255]),
        status=status,
        amount=reader.amount("amount"),
        currency=reader.currency(),
        reason=reader.text("reason"),
        evidence_due_by=due_by,
    )
    return dispute, reader.problems


def fraud_warning_from_stripe(obj: Mapping[str, Any]) -> FraudWarning:
    reader = _Reader(obj, "early_fraud_warning")
    return FraudWarning(
        id=_clean(str(obj.get("id") or "?")[:255]),
        fraud_type=reader.text("fraud_type"),
        actionable=reader.flag("actionable"),
    )


def _method_type(pi: Mapping[str, Any], charge: Mapping[str, Any]) -> str | None:
    details = charge.get("payment_method_details")
    if isinstance(details, Mapping) and isinstance(details.get("type"), str):
        return _clean(str(details["type"])[:_MAX_TEXT])
    method = pi.get("payment_method")
    if isinstance(method, Mapping) and isinstance(method.get("type"), str):
        return _clean(str(method["type"])[:_MAX_TEXT])
    types = pi.get("payment_method_types")
    if isinstance(types, list) and len(types) == 1 and isinstance(types[0], str):
        return _clean(str(types[0])[:_MAX_TEXT])
    return None


def payment_from_stripe(
    obj: Mapping[str, Any] | stripe.StripeObject,
    *,
    api_version: str | None = None,
    disputes: Iterable[Mapping[str, Any]] | None = None,
    refunds: Iterable[Mapping[str, Any]] | None = None,
    fraud_warnings: Iterable[Mapping[str, Any]] | None = None,
) -> Payment:
    """The :class:`Payment` view of a PaymentIntent (a dict, or a ``StripeObject``).

    ``api_version``: the version the object is rendered in (ours, pinned, for what we read;
    the event's ``api_version`` for a webhook payload).  ``disputes``: the payment's Dispute
    objects when they were listed; otherwise they are known only to be none (an expanded
    charge that says ``disputed: false``) or unknown.  ``fraud_warnings``: early fraud
    warnings when known (an EFW event), else unknown.  ``refunds``: the payment's Refund
    objects when they were listed.
    """
    pi = _as_dict(obj)
    payment_id = pi.get("id")
    if not isinstance(payment_id, str) or not payment_id:
        raise ValueError("not a PaymentIntent: no id")
    reader = _Reader(pi, "payment_intent")
    raw_status = pi.get("status")
    status: PaymentStatus | None = None
    if raw_status is not None:
        try:
            status = PaymentStatus(raw_status)
        except ValueError:
            reader._bad("status", raw_status, "a PaymentIntent status")

    charge_obj = reader.child("latest_charge")
    charge = charge_obj or {}
    charge_reader = _Reader(charge, "latest_charge")
    received = reader.amount("amount_received")
    if received is None and "amount_received" not in pi and charge_obj is not None:
        # Older API versions and some emulators send no amount_received: what the charge
        # captured is the same money, when the charge says so.
        received = charge_reader.amount("amount_captured")

    amount_refunded: int | None = None
    known_disputes: tuple[Dispute, ...] | None = None
    if charge_obj is not None:
        amount_refunded = _customer_refunds(charge, charge_reader, api_version, refunds)
        disputed = charge_reader.flag("disputed")
        if disputes is not None:
            parsed = [dispute_from_stripe(d) for d in disputes if isinstance(d, Mapping)]
            known_disputes = tuple(d for d, _ in parsed)
            for _, problems in parsed:
                reader.problems.extend(problems)
        elif disputed is False:
            known_disputes = ()
    elif disputes is not None:
        known_disputes = tuple(dispute_from_stripe(d)[0] for d in disputes)

    customer_obj = pi.get("customer")
    customer: str | None
    customer_email = reader.text("receipt_email", _MAX_EMAIL)
    if isinstance(customer_obj, Mapping):
        customer = _Reader(customer_obj, "customer").text("id", _MAX_ID)
        customer_email = customer_email or _Reader(customer_obj, "customer").text(
            "email", _MAX_EMAIL
        )
    else:
        customer = reader.text("customer", _MAX_ID)
    billing = charge_reader.child("billing_details")
    billing_reader = _Reader(billing or {}, "billing_details")
    if customer_email is None:
        customer_email = billing_reader.text("email", _MAX_EMAIL)
    customer_name = billing_reader.text("name")
    if customer_name is None and isinstance(customer_obj, Mapping):
        customer_name = _Reader(customer_obj, "customer").text("name")

    card = None
    details = charge_reader.child("payment_method_details")
    if details is not None:
        card = details.get("card") if isinstance(details.get("card"), Mapping) else None
    capture_before = _Reader(card, "card").time("capture_before") if card else None

    metadata = pi.get("metadata")
    meta = (
        {
            _clean(str(k)[:_MAX_TEXT]): "" if v is None else _clean(str(v)[:_MAX_TEXT])
            for k, v in metadata.items()
        }
        if isinstance(metadata, Mapping)
        else {}
    )
    return Payment(
        id=payment_id[:255],
        status=status,
        amount=reader.amount("amount"),
        amount_received=received,
        currency=reader.currency(),
        created=reader.time("created"),
        last_payment_error=_error_text(pi.get("last_payment_error")),
        charge_failed=charge.get("status") == "failed",
        charge_failure_code=charge_reader.text("failure_code"),
        amount_refunded=amount_refunded,
        disputes=known_disputes,
        fraud_warnings=(
            None
            if fraud_warnings is None
            else tuple(fraud_warning_from_stripe(w) for w in fraud_warnings)
        ),
        payment_method_type=_method_type(pi, charge),
        capture_before=capture_before,
        customer=customer,
        customer_email=customer_email,
        customer_name=customer_name,
        livemode=pi.get("livemode") is True,
        metadata=meta,
        problems=tuple(reader.problems + charge_reader.problems),
    )


def needs_refund_list(payment: Payment, pi: Mapping[str, Any]) -> bool:
    """Whether only the Refund objects can tell this payment's customer refunds."""
    charge = pi.get("latest_charge")
    return payment.amount_refunded is None and isinstance(charge, Mapping)
