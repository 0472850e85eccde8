"""Stripe example objects that every fake object is copied from.

The examples come from Stripe's published `fixtures3.json` so that the objects we serve carry
every field real Stripe sends (a client that reads a field we forgot would otherwise pass here
and break in production). A fresh clone without the shared fixtures directory still works: the
embedded fallback has the same top-level keys, with simpler nested values.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURES_ENV = "RECON_STRIPE_FIXTURES"
DEFAULT_FIXTURES_PATH = Path(__file__).parents[2].parent / "shared/stripe-fixtures/fixtures3.json"

_EMBEDDED: dict[str, dict[str, Any]] = {
    "payment_intent": {
        "amount": 1099,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": {"enabled": True},
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic",
        "client_secret": "pi_1PgafyB7WZ01zgkWSjxsAJo3_secret_Dm43xiq1k0ywrRRjDoi8y1gkM",
        "confirmation_method": "automatic",
        "created": 1234567890,
        "currency": "usd",
        "customer": None,
        "description": None,
        "id": "pi_1PgafyB7WZ01zgkWSjxsAJo3",
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": {},
        "next_action": None,
        "object": "payment_intent",
        "on_behalf_of": None,
        "payment_method": None,
        "payment_method_configuration_details": None,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": None,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "requires_payment_method",
        "transfer_data": None,
        "transfer_group": None,
        "source": None,
        "excluded_payment_method_types": None,
        "customer_account": None,
        "managed_payments": {"enabled": False},
    },
    "charge": {
        "amount": 100,
        "amount_captured": 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": None,
        "billing_details": {
            "address": None,
            "email": None,
            "name": None,
            "phone": None,
            "tax_id": None,
        },
        "calculated_statement_descriptor": None,
        "captured": False,
        "created": 1234567890,
        "currency": "usd",
        "customer": None,
        "description": None,
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None,
        "failure_message": None,
        "fraud_details": {},
        "id": "ch_1PgafuB7WZ01zgkWXYmPNZs8",
        "livemode": False,
        "metadata": {},
        "object": "charge",
        "on_behalf_of": None,
        "outcome": None,
        "paid": True,
        "payment_intent": None,
        "payment_method": None,
        "payment_method_details": {"card": {"brand": "visa", "last4": "4242"}, "type": "card"},
        "receipt_email": None,
        "receipt_number": None,
        "receipt_url": None,
        "refunded": False,
        "refunds": {"data": [], "has_more": False, "object": "list", "url": ""},
        "review": None,
        "shipping": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded",
        "transfer_data": None,
        "transfer_group": None,
        "source": None,
    },
    "dispute": {
        "amount": 1000,
        "balance_transactions": [],
        "charge": "ch_1PgafuB7WZ01zgkWXYmPNZs8",
        "created": 1234567890,
        "currency": "usd",
        "evidence": {},
        "evidence_details": {
            "due_by": None,
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        },
        "id": "dp_1Pgc71B7WZ01zgkWMevJiAUx",
        "is_charge_refundable": True,
        "livemode": False,
        "metadata": {},
        "object": "dispute",
        "payment_intent": None,
        "payment_method_details": {"card": {"brand": "visa"}, "type": "card"},
        "reason": "general",
        "status": "warning_needs_response",
        "enhanced_eligibility_types": [],
    },
    "refund": {
        "amount": 100,
        "balance_transaction": None,
        "charge": "ch_1PgafuB7WZ01zgkWXYmPNZs8",
        "created": 1234567890,
        "currency": "usd",
        "destination_details": {"card": {"type": "reversal"}, "type": "card"},
        "id": "re_1Pgc72B7WZ01zgkWqPvrRrPE",
        "metadata": {},
        "object": "refund",
        "payment_intent": None,
        "reason": None,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
        "customer": None,
        "customer_account": None,
        "payment_method": None,
    },
    "radar.early_fraud_warning": {
        "actionable": True,
        "charge": "ch_1234",
        "created": 1234567890,
        "fraud_type": "misc",
        "id": "issfr_1Pgc79B7WZ01zgkWxwDzEIPX",
        "livemode": False,
        "object": "radar.early_fraud_warning",
    },
    "event": {
        "api_version": None,
        "created": 1234567890,
        "data": {"object": {}},
        "id": "evt_1Pgc76B7WZ01zgkWwyRHS12y",
        "livemode": False,
        "object": "event",
        "pending_webhooks": 0,
        "request": {"id": None, "idempotency_key": None},
        "type": "plan.created",
    },
}


# Fixture resource name -> Templates field.
RESOURCES = {
    "payment_intent": "payment_intent",
    "charge": "charge",
    "dispute": "dispute",
    "event": "event",
    "refund": "refund",
    "radar.early_fraud_warning": "early_fraud_warning",
}


def _embedded(name: str) -> Any:
    return field(default_factory=lambda: copy.deepcopy(_EMBEDDED[name]))


@dataclass(frozen=True)
class Templates:
    """One example object per resource. Never mutate these: every object served is a copy."""

    payment_intent: dict[str, Any]
    charge: dict[str, Any]
    dispute: dict[str, Any]
    event: dict[str, Any]
    source: str
    refund: dict[str, Any] = _embedded("refund")
    early_fraud_warning: dict[str, Any] = _embedded("radar.early_fraud_warning")


def fixtures_path() -> Path:
    env = os.environ.get(FIXTURES_ENV)
    return Path(env) if env else DEFAULT_FIXTURES_PATH


def load_templates(path: Path | None = None) -> Templates:
    path = path if path is not None else fixtures_path()
    resources: dict[str, Any] = {}
    source = "embedded"
    if path.is_file():
        resources = json.loads(path.read_text(encoding="utf-8")).get("resources", {})
        source = str(path)
    picked = {
        attr: copy.deepcopy(resources.get(name) or _EMBEDDED[name])
        for name, attr in RESOURCES.items()
    }
    return Templates(source=source, **picked)


def embedded_templates() -> Templates:
    picked = {attr: copy.deepcopy(_EMBEDDED[name]) for name, attr in RESOURCES.items()}
    return Templates(source="embedded", **picked)
