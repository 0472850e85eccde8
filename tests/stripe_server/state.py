"""In-memory Stripe account: PaymentIntents, their charges and disputes, and the event log.

Objects are kept as small records and rendered into Stripe's JSON shape on read, so that
seeding tens of thousands of payments stays cheap. Two sorted indexes, `(created, id)` for
PaymentIntents and `(created, seq, id)` for events, make every list page a bisect plus a walk
of at most `limit + 1` entries (unless a filter that no index covers, such as `types[]`,
forces a longer walk).

Thread safety: the server's event loop and the test thread that seeds or inspects state run
concurrently, so every read and write takes `self._lock`.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Any

from .templates import Templates, load_templates

try:
    import stripe

    DEFAULT_API_VERSION: str | None = stripe.api_version
except ImportError:  # pragma: no cover - stripe is a runtime dependency of the project
    DEFAULT_API_VERSION = None

STATUSES = frozenset(
    {
        "requires_payment_method",
        "requires_confirmation",
        "requires_action",
        "processing",
        "requires_capture",
        "canceled",
        "succeeded",
    }
)
# requires_confirmation has no event of its own on Stripe; requires_payment_method emits
# payment_failed only with an error, and requires_capture is handled apart (see _event_types).
_STATUS_EVENT = {
    "succeeded": "payment_intent.succeeded",
    "canceled": "payment_intent.canceled",
    "processing": "payment_intent.processing",
    "requires_action": "payment_intent.requires_action",
}
# Statuses that only exist once a payment method was tried, so a charge object exists.
_ATTEMPTED = frozenset({"processing", "requires_capture", "succeeded"})

_CORE_FIELDS = frozenset(
    {
        "amount",
        "currency",
        "status",
        "created",
        "customer",
        "metadata",
        "amount_received",
        "amount_capturable",
        "last_payment_error",
        "latest_charge",
        "canceled_at",
        "cancellation_reason",
        "description",
    }
)
# State Stripe keeps on the charge and dispute, set through the PaymentIntent for convenience.
_SIDE_FIELDS = frozenset({"amount_refunded", "disputed", "dispute_reason"})
_NEVER_SET = frozenset({"id", "object", "livemode", "client_secret"})

DEFAULT_DECLINE: dict[str, Any] = {
    "type": "card_error",
    "code": "card_declined",
    "decline_code": "generic_decline",
    "message": "Your card was declined.",
    "doc_url": "https://stripe.com/docs/error-codes/card-declined",
    "param": None,
    "payment_method": None,
}


def new_id(prefix: str) -> str:
    # Random rather than sequential: a consumer's inbox keyed by event id must not see a
    # "duplicate" after the fake was reset between two tests sharing one database.
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


@dataclass(slots=True)
class _PaymentIntent:
    id: str
    amount: int
    currency: str
    status: str
    created: int
    customer: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    amount_received: int = 0
    amount_capturable: int = 0
    last_payment_error: dict[str, Any] | None = None
    latest_charge: str | None = None
    charge_created: int | None = None
    canceled_at: int | None = None
    cancellation_reason: str | None = None
    description: str | None = None
    amount_refunded: int = 0
    disputed: bool = False
    dispute_reason: str = "fraudulent"
    dispute_created: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def suffix(self) -> str:
        return self.id[3:] if self.id.startswith("pi_") else self.id


@dataclass(frozen=True)
class Change:
    """The PaymentIntent after a change and the events that change recorded, oldest first."""

    payment_intent: dict[str, Any]
    events: list[dict[str, Any]]

    @property
    def event(self) -> dict[str, Any] | None:
        return self.events[-1] if self.events else None


class StripeState:
    def __init__(
        self,
        templates: Templates | None = None,
        clock: Callable[[], float] = time.time,
        api_version: str | None = None,
    ) -> None:
        self.templates = templates if templates is not None else load_templates()
        self.clock = clock
        self.api_version = api_version or self.templates.event.get("api_version")
        self.api_version = self.api_version or DEFAULT_API_VERSION
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._pis: dict[str, _PaymentIntent] = {}
            self._pi_keys: list[tuple[int, str]] = []
            self._events: dict[str, dict[str, Any]] = {}
            self._event_keys: list[tuple[int, int, str]] = []
            self._event_key_by_id: dict[str, tuple[int, int, str]] = {}
            self._seq = itertools.count()

    def now(self) -> int:
        return int(self.clock())

    # -- writing ---------------------------------------------------------------------------

    def create_payment_intent(
        self,
        *,
        id: str | None = None,
        at: int | None = None,
        record_events: bool = True,
        **fields: Any,
    ) -> Change:
        """Create a PaymentIntent. `at` is when the change happened (the events' `created`);
        it defaults to the PaymentIntent's `created`, itself defaulting to now."""
        with self._lock:
            rec, types, at = self._build(id, fields, at)
            if rec.id in self._pis:
                raise ValueError(f"payment_intent {rec.id!r} already exists")
            self._pis[rec.id] = rec
            bisect.insort(self._pi_keys, (rec.created, rec.id))
            events = self._record(rec, types, at) if record_events else []
            return Change(copy.deepcopy(self._render_pi(rec)), copy.deepcopy(events))

    def update_payment_intent(
        self, id: str, *, at: int | None = None, record_events: bool = True, **fields: Any
    ) -> Change:
        """Change a PaymentIntent as Stripe would (status, amounts, refunds, disputes...) and
        record the events that change makes Stripe send. `at` defaults to now."""
        with self._lock:
            old = self._pis.get(id)
            if old is None:
                raise KeyError(id)
            at = self.now() if at is None else _int("at", at)
            new = replace(old, metadata=dict(old.metadata), extra=dict(old.extra))
            values = _normalize(fields, self.templates, creating=False)
            self._apply(new, values, at, old)
            types = _event_types(old, new, values)
            if new.created != old.created:
                del self._pi_keys[bisect.bisect_left(self._pi_keys, (old.created, old.id))]
                bisect.insort(self._pi_keys, (new.created, new.id))
            self._pis[id] = new
            events = self._record(new, types, at) if record_events else []
            return Change(copy.deepcopy(self._render_pi(new)), copy.deepcopy(events))

    def seed_payment_intents(
        self, specs: Iterable[Mapping[str, Any]], *, record_events: bool = False
    ) -> list[str]:
        """Add many PaymentIntents at once; all or none (a bad spec adds nothing).

        Each spec takes the same keys as `create_payment_intent`. Events are off by default:
        a seed stands for history that happened before the test started."""
        with self._lock:
            built: list[tuple[_PaymentIntent, list[str], int]] = []
            seen: set[str] = set()
            for n, spec in enumerate(specs):
                spec = dict(spec)
                try:
                    rec, types, at = self._build(spec.pop("id", None), spec, spec.pop("at", None))
                    if rec.id in self._pis or rec.id in seen:
                        raise ValueError(f"payment_intent {rec.id!r} already exists")
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"item {n}: {exc}") from None
                seen.add(rec.id)
                built.append((rec, types, at))
            for rec, _, _ in built:
                self._pis[rec.id] = rec
            self._pi_keys.extend((rec.created, rec.id) for rec, _, _ in built)
            self._pi_keys.sort()
            if record_events:
                for rec, types, at in sorted(built, key=lambda b: b[2]):
                    self._record(rec, types, at)
            return [rec.id for rec, _, _ in built]

    def add_event(
        self, type: str, data_object: Mapping[str, Any], created: int | None = None
    ) -> dict[str, Any]:
        """Record an arbitrary event, e.g. of a type the service must ignore."""
        with self._lock:
            created = self.now() if created is None else _int("created", created)
            return copy.deepcopy(self._add_event(type, copy.deepcopy(dict(data_object)), created))

    def _build(
        self, id: str | None, fields: Mapping[str, Any], at: int | None
    ) -> tuple[_PaymentIntent, list[str], int]:
        values = _normalize(fields, self.templates, creating=True)
        if id is not None and (not isinstance(id, str) or not id):
            raise ValueError("id must be a non-empty string")
        created = values.pop("created", None)
        rec = _PaymentIntent(
            id=id or new_id("pi"),
            amount=values.pop("amount"),
            currency=values.pop("currency", "usd"),
            status=values.pop("status", "requires_payment_method"),
            created=self.now() if created is None else created,
        )
        values["status"] = rec.status
        at = rec.created if at is None else _int("at", at)
        self._apply(rec, values, at, None)
        return rec, _event_types(None, rec, values), at

    @staticmethod
    def _apply(
        rec: _PaymentIntent, values: dict[str, Any], at: int, old: _PaymentIntent | None
    ) -> None:
        for key, value in values.items():
            if key in _CORE_FIELDS or key in _SIDE_FIELDS:
                setattr(rec, key, value)
            else:
                rec.extra[key] = value
        if old is None or rec.status != old.status:
            _derive_on_status(rec, values, at)
        attempted = (
            rec.status in _ATTEMPTED
            or rec.last_payment_error is not None
            or rec.amount_received
            or rec.amount_refunded
            or rec.disputed
        )
        if rec.latest_charge is None and attempted and "latest_charge" not in values:
            rec.latest_charge = f"ch_{rec.suffix}"
        if rec.latest_charge is not None and rec.charge_created is None:
            rec.charge_created = at
        if rec.disputed and rec.dispute_created is None:
            rec.dispute_created = at
        if not rec.disputed:
            rec.dispute_created = None
        if rec.amount_refunded > rec.amount_received:
            raise ValueError(
                f"amount_refunded {rec.amount_refunded} exceeds amount_received "
                f"{rec.amount_received}"
            )

    def _record(self, rec: _PaymentIntent, types: Sequence[str], at: int) -> list[dict[str, Any]]:
        events = []
        for type in types:
            if type.startswith("payment_intent."):
                obj = self._render_pi(rec)
            elif type == "charge.refunded":
                obj = self._render_charge(rec)
            else:
                obj = self._render_dispute(rec)
            events.append(self._add_event(type, obj, at))
        return events

    def _add_event(self, type: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
        event = dict(self.templates.event)
        event.update(
            id=new_id("evt"),
            object="event",
            type=type,
            created=created,
            data={"object": obj},
            api_version=self.api_version,
            livemode=False,
            request={"id": None, "idempotency_key": None},
        )
        key = (created, next(self._seq), event["id"])
        self._events[event["id"]] = event
        self._event_key_by_id[event["id"]] = key
        if not self._event_keys or key > self._event_keys[-1]:
            self._event_keys.append(key)
        else:
            bisect.insort(self._event_keys, key)
        return event

    # -- reading: deep copies, safe to keep and mutate ----------------------------------------

    def payment_intent(self, id: str, *, expand_charge: bool = False) -> dict[str, Any] | None:
        with self._lock:
            rec = self._pis.get(id)
            return None if rec is None else copy.deepcopy(self._render_pi(rec, expand_charge))

    def charge(self, id: str) -> dict[str, Any] | None:
        with self._lock:
            rec = self._charge_owner(id)
            return None if rec is None else copy.deepcopy(self._render_charge(rec))

    def event(self, id: str) -> dict[str, Any] | None:
        with self._lock:
            event = self._events.get(id)
            return None if event is None else copy.deepcopy(event)

    def events(self, types: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """All recorded events, oldest first (the order they happened in)."""
        wanted = None if types is None else set(types)
        with self._lock:
            return [
                copy.deepcopy(self._events[key[2]])
                for key in self._event_keys
                if wanted is None or self._events[key[2]]["type"] in wanted
            ]

    def payment_intent_ids(self) -> list[str]:
        """Every PaymentIntent id, newest first (Stripe's list order)."""
        with self._lock:
            return [key[1] for key in reversed(self._pi_keys)]

    def count_payment_intents(self) -> int:
        with self._lock:
            return len(self._pis)

    def count_events(self) -> int:
        with self._lock:
            return len(self._events)

    # -- reading for the HTTP layer: rendered objects share structure with the templates and
    # -- with stored events, so they must be serialized, never mutated.

    def get_rendered_pi(self, id: str, *, expand_charge: bool = False) -> dict[str, Any] | None:
        with self._lock:
            rec = self._pis.get(id)
            return None if rec is None else self._render_pi(rec, expand_charge)

    def get_rendered_charge(self, id: str) -> dict[str, Any] | None:
        with self._lock:
            rec = self._charge_owner(id)
            return None if rec is None else self._render_charge(rec)

    def get_rendered_event(self, id: str, *, min_created: int | None = None) -> dict | None:
        with self._lock:
            event = self._events.get(id)
            if event is None or (min_created is not None and event["created"] < min_created):
                return None
            return event

    def list_payment_intents(
        self,
        *,
        limit: int = 10,
        created: int | Mapping[str, int] | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
        customer: str | None = None,
        expand_charge: bool = False,
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page, newest first, and whether more exist in the paging direction.
        Raises LookupError(param) when a cursor names no PaymentIntent."""
        with self._lock:
            keys = self._pi_keys
            lo, hi = _created_range(keys, created)
            after = before = None
            if starting_after is not None:
                rec = self._pis.get(starting_after)
                if rec is None:
                    raise LookupError("starting_after")
                after = bisect.bisect_left(keys, (rec.created, rec.id))
            elif ending_before is not None:
                rec = self._pis.get(ending_before)
                if rec is None:
                    raise LookupError("ending_before")
                before = bisect.bisect_left(keys, (rec.created, rec.id))
            accept = None
            if customer is not None:
                pis = self._pis

                def accept(key: tuple[int, str]) -> bool:
                    return pis[key[1]].customer == customer

            picked, has_more = _select(keys, lo, hi, after, before, limit, accept)
            return [self._render_pi(self._pis[k[1]], expand_charge) for k in picked], has_more

    def list_events(
        self,
        *,
        limit: int = 10,
        created: int | Mapping[str, int] | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
        types: Sequence[str] | None = None,
        type_pattern: str | None = None,
        delivery_success: bool | None = None,
        min_created: int | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of events, newest first. `type_pattern` may use `*` as Stripe's `type`
        does; `min_created` hides events past the retention window."""
        with self._lock:
            keys = self._event_keys
            lo, hi = _created_range(keys, created)
            if min_created is not None:
                lo = max(lo, bisect.bisect_left(keys, (min_created,)))
            after = before = None
            if starting_after is not None:
                key = self._event_key_by_id.get(starting_after)
                if key is None:
                    raise LookupError("starting_after")
                after = bisect.bisect_left(keys, key)
            elif ending_before is not None:
                key = self._event_key_by_id.get(ending_before)
                if key is None:
                    raise LookupError("ending_before")
                before = bisect.bisect_left(keys, key)
            events = self._events
            wanted = frozenset(types) if types else None
            accept = None
            if wanted is not None or type_pattern is not None or delivery_success is not None:

                def accept(key: tuple[int, int, str]) -> bool:
                    event = events[key[2]]
                    if wanted is not None and event["type"] not in wanted:
                        return False
                    if type_pattern is not None and not fnmatchcase(event["type"], type_pattern):
                        return False
                    if delivery_success is not None:
                        return (event["pending_webhooks"] == 0) is delivery_success
                    return True

            picked, has_more = _select(keys, lo, hi, after, before, limit, accept)
            return [events[k[2]] for k in picked], has_more

    # -- rendering -------------------------------------------------------------------------

    def _charge_owner(self, charge_id: str) -> _PaymentIntent | None:
        if charge_id.startswith("ch_"):
            rec = self._pis.get("pi_" + charge_id[3:])
            if rec is not None and rec.latest_charge == charge_id:
                return rec
        # Explicitly named charges do not follow the ch_<suffix> convention.
        return next((r for r in self._pis.values() if r.latest_charge == charge_id), None)

    def _render_pi(self, rec: _PaymentIntent, expand_charge: bool = False) -> dict[str, Any]:
        pi = dict(self.templates.payment_intent)
        pi.update(
            next_action=(
                {"type": "use_stripe_sdk", "use_stripe_sdk": {}}
                if rec.status == "requires_action"
                else None
            ),
            processing=pi.get("processing") if rec.status == "processing" else None,
            payment_method=f"pm_{rec.suffix}" if rec.latest_charge else None,
            transfer_data=None,
            livemode=False,
        )
        pi.update(rec.extra)
        pi.update(
            id=rec.id,
            object="payment_intent",
            amount=rec.amount,
            amount_capturable=rec.amount_capturable,
            amount_received=rec.amount_received,
            canceled_at=rec.canceled_at,
            cancellation_reason=rec.cancellation_reason,
            client_secret=f"{rec.id}_secret_{rec.suffix[::-1]}",
            created=rec.created,
            currency=rec.currency,
            customer=rec.customer,
            description=rec.description,
            last_payment_error=rec.last_payment_error,
            latest_charge=(
                self._render_charge(rec)
                if expand_charge and rec.latest_charge
                else rec.latest_charge
            ),
            metadata=rec.metadata,
            status=rec.status,
        )
        return pi

    def _render_charge(self, rec: _PaymentIntent) -> dict[str, Any]:
        failed = rec.status == "requires_payment_method" and rec.last_payment_error is not None
        if failed:
            status = "failed"
        elif rec.status in ("processing", "requires_action", "requires_confirmation"):
            status = "pending"
        else:
            status = "succeeded"
        paid = status == "succeeded"
        captured = rec.status == "succeeded"
        captured_amount = rec.amount_received if captured else 0
        error = rec.last_payment_error or {}
        charge = dict(self.templates.charge)
        charge.update(
            id=rec.latest_charge,
            object="charge",
            amount=rec.amount,
            amount_captured=captured_amount,
            amount_refunded=rec.amount_refunded,
            refunded=captured_amount > 0 and rec.amount_refunded >= captured_amount,
            disputed=rec.disputed,
            captured=captured,
            paid=paid,
            status=status,
            currency=rec.currency,
            created=rec.charge_created if rec.charge_created is not None else rec.created,
            customer=rec.customer,
            description=rec.description,
            metadata=rec.metadata,
            payment_intent=rec.id,
            payment_method=f"pm_{rec.suffix}",
            balance_transaction=f"txn_{rec.suffix}" if paid else None,
            failure_code=error.get("code") if failed else None,
            failure_message=error.get("message") if failed else None,
            livemode=False,
            receipt_url=None,
            source=None,
            transfer_data=None,
            refunds={
                "object": "list",
                "data": [],
                "has_more": False,
                "url": f"/v1/charges/{rec.latest_charge}/refunds",
            },
        )
        return charge

    def _render_dispute(self, rec: _PaymentIntent) -> dict[str, Any]:
        dispute = dict(self.templates.dispute)
        dispute.update(
            id=f"dp_{rec.suffix}",
            object="dispute",
            amount=rec.amount_received or rec.amount,
            charge=rec.latest_charge,
            payment_intent=rec.id,
            currency=rec.currency,
            created=rec.dispute_created if rec.dispute_created is not None else rec.created,
            reason=rec.dispute_reason,
            status="needs_response",
            is_charge_refundable=False,
            livemode=False,
            metadata={},
        )
        return dispute


# -- helpers -------------------------------------------------------------------------------


def _int(name: str, value: Any, *, minimum: int | None = None) -> int:
    # bool is an int subclass; True as an amount is always a bug in the caller.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _optional_str(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string or null, got {value!r}")
    return value


def _payment_error(value: Any) -> dict[str, Any] | None:
    if value is None or value is False:
        return None
    if value is True:
        return dict(DEFAULT_DECLINE)
    if isinstance(value, str):
        return {**DEFAULT_DECLINE, "code": value, "decline_code": None, "doc_url": None}
    if isinstance(value, Mapping):
        return copy.deepcopy(dict(value))
    raise ValueError(f"last_payment_error must be null, true, a code or an object: {value!r}")


def _normalize(fields: Mapping[str, Any], templates: Templates, *, creating: bool) -> dict:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key in ("amount", "amount_received", "amount_capturable", "amount_refunded"):
            out[key] = _int(key, value, minimum=0)
        elif key in ("created", "canceled_at"):
            out[key] = None if value is None and key == "canceled_at" else _int(key, value)
        elif key == "currency":
            if not isinstance(value, str) or len(value) != 3 or not value.isalpha():
                raise ValueError(f"currency must be a three-letter ISO code, got {value!r}")
            out[key] = value.lower()
        elif key == "status":
            if value not in STATUSES:
                raise ValueError(f"status must be one of {sorted(STATUSES)}, got {value!r}")
            out[key] = value
        elif key == "metadata":
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ValueError(f"metadata must be an object, got {value!r}")
            out[key] = {str(k): str(v) for k, v in value.items()}
        elif key == "last_payment_error":
            out[key] = _payment_error(value)
        elif key in ("customer", "latest_charge", "cancellation_reason", "description"):
            out[key] = _optional_str(key, value)
        elif key == "disputed":
            if not isinstance(value, bool):
                raise ValueError(f"disputed must be a boolean, got {value!r}")
            out[key] = value
        elif key == "dispute_reason":
            out[key] = _optional_str(key, value) or "fraudulent"
        elif key in templates.payment_intent and key not in _NEVER_SET:
            out[key] = copy.deepcopy(value)
        else:
            raise ValueError(f"unknown PaymentIntent field {key!r}")
    if creating and "amount" not in out:
        raise ValueError("amount is required")
    return out


def _derive_on_status(rec: _PaymentIntent, given: Mapping[str, Any], at: int) -> None:
    """Fields Stripe changes along with the status, unless the caller set them."""
    status = rec.status
    if "amount_received" not in given and status == "succeeded" and not rec.amount_received:
        rec.amount_received = rec.amount
    if "amount_capturable" not in given:
        rec.amount_capturable = rec.amount if status == "requires_capture" else 0
    if "last_payment_error" not in given and status != "requires_payment_method":
        # Stripe clears the previous attempt's error once the PaymentIntent moves on.
        rec.last_payment_error = None
    if "canceled_at" not in given:
        rec.canceled_at = at if status == "canceled" else None
    if status != "canceled" and "cancellation_reason" not in given:
        rec.cancellation_reason = None


def _event_types(
    old: _PaymentIntent | None, new: _PaymentIntent, given: Mapping[str, Any]
) -> list[str]:
    types = []
    if old is None:
        types.append("payment_intent.created")
    status_changed = old is None or old.status != new.status
    if new.status == "requires_payment_method":
        # Setting the error again while the status stays put is a second failed attempt.
        if new.last_payment_error is not None and (status_changed or "last_payment_error" in given):
            types.append("payment_intent.payment_failed")
    elif new.status == "requires_capture":
        if status_changed or old is None or old.amount_capturable != new.amount_capturable:
            types.append("payment_intent.amount_capturable_updated")
    elif status_changed and new.status in _STATUS_EVENT:
        types.append(_STATUS_EVENT[new.status])
    if new.amount_refunded > (old.amount_refunded if old else 0):
        types.append("charge.refunded")
    if new.disputed and not (old and old.disputed):
        types.append("charge.dispute.created")
    return types


def _created_range(keys: Sequence[tuple], created: int | Mapping[str, int] | None):
    """Index bounds [lo, hi) of `keys` (sorted by created first) matching a created filter."""
    lo, hi = 0, len(keys)
    if created is None:
        return lo, hi
    if not isinstance(created, Mapping):
        created = {"gte": created, "lte": created}
    for op, value in created.items():
        if op == "gte":
            lo = max(lo, bisect.bisect_left(keys, (value,)))
        elif op == "gt":
            lo = max(lo, bisect.bisect_left(keys, (value + 1,)))
        elif op == "lte":
            hi = min(hi, bisect.bisect_left(keys, (value + 1,)))
        elif op == "lt":
            hi = min(hi, bisect.bisect_left(keys, (value,)))
        else:
            raise ValueError(f"unknown created filter {op!r}")
    return lo, hi


def _select(
    keys: Sequence[tuple],
    lo: int,
    hi: int,
    after: int | None,
    before: int | None,
    limit: int,
    accept: Callable[[Any], bool] | None,
) -> tuple[list[tuple], bool]:
    """Pick one page from ascending `keys`, newest first.

    `after` is the index of the `starting_after` object (the page holds older objects),
    `before` that of `ending_before` (the page holds the `limit` newer objects nearest to it,
    still newest first, and has_more says whether even newer ones exist)."""
    picked: list[tuple] = []
    if before is not None:
        i = max(lo, before + 1)
        while i < hi and len(picked) <= limit:
            if accept is None or accept(keys[i]):
                picked.append(keys[i])
            i += 1
        return picked[:limit][::-1], len(picked) > limit
    i = (hi if after is None else min(hi, after)) - 1
    while i >= lo and len(picked) <= limit:
        if accept is None or accept(keys[i]):
            picked.append(keys[i])
        i -= 1
    return picked[:limit], len(picked) > limit


def random_payment_intents(
    n: int,
    *,
    seed: int = 0,
    created_from: int | None = None,
    created_to: int | None = None,
    currency: str = "usd",
    weights: Mapping[str, float] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Reproducible specs for `seed_payment_intents`, spread over a time window, for demos and
    benchmarks. Default mix: mostly succeeded, some failed, canceled and in flight."""
    rng = random.Random(seed)
    created_to = created_to if created_to is not None else int(time.time())
    created_from = created_from if created_from is not None else created_to - 86_400
    weights = weights or {
        "succeeded": 0.7,
        "failed": 0.1,
        "canceled": 0.1,
        "processing": 0.05,
        "requires_action": 0.05,
    }
    kinds, cum = list(weights), list(itertools.accumulate(weights.values()))
    specs = []
    for _ in range(n):
        kind = rng.choices(kinds, cum_weights=cum)[0]
        spec: dict[str, Any] = {
            "id": f"pi_{rng.getrandbits(96):024x}",
            "amount": rng.randrange(100, 100_000),
            "currency": currency,
            "created": rng.randint(created_from, created_to),
            "metadata": dict(metadata or {}),
        }
        if kind == "failed":
            spec.update(status="requires_payment_method", last_payment_error=True)
        else:
            spec["status"] = kind
        specs.append(spec)
    return specs
