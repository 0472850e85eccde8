"""In-memory Stripe account: PaymentIntents, their charges, refunds, disputes and early fraud
warnings, and the event log.

Objects are kept as small records and rendered into Stripe's JSON shape on read, in the API
version the reader asks for, so that seeding tens of thousands of payments stays cheap and one
record can be served as any version would show it. Sorted indexes, `(created, id)` for
PaymentIntents and `(created, seq, id)` for events, refunds, disputes and warnings, make every
list page a bisect plus a walk of at most `limit + 1` entries (unless a filter that no index
covers, such as `types[]`, forces a longer walk).

What is modelled, and where each behaviour is documented, is in FACTS.md; the tags in
brackets below (`[P3]`, `[V3]`...) point there.

Thread safety: the server's event loop and the test thread that seeds or inspects state run
concurrently, so every read and write takes `self._lock`.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import quote

from .templates import Templates, load_templates
from .versions import ApiVersion, parse_version

try:
    import stripe

    DEFAULT_API_VERSION: str | None = stripe.api_version
except ImportError:  # pragma: no cover - stripe is a runtime dependency of the project
    DEFAULT_API_VERSION = None

# [P1] PaymentIntent statuses.
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
# payment_failed only with an error, and requires_capture is handled apart (see _pi_events).
_STATUS_EVENT = {
    "succeeded": "payment_intent.succeeded",
    "canceled": "payment_intent.canceled",
    "processing": "payment_intent.processing",
    "requires_action": "payment_intent.requires_action",
}
# Statuses that only exist once a payment method was tried, so a charge object exists.
_ATTEMPTED = frozenset({"processing", "requires_capture", "succeeded"})

# [R1] Refund statuses; the ones still counting in charge.amount_refunded ([R4]).
REFUND_STATUSES = frozenset({"pending", "requires_action", "succeeded", "failed", "canceled"})
_REFUND_COUNTED = frozenset({"pending", "requires_action", "succeeded"})
_REFUND_MOVES = {
    "pending": frozenset({"requires_action", "succeeded", "failed", "canceled"}),
    "requires_action": frozenset({"pending", "succeeded", "failed", "canceled"}),
    "succeeded": frozenset({"failed"}),  # card refunds can fail after succeeding [R3]
    "failed": frozenset(),
    "canceled": frozenset(),
}
# [R2]
REFUND_FAILURE_REASONS = frozenset(
    {
        "lost_or_stolen_card",
        "expired_or_canceled_card",
        "charge_for_pending_refund_disputed",
        "insufficient_funds",
        "declined",
        "merchant_request",
        "unknown",
    }
)
# [D1] Dispute statuses.
DISPUTE_STATUSES = frozenset(
    {
        "warning_needs_response",
        "warning_under_review",
        "warning_closed",
        "needs_response",
        "under_review",
        "appeal_needs_response",
        "appeal_under_review",
        "won",
        "lost",
        "prevented",
    }
)
_DISPUTE_INQUIRY = frozenset({"warning_needs_response", "warning_under_review", "warning_closed"})
_DISPUTE_CLOSED = frozenset({"won", "lost", "warning_closed", "prevented"})
_DISPUTE_REVIEW = frozenset({"warning_under_review", "under_review", "appeal_under_review"})
# [D2]
DISPUTE_REASONS = frozenset(
    {
        "bank_cannot_process",
        "check_returned",
        "credit_not_processed",
        "customer_initiated",
        "debit_not_authorized",
        "duplicate",
        "fraudulent",
        "general",
        "incorrect_account_details",
        "insufficient_funds",
        "noncompliant",
        "product_not_received",
        "product_unacceptable",
        "subscription_canceled",
        "unrecognized",
    }
)
# [F1]
FRAUD_TYPES = frozenset(
    {
        "card_never_received",
        "fraudulent_card_application",
        "made_with_counterfeit_card",
        "made_with_lost_card",
        "made_with_stolen_card",
        "misc",
        "unauthorized_use_of_card",
    }
)
# Object kinds whose top-level fields omit_fields / null_fields may name.
OBJECT_KINDS = (
    "radar.early_fraud_warning",
    "payment_intent",
    "dispute",
    "charge",
    "refund",
    "event",
)
# [T2] related_object.url of each v1 resource a thin event can point at.
RESOURCE_PATHS = {
    "payment_intent": "/v1/payment_intents/",
    "charge": "/v1/charges/",
    "refund": "/v1/refunds/",
    "dispute": "/v1/disputes/",
    "radar.early_fraud_warning": "/v1/radar/early_fraud_warnings/",
}

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
# Keys of create/update that are not PaymentIntent fields: state Stripe keeps on the charge
# and its disputes (set through the PaymentIntent for convenience), and how to shape output.
_SIDE_FIELDS = frozenset(
    {"amount_refunded", "disputed", "dispute_reason", "omit_fields", "null_fields"}
)
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

DAY = 86_400


def new_id(prefix: str) -> str:
    # Random rather than sequential: a consumer's inbox keyed by event id must not see a
    # "duplicate" after the fake was reset between two tests sharing one database.
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


# -- account settings ------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountSettings:
    """How this account's Stripe behaves; every field selects a variant real Stripe plays.

    api_version: the account's default API version [V2]: the version of writes made without
    one, of reads without a Stripe-Version header, and of every event's `data`.
    omit_fields / null_fields: "kind.field" paths (kind one of OBJECT_KINDS, e.g.
    "payment_intent.amount_received") dropped from / nulled in everything served, events
    included, as an older API version or a third-party emulator sends them [E1].
    companion_events: also record the events Stripe sends beside the one the first version
    of this server sent per change: charge.pending/succeeded/failed/captured/expired beside
    payment_intent.*, refund.created beside charge.refunded, charge.dispute.funds_withdrawn
    beside charge.dispute.created [C1]. Off by default because the older tests count events.
    thin_events: every event also gets a thin twin (`v1.<type>`, [T1]) in Change.thin_events.
    event_livemode / event_account: the `livemode` and Connect `account` of every event [A1].
    """

    api_version: str
    omit_fields: frozenset[str] = frozenset()
    null_fields: frozenset[str] = frozenset()
    companion_events: bool = False
    thin_events: bool = False
    event_livemode: bool = False
    event_account: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["omit_fields"] = sorted(self.omit_fields)
        out["null_fields"] = sorted(self.null_fields)
        return out

    def with_changes(self, changes: Mapping[str, Any]) -> AccountSettings:
        unknown = set(changes) - SETTING_NAMES
        if unknown:
            raise ValueError(f"unknown account settings: {sorted(unknown)}")
        values = dict(changes)
        if "api_version" in values:
            parse_version(values["api_version"])
        for key in ("omit_fields", "null_fields"):
            if key in values:
                paths = values[key] or ()
                if isinstance(paths, str):
                    raise ValueError(f"{key} must be a list of 'kind.field' paths")
                for path in paths:
                    _split_path(path)
                values[key] = frozenset(paths)
        for key in ("companion_events", "thin_events", "event_livemode"):
            if key in values and not isinstance(values[key], bool):
                raise ValueError(f"{key} must be a boolean, got {values[key]!r}")
        if values.get("event_account") is not None and not (
            isinstance(values["event_account"], str) and values["event_account"].startswith("acct_")
        ):
            raise ValueError("event_account must be a Connect account id (acct_...) or null")
        return dataclasses.replace(self, **values)


SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(AccountSettings))


def _split_path(path: Any) -> tuple[str, str]:
    if isinstance(path, str):
        for kind in OBJECT_KINDS:
            if path.startswith(kind + ".") and len(path) > len(kind) + 1:
                return kind, path[len(kind) + 1 :]
    raise ValueError(f"not a 'kind.field' path (kind one of {list(OBJECT_KINDS)}): {path!r}")


# -- records ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Refund:
    id: str
    payment_intent: str
    charge: str
    amount: int
    currency: str
    status: str
    created: int
    seq: int
    reason: str | None = None
    # "customer", or "uncaptured_remainder": the Refund that pre-basil versions create when
    # a partial capture or a cancel releases an authorization [V3]; not a customer refund.
    kind: str = "customer"
    failure_reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def counted(self) -> bool:
        return self.status in _REFUND_COUNTED


@dataclass(slots=True)
class _Dispute:
    id: str
    payment_intent: str
    charge: str
    amount: int
    currency: str
    reason: str
    status: str
    created: int
    seq: int
    due_by: int | None
    withdrawn: bool = False
    reinstated: bool = False
    submission_count: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _FraudWarning:
    id: str
    payment_intent: str
    charge: str
    fraud_type: str
    created: int
    seq: int
    actionable: bool = True


@dataclass(slots=True)
class _PastCharge:
    """A charge the PaymentIntent made before its latest one (each attempt is a charge)."""

    id: str
    created: int
    status: str
    failure: dict[str, Any] | None


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
    # The latest charge: "pending" | "succeeded" | "failed"; what failed it [P4].
    charge_status: str | None = None
    charge_failure: dict[str, Any] | None = None
    charge_count: int = 0
    past_charges: tuple[_PastCharge, ...] = ()
    authorized: int = 0  # amount held by an uncaptured authorization
    released: bool = False  # that authorization was released by a cancel
    # Tuples, not lists: an update works on a shallow copy and must not touch the original.
    refunds: tuple[_Refund, ...] = ()
    disputes: tuple[_Dispute, ...] = ()
    warnings: tuple[_FraudWarning, ...] = ()
    dispute_reason: str = "fraudulent"
    omit: frozenset[tuple[str, str]] = frozenset()
    nulls: frozenset[tuple[str, str]] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def suffix(self) -> str:
        return self.id[3:] if self.id.startswith("pi_") else self.id

    def customer_refunded(self) -> int:
        return sum(r.amount for r in self.refunds if r.kind == "customer" and r.counted)

    def refunded(self) -> int:
        return sum(r.amount for r in self.refunds if r.counted)

    def has_remainder_refund(self) -> bool:
        return any(r.kind == "uncaptured_remainder" for r in self.refunds)

    def open_chargeback(self) -> bool:
        return any(d.withdrawn and d.status not in _DISPUTE_CLOSED for d in self.disputes)

    def efw_actionable(self) -> bool:
        """[F2] Not disputed and not fully refunded."""
        fully = self.amount_received > 0 and self.customer_refunded() >= self.amount_received
        return not self.disputes and not fully


# An event to record: its type and what its data.object is ("pi", "charge" or a record).
_Planned = tuple[str, Any]


@dataclass(frozen=True)
class Change:
    """The PaymentIntent after a change and the events that change recorded, oldest first.

    `refund`, `dispute`, `early_fraud_warning`: the object the change made or moved, when it
    was about one. `thin_events`: the thin notifications ([T1]) of `events`, when the account
    sends them."""

    payment_intent: dict[str, Any]
    events: list[dict[str, Any]]
    refund: dict[str, Any] | None = None
    dispute: dict[str, Any] | None = None
    early_fraud_warning: dict[str, Any] | None = None
    thin_events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def event(self) -> dict[str, Any] | None:
        return self.events[-1] if self.events else None


class StripeState:
    def __init__(
        self,
        templates: Templates | None = None,
        clock: Callable[[], float] = time.time,
        api_version: str | None = None,
        **settings: Any,
    ) -> None:
        self.templates = templates if templates is not None else load_templates()
        self.clock = clock
        version = api_version or self.templates.event.get("api_version") or DEFAULT_API_VERSION
        self._lock = threading.RLock()
        self.settings = AccountSettings(api_version=str(version)).with_changes(settings)
        self._settings_changed()
        self.reset()

    # -- settings ------------------------------------------------------------------------

    @property
    def api_version(self) -> str:
        return self.settings.api_version

    @api_version.setter
    def api_version(self, value: str) -> None:
        self.configure(api_version=value)

    def configure(self, **changes: Any) -> AccountSettings:
        """Change account settings (see AccountSettings); objects already stored stay."""
        with self._lock:
            self.settings = self.settings.with_changes(changes)
            self._settings_changed()
            return self.settings

    def _settings_changed(self) -> None:
        omit: dict[str, set[str]] = {}
        nulls: dict[str, set[str]] = {}
        for path in self.settings.omit_fields:
            kind, name = _split_path(path)
            omit.setdefault(kind, set()).add(name)
        for path in self.settings.null_fields:
            kind, name = _split_path(path)
            nulls.setdefault(kind, set()).add(name)
        self._omit = {k: frozenset(v) for k, v in omit.items()}
        self._nulls = {k: frozenset(v) for k, v in nulls.items()}

    def version(self, name: str | None = None) -> ApiVersion:
        """The ApiVersion of `name`, or of the account default."""
        return parse_version(name or self.settings.api_version)

    def reset(self) -> None:
        with self._lock:
            self._pis: dict[str, _PaymentIntent] = {}
            self._pi_keys: list[tuple[int, str]] = []
            self._charges: dict[str, str] = {}
            self._events: dict[str, dict[str, Any]] = {}
            self._event_keys: list[tuple[int, int, str]] = []
            self._event_key_by_id: dict[str, tuple[int, int, str]] = {}
            self._children: dict[str, dict[str, Any]] = {
                "refund": {},
                "dispute": {},
                "radar.early_fraud_warning": {},
            }
            self._child_keys: dict[str, list[tuple[int, int, str]]] = {
                kind: [] for kind in self._children
            }
            self._thin: dict[str, dict[str, Any]] = {}
            self._thin_by_snapshot: dict[str, str] = {}
            self._seq = itertools.count()

    def now(self) -> int:
        return int(self.clock())

    # -- writing: PaymentIntents -----------------------------------------------------------

    def create_payment_intent(
        self,
        *,
        id: str | None = None,
        at: int | None = None,
        record_events: bool = True,
        api_version: str | None = None,
        envelope: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Change:
        """Create a PaymentIntent. `at` is when the change happened (the events' `created`);
        it defaults to the PaymentIntent's `created`, itself defaulting to now.

        `api_version` is the version of the request that made the change (it decides, e.g.,
        whether a partial capture refunds the remainder [V3]); default: the account's.
        `envelope` sets `livemode`, `account` and `api_version` of the events [A1]."""
        with self._lock:
            envelope = _envelope(envelope)
            rec, plan, at = self._build(id, fields, at, api_version, envelope)
            if rec.id in self._pis:
                raise ValueError(f"payment_intent {rec.id!r} already exists")
            self._store(rec, None)
            return self._change(rec, plan, at, record_events, envelope)

    def update_payment_intent(
        self,
        id: str,
        *,
        at: int | None = None,
        record_events: bool = True,
        api_version: str | None = None,
        envelope: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Change:
        """Change a PaymentIntent as Stripe would (status, amounts, refunds, disputes...) and
        record the events that change makes Stripe send. `at` defaults to now.

        Updating any PaymentIntent field clears `last_payment_error` [P3]; its latest charge
        keeps status `failed` and its `failure_code` [P4]."""
        return self._update(id, fields, at, record_events, api_version, envelope, touch=False)

    def touch_payment_intent(
        self,
        id: str,
        *,
        at: int | None = None,
        record_events: bool = True,
        **fields: Any,
    ) -> Change:
        """An update "for any reason" (the merchant sets metadata, Stripe itself touches the
        object): clears `last_payment_error` even when nothing else changes [P3]."""
        return self._update(id, fields, at, record_events, None, None, touch=True)

    def capture(
        self,
        id: str,
        amount: int | None = None,
        *,
        at: int | None = None,
        record_events: bool = True,
        api_version: str | None = None,
        envelope: Mapping[str, Any] | None = None,
    ) -> Change:
        """Capture a `requires_capture` PaymentIntent, all of it or `amount` (a partial
        capture: before basil it refunds the uncaptured remainder [V3])."""
        with self._lock:
            rec = self._get(id)
            if rec.status != "requires_capture":
                raise ValueError(f"payment_intent {id!r} is {rec.status}, not requires_capture")
            amount = rec.amount_capturable if amount is None else _int("amount", amount, minimum=1)
            if amount > rec.amount_capturable:
                raise ValueError(
                    f"amount {amount} exceeds amount_capturable {rec.amount_capturable}"
                )
            fields = {"status": "succeeded", "amount_received": amount, "amount_capturable": 0}
            return self._update(id, fields, at, record_events, api_version, envelope)

    def cancel(
        self,
        id: str,
        *,
        reason: str | None = None,
        at: int | None = None,
        record_events: bool = True,
        api_version: str | None = None,
        envelope: Mapping[str, Any] | None = None,
    ) -> Change:
        """Cancel a PaymentIntent. One holding an uncaptured authorization releases it:
        before basil that creates a Refund of the whole authorization and charge.refunded
        [V3]. `reason` "automatic"/"expired" is the 7-day authorization expiry [P5]."""
        with self._lock:
            rec = self._get(id)
            if rec.status in ("succeeded", "canceled"):
                raise ValueError(f"payment_intent {id!r} is {rec.status} and cannot be canceled")
            fields: dict[str, Any] = {"status": "canceled"}
            if reason is not None:
                fields["cancellation_reason"] = reason
            return self._update(id, fields, at, record_events, api_version, envelope)

    def seed_payment_intents(
        self, specs: Iterable[Mapping[str, Any]], *, record_events: bool = False
    ) -> list[str]:
        """Add many PaymentIntents at once; all or none (a bad spec adds nothing).

        Each spec takes the same keys as `create_payment_intent`. Events are off by default:
        a seed stands for history that happened before the test started."""
        with self._lock:
            built: list[tuple[_PaymentIntent, list[_Planned], int, dict[str, Any]]] = []
            seen: set[str] = set()
            for n, spec in enumerate(specs):
                spec = dict(spec)
                try:
                    envelope = _envelope(spec.pop("envelope", None))
                    version = spec.pop("api_version", None)
                    rec, plan, at = self._build(
                        spec.pop("id", None), spec, spec.pop("at", None), version, envelope
                    )
                    if rec.id in self._pis or rec.id in seen:
                        raise ValueError(f"payment_intent {rec.id!r} already exists")
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"item {n}: {exc}") from None
                seen.add(rec.id)
                built.append((rec, plan, at, envelope))
            for rec, _, _, _ in built:
                self._pis[rec.id] = rec
                self._index_children(rec, None)
            self._pi_keys.extend((rec.created, rec.id) for rec, _, _, _ in built)
            self._pi_keys.sort()
            if record_events:
                for rec, plan, at, envelope in sorted(built, key=lambda b: b[2]):
                    self._record(rec, plan, at, envelope)
            return [rec.id for rec, _, _, _ in built]

    def add_event(
        self,
        type: str,
        data_object: Mapping[str, Any],
        created: int | None = None,
        *,
        envelope: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record an arbitrary event, e.g. of a type the service must ignore, or one with
        another `livemode`, a Connect `account` or an old `api_version` (`envelope`)."""
        with self._lock:
            created = self.now() if created is None else _int("created", created)
            envelope = _envelope(envelope)
            event, _ = self._add_event(type, copy.deepcopy(dict(data_object)), created, envelope)
            return copy.deepcopy(event)

    # -- writing: refunds, disputes, early fraud warnings -----------------------------------

    def refund(
        self,
        payment_intent: str,
        amount: int | None = None,
        *,
        status: str = "succeeded",
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        at: int | None = None,
        record_events: bool = True,
        envelope: Mapping[str, Any] | None = None,
    ) -> Change:
        """A customer refund of a captured payment (all that is left of it by default), as a
        Refund object [R1]: refund.created (from 2024-10-28 [V4]) and charge.refunded."""
        with self._lock:
            envelope = _envelope(envelope)
            rec = self._get(payment_intent)
            at = self.now() if at is None else _int("at", at)
            if rec.status != "succeeded" or rec.charge_status != "succeeded":
                raise ValueError(f"payment_intent {payment_intent!r} has no captured charge")
            if rec.open_chargeback():
                raise ValueError("the charge is disputed (charge_disputed) and cannot be refunded")
            available = rec.amount_received - rec.customer_refunded()
            amount = available if amount is None else _int("amount", amount, minimum=1)
            if not 0 < amount <= available:
                raise ValueError(f"amount {amount} exceeds what is left to refund ({available})")
            if status not in ("pending", "requires_action", "succeeded"):
                raise ValueError("a refund starts pending, requires_action or succeeded")
            if reason not in (None, "duplicate", "fraudulent", "requested_by_customer"):
                raise ValueError(f"unknown refund reason {reason!r}")
            new = replace(rec)
            r = self._make_refund(new, amount, at, status=status, reason=reason)
            r.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
            plan = self._refund_created_events(r, envelope, companion=True)
            plan += self._efw_updates(new)
            self._store(new, rec)
            change = self._change(new, plan, at, record_events, envelope)
            return replace(change, refund=copy.deepcopy(self._render_refund(r, self.version())))

    def update_refund(
        self,
        refund_id: str,
        *,
        status: str,
        failure_reason: str | None = None,
        at: int | None = None,
        record_events: bool = True,
        envelope: Mapping[str, Any] | None = None,
    ) -> Change:
        """Move a Refund on (pending -> succeeded, -> failed with a `failure_reason` [R2]).
        Sends refund.updated / refund.failed (from 2024-10-28 [V4]) and charge.refund.updated
        [R3]. A failed or canceled refund stops counting in charge.amount_refunded [R4]."""
        with self._lock:
            envelope = _envelope(envelope)
            r = self._children["refund"].get(refund_id)
            if r is None:
                raise KeyError(refund_id)
            if status not in _REFUND_MOVES.get(r.status, ()):
                raise ValueError(f"a {r.status} refund cannot become {status!r}")
            if failure_reason is not None and status != "failed":
                raise ValueError("failure_reason only goes with status failed")
            if status == "failed":
                failure_reason = failure_reason or "unknown"
                if failure_reason not in REFUND_FAILURE_REASONS:
                    raise ValueError(f"unknown refund failure_reason {failure_reason!r}")
            at = self.now() if at is None else _int("at", at)
            rec = self._pis[r.payment_intent]
            r.status = status
            r.failure_reason = failure_reason
            plan: list[_Planned] = []
            if self._event_version(envelope).refund_events_for_charges:
                plan.append(("refund.failed" if status == "failed" else "refund.updated", r))
            plan.append(("charge.refund.updated", r))
            plan += self._efw_updates(rec)
            change = self._change(rec, plan, at, record_events, envelope)
            return replace(change, refund=copy.deepcopy(self._render_refund(r, self.version())))

    def open_dispute(
        self,
        payment_intent: str,
        *,
        status: str = "needs_response",
        reason: str = "fraudulent",
        amount: int | None = None,
        due_by: int | None = None,
        at: int | None = None,
        record_events: bool = True,
        envelope: Mapping[str, Any] | None = None,
    ) -> Change:
        """The cardholder's bank disputes the payment: a Dispute object [D1]. `needs_response`
        is a chargeback (funds withdrawn: charge.dispute.created + .funds_withdrawn [D4]);
        `warning_needs_response` an inquiry (nothing withdrawn [D3]). `due_by` defaults to
        the end (23:59:59 UTC) of the 7th day after `at` (Stripe's deadline varies [D5])."""
        with self._lock:
            envelope = _envelope(envelope)
            rec = self._get(payment_intent)
            at = self.now() if at is None else _int("at", at)
            if status not in ("needs_response", "warning_needs_response"):
                raise ValueError("a dispute opens as needs_response or warning_needs_response")
            if reason not in DISPUTE_REASONS:
                raise ValueError(f"unknown dispute reason {reason!r}")
            if rec.status != "succeeded" or rec.charge_status != "succeeded":
                raise ValueError(f"payment_intent {payment_intent!r} has no captured charge")
            amount = rec.amount_received if amount is None else _int("amount", amount, minimum=1)
            if amount > rec.amount_received:
                raise ValueError(f"amount {amount} exceeds the captured {rec.amount_received}")
            if due_by is not None:
                due_by = _int("due_by", due_by, minimum=0)
            else:
                due_by = (at // DAY + 8) * DAY - 1
            new = replace(rec)
            d = self._make_dispute(new, amount, at, status=status, reason=reason, due_by=due_by)
            plan: list[_Planned] = [("charge.dispute.created", d)]
            if d.withdrawn:
                plan.append(("charge.dispute.funds_withdrawn", d))
            plan += self._efw_updates(new)
            self._store(new, rec)
            change = self._change(new, plan, at, record_events, envelope)
            return replace(change, dispute=copy.deepcopy(self._render_dispute(d, self.version())))

    def update_dispute(
        self,
        dispute_id: str,
        *,
        status: str | None = None,
        due_by: int | None = None,
        at: int | None = None,
        record_events: bool = True,
        envelope: Mapping[str, Any] | None = None,
    ) -> Change:
        """Move a dispute on as Stripe does [D1]-[D4]: evidence submitted (under_review,
        warning_under_review), an inquiry escalated to a chargeback (needs_response: funds
        withdrawn), closed (won: funds reinstated; lost; warning_closed; prevented).
        Non-final moves send charge.dispute.updated, final ones charge.dispute.closed."""
        with self._lock:
            envelope = _envelope(envelope)
            d = self._children["dispute"].get(dispute_id)
            if d is None:
                raise KeyError(dispute_id)
            at = self.now() if at is None else _int("at", at)
            rec = self._pis[d.payment_intent]
            plan: list[_Planned] = []
            if due_by is not None:
                d.due_by = _int("due_by", due_by, minimum=0)
            if status is not None and status != d.status:
                _check_dispute_move(d.status, status)
                old = d.status
                d.status = status
                if status in _DISPUTE_REVIEW:
                    d.submission_count += 1
                escalated = old in _DISPUTE_INQUIRY and status not in _DISPUTE_INQUIRY
                if status in _DISPUTE_CLOSED:
                    plan.append(("charge.dispute.closed", d))
                else:
                    plan.append(("charge.dispute.updated", d))
                if escalated and status not in ("won", "prevented") and not d.withdrawn:
                    d.withdrawn = True
                    plan.append(("charge.dispute.funds_withdrawn", d))
                if status == "won" and d.withdrawn and not d.reinstated:
                    d.reinstated = True
                    plan.append(("charge.dispute.funds_reinstated", d))
            elif due_by is not None:
                plan.append(("charge.dispute.updated", d))
            change = self._change(rec, plan, at, record_events, envelope)
            return replace(change, dispute=copy.deepcopy(self._render_dispute(d, self.version())))

    def add_early_fraud_warning(
        self,
        payment_intent: str,
        *,
        fraud_type: str = "made_with_stolen_card",
        at: int | None = None,
        record_events: bool = True,
        envelope: Mapping[str, Any] | None = None,
    ) -> Change:
        """The issuer reports the charge as likely fraud: a Radar early fraud warning [F1]
        and radar.early_fraud_warning.created. It stays `actionable` until the charge is
        disputed or fully refunded (then radar.early_fraud_warning.updated) [F2]."""
        with self._lock:
            envelope = _envelope(envelope)
            rec = self._get(payment_intent)
            at = self.now() if at is None else _int("at", at)
            if fraud_type not in FRAUD_TYPES:
                raise ValueError(f"unknown fraud_type {fraud_type!r}")
            if rec.latest_charge is None or rec.charge_status != "succeeded":
                raise ValueError(f"payment_intent {payment_intent!r} has no successful charge")
            new = replace(rec)
            w = _FraudWarning(
                id=new_id("issfr"),
                payment_intent=rec.id,
                charge=rec.latest_charge,
                fraud_type=fraud_type,
                created=at,
                seq=next(self._seq),
                actionable=new.efw_actionable(),
            )
            new.warnings = (*new.warnings, w)
            self._store(new, rec)
            change = self._change(
                new, [("radar.early_fraud_warning.created", w)], at, record_events, envelope
            )
            rendered = self._render_efw(w, self.version())
            return replace(change, early_fraud_warning=copy.deepcopy(rendered))

    # -- internals of writing -----------------------------------------------------------------

    def _get(self, id: str) -> _PaymentIntent:
        rec = self._pis.get(id)
        if rec is None:
            raise KeyError(id)
        return rec

    def _update(
        self,
        id: str,
        fields: Mapping[str, Any],
        at: int | None,
        record_events: bool,
        api_version: str | None,
        envelope: Mapping[str, Any] | None,
        touch: bool = False,
    ) -> Change:
        with self._lock:
            envelope = _envelope(envelope)
            old = self._get(id)
            at = self.now() if at is None else _int("at", at)
            new = replace(old, metadata=dict(old.metadata), extra=dict(old.extra))
            values = _normalize(fields, self.templates, creating=False)
            plan = self._apply(new, values, at, old, api_version, envelope, touch)
            self._store(new, old)
            return self._change(new, plan, at, record_events, envelope)

    def _build(
        self,
        id: str | None,
        fields: Mapping[str, Any],
        at: int | None,
        api_version: str | None,
        envelope: Mapping[str, Any],
    ) -> tuple[_PaymentIntent, list[_Planned], int]:
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
        plan = self._apply(rec, values, at, None, api_version, envelope, False)
        return rec, plan, at

    def _store(self, new: _PaymentIntent, old: _PaymentIntent | None) -> None:
        if old is None:
            bisect.insort(self._pi_keys, (new.created, new.id))
        elif new.created != old.created:
            del self._pi_keys[bisect.bisect_left(self._pi_keys, (old.created, old.id))]
            bisect.insort(self._pi_keys, (new.created, new.id))
        self._pis[new.id] = new
        self._index_children(new, old)

    def _index_children(self, new: _PaymentIntent, old: _PaymentIntent | None) -> None:
        for charge in (new.latest_charge, *(c.id for c in new.past_charges)):
            if charge is not None:
                self._charges[charge] = new.id
        for kind, now, before in (
            ("refund", new.refunds, old.refunds if old else ()),
            ("dispute", new.disputes, old.disputes if old else ()),
            ("radar.early_fraud_warning", new.warnings, old.warnings if old else ()),
        ):
            store, keys = self._children[kind], self._child_keys[kind]
            kept = {c.id for c in now}
            for child in before:
                if child.id not in kept:  # a dispute taken back with disputed=False
                    del keys[bisect.bisect_left(keys, (child.created, child.seq, child.id))]
                    store.pop(child.id, None)
            for child in now:
                if child.id not in store:
                    store[child.id] = child
                    bisect.insort(keys, (child.created, child.seq, child.id))

    def _change(
        self,
        rec: _PaymentIntent,
        plan: Sequence[_Planned],
        at: int,
        record_events: bool,
        envelope: Mapping[str, Any],
    ) -> Change:
        events, thin = self._record(rec, plan, at, envelope) if record_events else ([], [])
        return Change(
            copy.deepcopy(self._render_pi(rec, self.version())),
            copy.deepcopy(events),
            thin_events=copy.deepcopy(thin),
        )

    def _event_version(self, envelope: Mapping[str, Any]) -> ApiVersion:
        return self.version(envelope.get("api_version"))

    def _apply(
        self,
        rec: _PaymentIntent,
        values: dict[str, Any],
        at: int,
        old: _PaymentIntent | None,
        api_version: str | None,
        envelope: Mapping[str, Any],
        touch: bool,
    ) -> list[_Planned]:
        """Apply `values` to `rec` (a copy of `old`) the way Stripe would and return the
        events that change makes Stripe send, in the order they are recorded.

        The order keeps the PaymentIntent's own event after the charge events of the same
        move (Stripe does not promise any order [W1]) and, as the first version of this
        server did, the refund and dispute events of the legacy fields last."""
        request = self.version(api_version)
        companion = self.settings.companion_events
        for key, value in values.items():
            if key in _CORE_FIELDS:
                setattr(rec, key, value)
            elif key not in _SIDE_FIELDS:
                rec.extra[key] = value
        if "omit_fields" in values:
            rec.omit = values["omit_fields"]
        if "null_fields" in values:
            rec.nulls = values["null_fields"]
        if "dispute_reason" in values:
            rec.dispute_reason = values["dispute_reason"]
        status_changed = old is None or rec.status != old.status
        if status_changed:
            _derive_on_status(rec, values, at)
        elif (
            old is not None
            and "last_payment_error" not in values
            and (touch or any(k not in _SIDE_FIELDS for k in values))
        ):
            rec.last_payment_error = None  # [P3]

        charge_events: list[_Planned] = []
        if "latest_charge" in values:
            if rec.latest_charge is None:
                rec.charge_status = None
            elif old is None or rec.latest_charge != old.latest_charge:
                given = rec.latest_charge
                self._new_charge(rec, at, given)
                rec.charge_status = _charge_status_for(rec)
                if rec.charge_status == "failed":
                    rec.charge_failure = _failure(rec.last_payment_error)
        else:
            charge_events = self._move_charge(rec, old, values, at, status_changed)

        auto: list[_Planned] = []
        if status_changed and request.refunds_uncaptured_remainder:
            remainder, reason = 0, None
            if rec.status == "succeeded" and 0 < rec.amount_received < rec.amount:
                remainder = rec.amount - rec.amount_received  # partial capture [V3]
            elif rec.status == "canceled" and rec.released:
                remainder = rec.authorized  # authorization released by a cancel [V3]
                if rec.cancellation_reason in ("automatic", "expired"):
                    reason = "expired_uncaptured_charge"
            if remainder > 0:
                r = self._make_refund(
                    rec, remainder, at, reason=reason, kind="uncaptured_remainder"
                )
                auto = self._refund_created_events(r, envelope, companion=True)

        legacy_refund: list[_Planned] = []
        if "amount_refunded" in values:
            target, current = values["amount_refunded"], rec.customer_refunded()
            if target < current:
                raise ValueError(
                    f"amount_refunded cannot go down from {current} to {target}: refunds are "
                    "objects; fail one with update_refund(..., status='failed')"
                )
            if target > current:
                self._ensure_charge(rec, at)
                r = self._make_refund(rec, target - current, at)
                legacy_refund = self._refund_created_events(r, envelope, companion=companion)
        if rec.customer_refunded() > rec.amount_received:
            raise ValueError(
                f"amount_refunded {rec.customer_refunded()} exceeds amount_received "
                f"{rec.amount_received}"
            )

        legacy_dispute: list[_Planned] = []
        if values.get("disputed") is True and not rec.disputes:
            self._ensure_charge(rec, at)
            d = self._make_dispute(
                rec,
                rec.amount_received or rec.amount,
                at,
                status="needs_response",
                reason=rec.dispute_reason,
                due_by=(at // DAY + 8) * DAY - 1,
            )
            legacy_dispute.append(("charge.dispute.created", d))
            if companion:
                legacy_dispute.append(("charge.dispute.funds_withdrawn", d))
        elif values.get("disputed") is False:
            rec.disputes = ()  # a test convenience: Stripe never takes a dispute back

        plan: list[_Planned] = []
        if old is None:
            plan.append(("payment_intent.created", "pi"))
        if companion:
            plan += charge_events
        plan += auto
        plan += self._pi_events(old, rec, values)
        plan += legacy_refund
        plan += legacy_dispute
        plan += self._efw_updates(rec)
        return plan

    def _move_charge(
        self,
        rec: _PaymentIntent,
        old: _PaymentIntent | None,
        values: Mapping[str, Any],
        at: int,
        status_changed: bool,
    ) -> list[_Planned]:
        """The latest charge follows its PaymentIntent: each attempt is a charge [P2]; a
        failed attempt fails it [P4]; capture and release act on the authorized one.
        Returns the charge.* events of the move [C1]."""
        events: list[str] = []
        status, current = rec.status, rec.charge_status
        failing = (
            status == "requires_payment_method"
            and rec.last_payment_error is not None
            and (status_changed or "last_payment_error" in values)
        )
        if failing:
            if current != "pending":  # else the attempt in flight (processing) failed
                self._new_charge(rec, at)
            rec.charge_status = "failed"
            rec.charge_failure = _failure(rec.last_payment_error)
            events.append("charge.failed")
        elif status_changed and status == "processing":
            if current in (None, "failed"):
                self._new_charge(rec, at)
                rec.charge_status = "pending"
                events.append("charge.pending")
        elif status_changed and status == "requires_capture":
            if current in (None, "failed"):
                self._new_charge(rec, at)
            if rec.charge_status != "succeeded":
                events.append("charge.succeeded")
            rec.charge_status = "succeeded"
            rec.authorized = rec.amount_capturable or rec.amount
        elif status_changed and status == "succeeded":
            authorized = current == "succeeded" and rec.authorized > 0
            if current in (None, "failed"):
                self._new_charge(rec, at)
            events.append("charge.captured" if authorized else "charge.succeeded")
            rec.charge_status = "succeeded"
        elif status_changed and status == "canceled" and _holds_authorization(rec, old):
            rec.released = True
            if rec.cancellation_reason in ("automatic", "expired"):
                events.append("charge.expired")
        return [(e, "charge") for e in events]

    def _new_charge(self, rec: _PaymentIntent, at: int, given: str | None = None) -> None:
        if rec.latest_charge is not None and rec.latest_charge != given:
            past = _PastCharge(
                rec.latest_charge,
                rec.charge_created if rec.charge_created is not None else at,
                rec.charge_status or "failed",
                rec.charge_failure,
            )
            rec.past_charges = (*rec.past_charges, past)
        rec.charge_count += 1
        if given is not None:
            rec.latest_charge = given
        elif rec.charge_count == 1:
            rec.latest_charge = f"ch_{rec.suffix}"
        else:
            rec.latest_charge = new_id("ch")
        rec.charge_created = at
        rec.charge_status = None
        rec.charge_failure = None
        rec.authorized = 0
        rec.released = False

    def _ensure_charge(self, rec: _PaymentIntent, at: int) -> None:
        # The legacy refund/dispute fields also work on a PaymentIntent that never had one.
        if rec.latest_charge is None:
            self._new_charge(rec, at)
            rec.charge_status = "succeeded"

    def _make_refund(
        self,
        rec: _PaymentIntent,
        amount: int,
        at: int,
        *,
        status: str = "succeeded",
        reason: str | None = None,
        kind: str = "customer",
    ) -> _Refund:
        assert rec.latest_charge is not None
        r = _Refund(
            id=new_id("re"),
            payment_intent=rec.id,
            charge=rec.latest_charge,
            amount=amount,
            currency=rec.currency,
            status=status,
            created=at,
            seq=next(self._seq),
            reason=reason,
            kind=kind,
        )
        rec.refunds = (*rec.refunds, r)
        return r

    def _make_dispute(
        self,
        rec: _PaymentIntent,
        amount: int,
        at: int,
        *,
        status: str,
        reason: str,
        due_by: int | None,
    ) -> _Dispute:
        assert rec.latest_charge is not None
        first = not rec.disputes and f"dp_{rec.suffix}" not in self._children["dispute"]
        d = _Dispute(
            id=f"dp_{rec.suffix}" if first else new_id("dp"),
            payment_intent=rec.id,
            charge=rec.latest_charge,
            amount=amount,
            currency=rec.currency,
            reason=reason,
            status=status,
            created=at,
            seq=next(self._seq),
            due_by=due_by,
            withdrawn=status not in _DISPUTE_INQUIRY,  # [D3]
        )
        rec.disputes = (*rec.disputes, d)
        return d

    def _refund_created_events(
        self, r: _Refund, envelope: Mapping[str, Any], *, companion: bool
    ) -> list[_Planned]:
        plan: list[_Planned] = []
        if companion and self._event_version(envelope).refund_events_for_charges:
            plan.append(("refund.created", r))  # [V4]
        plan.append(("charge.refunded", "charge"))  # [R3]
        return plan

    @staticmethod
    def _pi_events(
        old: _PaymentIntent | None, new: _PaymentIntent, given: Mapping[str, Any]
    ) -> list[_Planned]:
        status_changed = old is None or old.status != new.status
        if new.status == "requires_payment_method":
            # Setting the error again while the status stays put is a second failed attempt.
            again = status_changed or "last_payment_error" in given
            if new.last_payment_error is not None and again:
                return [("payment_intent.payment_failed", "pi")]
        elif new.status == "requires_capture":
            if status_changed or old is None or old.amount_capturable != new.amount_capturable:
                return [("payment_intent.amount_capturable_updated", "pi")]
        elif status_changed and new.status in _STATUS_EVENT:
            return [(_STATUS_EVENT[new.status], "pi")]
        return []

    @staticmethod
    def _efw_updates(rec: _PaymentIntent) -> list[_Planned]:
        plan: list[_Planned] = []
        actionable = rec.efw_actionable()
        for w in rec.warnings:
            if w.actionable != actionable:
                w.actionable = actionable
                plan.append(("radar.early_fraud_warning.updated", w))
        return plan

    def _record(
        self, rec: _PaymentIntent, plan: Sequence[_Planned], at: int, envelope: Mapping[str, Any]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        # Events are rendered in the event's version, not the request's [V2].
        v = self._event_version(envelope)
        events, thin = [], []
        for type, ref in plan:
            if ref == "pi":
                obj = self._render_pi(rec, v)
            elif ref == "charge":
                obj = self._render_charge(rec, v)
            else:
                obj = self._render_child(ref, v)
            event, twin = self._add_event(type, obj, at, envelope)
            events.append(event)
            if twin is not None:
                thin.append(twin)
        return events, thin

    def _add_event(
        self, type: str, obj: dict[str, Any], created: int, envelope: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        livemode = envelope.get("livemode", self.settings.event_livemode)
        account = envelope.get("account", self.settings.event_account)
        if livemode and "livemode" in obj:
            obj["livemode"] = True  # a live event carries a live object
        event = dict(self.templates.event)
        event.update(
            id=new_id("evt"),
            object="event",
            type=type,
            created=created,
            data={"object": obj},
            api_version=envelope.get("api_version") or self.settings.api_version,
            livemode=bool(livemode),
            request={"id": None, "idempotency_key": None},
        )
        if account is not None:
            event["account"] = account  # [A1] only events of connected accounts carry it
        self._shape(event, "event")
        key = (created, next(self._seq), event["id"])
        self._events[event["id"]] = event
        self._event_key_by_id[event["id"]] = key
        if not self._event_keys or key > self._event_keys[-1]:
            self._event_keys.append(key)
        else:
            bisect.insort(self._event_keys, key)
        twin = None
        if envelope.get("thin", self.settings.thin_events):
            twin = self._notification(self._thin_twin(event))
        return event, twin

    # -- thin events -------------------------------------------------------------------------

    def thin_event(self, event_id: str) -> dict[str, Any]:
        """The thin notification ([T1]) an event destination delivers for a stored event:
        `object: "v2.core.event"`, type `v1.<type>`, `related_object` {id, type, url}."""
        with self._lock:
            event = self._events.get(event_id)
            if event is None:
                raise KeyError(event_id)
            return copy.deepcopy(self._notification(self._thin_twin(event)))

    def get_thin_event(self, id: str) -> dict[str, Any] | None:
        """The full v2 Event (`GET /v2/core/events/{id}`, [T3])."""
        with self._lock:
            return self._thin.get(id)

    def _thin_twin(self, event: Mapping[str, Any]) -> dict[str, Any]:
        existing = self._thin_by_snapshot.get(event["id"])
        if existing is not None:
            return self._thin[existing]
        obj = event["data"]["object"]
        kind = str(obj.get("object", ""))
        path = RESOURCE_PATHS.get(kind, f"/v1/{kind.replace('.', '/')}s/")
        when = datetime.fromtimestamp(int(event["created"]), tz=UTC)
        full = {
            "id": new_id("evt"),
            "object": "v2.core.event",
            "type": f"v1.{event['type']}",
            "created": when.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "livemode": bool(event.get("livemode", False)),
            "context": event.get("account"),
            "related_object": {
                "id": obj.get("id"),
                "type": kind,
                "url": path + quote(str(obj.get("id", "")), safe=""),
            },
            "reason": None,
            "snapshot_event": event["id"],
            "changes": None,
        }
        self._thin[full["id"]] = full
        self._thin_by_snapshot[event["id"]] = full["id"]
        return full

    @staticmethod
    def _notification(full: Mapping[str, Any]) -> dict[str, Any]:
        # What is pushed is smaller than what GET /v2/core/events/{id} returns [T1][T3].
        keep = ("id", "object", "type", "created", "livemode", "context", "related_object")
        return {k: full[k] for k in keep}

    # -- reading: deep copies, safe to keep and mutate ----------------------------------------

    def payment_intent(
        self, id: str, *, expand_charge: bool = False, api_version: str | None = None
    ) -> dict[str, Any] | None:
        with self._lock:
            rec = self._pis.get(id)
            if rec is None:
                return None
            return copy.deepcopy(self._render_pi(rec, self.version(api_version), expand_charge))

    def charge(self, id: str, *, api_version: str | None = None) -> dict[str, Any] | None:
        with self._lock:
            found = self.get_rendered_charge(id, api_version=api_version)
            return None if found is None else copy.deepcopy(found)

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

    def refunds(self, payment_intent: str | None = None) -> list[dict[str, Any]]:
        """Refund objects, newest first (of one PaymentIntent when given)."""
        return self._children_of("refund", payment_intent)

    def disputes(self, payment_intent: str | None = None) -> list[dict[str, Any]]:
        return self._children_of("dispute", payment_intent)

    def early_fraud_warnings(self, payment_intent: str | None = None) -> list[dict[str, Any]]:
        return self._children_of("radar.early_fraud_warning", payment_intent)

    def _children_of(self, kind: str, payment_intent: str | None) -> list[dict[str, Any]]:
        with self._lock:
            page, _ = self.list_children(kind, limit=10**9, payment_intent=payment_intent)
            return copy.deepcopy(page)

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

    def get_rendered_pi(
        self,
        id: str,
        *,
        expand_charge: bool = False,
        expand_refunds: bool = False,
        api_version: str | None = None,
    ) -> dict[str, Any] | None:
        with self._lock:
            rec = self._pis.get(id)
            if rec is None:
                return None
            v = self.version(api_version)
            return self._render_pi(rec, v, expand_charge, expand_refunds)

    def get_rendered_charge(
        self, id: str, *, expand_refunds: bool = False, api_version: str | None = None
    ) -> dict[str, Any] | None:
        with self._lock:
            owner = self._charges.get(id)
            rec = self._pis.get(owner) if owner else None
            if rec is None:
                return None
            v = self.version(api_version)
            if rec.latest_charge == id:
                return self._render_charge(rec, v, expand_refunds)
            past = next(c for c in rec.past_charges if c.id == id)
            return self._render_past_charge(rec, past, v)

    def get_rendered_child(
        self,
        kind: str,
        id: str,
        *,
        expand: Iterable[str] = (),
        api_version: str | None = None,
    ) -> dict[str, Any] | None:
        with self._lock:
            child = self._children[kind].get(id)
            if child is None:
                return None
            return self._render_child(child, self.version(api_version), frozenset(expand))

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
        expand_refunds: bool = False,
        api_version: str | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page, newest first, and whether more exist in the paging direction.
        Raises LookupError(param) when a cursor names no PaymentIntent."""
        with self._lock:
            v = self.version(api_version)
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
            return [
                self._render_pi(self._pis[k[1]], v, expand_charge, expand_refunds) for k in picked
            ], has_more

    def list_children(
        self,
        kind: str,
        *,
        limit: int = 10,
        created: int | Mapping[str, int] | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
        payment_intent: str | None = None,
        charge: str | None = None,
        expand: Iterable[str] = (),
        api_version: str | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of refunds, disputes or early fraud warnings ([R5][D6][F3]), newest first,
        filtered as Stripe's list endpoints filter them. LookupError(param) for a cursor
        that names no such object."""
        with self._lock:
            v = self.version(api_version)
            store = self._children[kind]
            keys: Sequence[tuple[int, int, str]] = self._child_keys[kind]
            if payment_intent is not None:
                rec = self._pis.get(payment_intent)
                attr = {"refund": "refunds", "dispute": "disputes"}.get(kind, "warnings")
                mine = getattr(rec, attr) if rec is not None else ()
                keys = sorted((c.created, c.seq, c.id) for c in mine)
            lo, hi = _created_range(keys, created)
            after = before = None
            cursors = (("starting_after", starting_after), ("ending_before", ending_before))
            for param, cursor in cursors:
                if cursor is None:
                    continue
                child = store.get(cursor)
                if child is None:
                    raise LookupError(param)
                index = bisect.bisect_left(keys, (child.created, child.seq, child.id))
                if param == "starting_after":
                    after = index
                else:
                    before = index
                break
            accept = None
            if charge is not None:

                def accept(key: tuple[int, int, str]) -> bool:
                    return store[key[2]].charge == charge

            picked, has_more = _select(keys, lo, hi, after, before, limit, accept)
            wanted = frozenset(expand)
            return [self._render_child(store[k[2]], v, wanted) for k in picked], has_more

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

    def _shape(
        self,
        obj: dict[str, Any],
        kind: str,
        omit: frozenset[tuple[str, str]] = frozenset(),
        nulls: frozenset[tuple[str, str]] = frozenset(),
    ) -> dict[str, Any]:
        """Drop or null the fields an older version / an emulator leaves out [E1]."""
        for name in self._omit.get(kind, ()):
            obj.pop(name, None)
        for name in self._nulls.get(kind, ()):
            obj[name] = None
        for k, name in omit:
            if k == kind:
                obj.pop(name, None)
        for k, name in nulls:
            if k == kind:
                obj[name] = None
        return obj

    def _render_pi(
        self,
        rec: _PaymentIntent,
        v: ApiVersion,
        expand_charge: bool = False,
        expand_refunds: bool = False,
    ) -> dict[str, Any]:
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
        reason = rec.cancellation_reason
        if reason in ("automatic", "expired"):
            reason = v.expired_cancellation_reason  # [V3]
        charge = None
        if rec.latest_charge and (expand_charge or v.charge_refunds_expanded):
            charge = self._render_charge(rec, v, expand_refunds)
        pi.update(
            id=rec.id,
            object="payment_intent",
            amount=rec.amount,
            amount_capturable=rec.amount_capturable,
            amount_received=rec.amount_received,
            canceled_at=rec.canceled_at,
            cancellation_reason=reason,
            client_secret=f"{rec.id}_secret_{rec.suffix[::-1]}",
            created=rec.created,
            currency=rec.currency,
            customer=rec.customer,
            description=rec.description,
            last_payment_error=rec.last_payment_error,
            latest_charge=charge if expand_charge else rec.latest_charge,
            metadata=rec.metadata,
            status=rec.status,
        )
        if v.charge_refunds_expanded:
            # [V5] Before 2022-11-15 a PaymentIntent listed its charges, newest first.
            data = [charge] if charge is not None else []
            data += [self._render_past_charge(rec, c, v) for c in reversed(rec.past_charges)]
            pi["charges"] = {
                "object": "list",
                "data": data,
                "has_more": False,
                "url": f"/v1/charges?payment_intent={rec.id}",
            }
        return self._shape(pi, "payment_intent", rec.omit, rec.nulls)

    def _render_charge(
        self, rec: _PaymentIntent, v: ApiVersion, expand_refunds: bool = False
    ) -> dict[str, Any]:
        status = rec.charge_status or "succeeded"
        paid = status == "succeeded"
        captured = paid and rec.status == "succeeded"
        amount_captured: int | None = rec.amount_received if captured else 0
        if rec.released and v.null_amount_captured_on_cancel:
            amount_captured = None  # [V3]
        refunded_amount = rec.refunded()
        # A pre-basil remainder refund makes the whole authorized amount the refundable one.
        whole = rec.amount if rec.has_remainder_refund() else (amount_captured or 0)
        failure = rec.charge_failure if status == "failed" else None
        charge = dict(self.templates.charge)
        charge.update(
            id=rec.latest_charge,
            object="charge",
            amount=rec.amount,
            amount_captured=amount_captured,
            amount_refunded=refunded_amount,
            refunded=whole > 0 and refunded_amount >= whole,
            disputed=bool(rec.disputes),
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
            failure_code=failure.get("code") if failure else None,
            failure_message=failure.get("message") if failure else None,
            livemode=False,
            receipt_url=None,
            source=None,
            transfer_data=None,
        )
        if expand_refunds or v.charge_refunds_expanded:
            mine = [r for r in rec.refunds if r.charge == rec.latest_charge]
            charge["refunds"] = {
                "object": "list",
                "data": [self._render_refund(r, v) for r in reversed(mine)],
                "has_more": False,
                "url": f"/v1/charges/{rec.latest_charge}/refunds",
            }
        else:
            charge.pop("refunds", None)  # [V5] not returned unless expanded
        return self._shape(charge, "charge", rec.omit, rec.nulls)

    def _render_past_charge(
        self, rec: _PaymentIntent, past: _PastCharge, v: ApiVersion
    ) -> dict[str, Any]:
        failure = past.failure or {}
        charge = dict(self.templates.charge)
        charge.update(
            id=past.id,
            object="charge",
            amount=rec.amount,
            amount_captured=0,
            amount_refunded=0,
            refunded=False,
            disputed=False,
            captured=False,
            paid=past.status == "succeeded",
            status=past.status,
            currency=rec.currency,
            created=past.created,
            customer=rec.customer,
            description=rec.description,
            metadata=rec.metadata,
            payment_intent=rec.id,
            payment_method=f"pm_{rec.suffix}",
            balance_transaction=None,
            failure_code=failure.get("code"),
            failure_message=failure.get("message"),
            livemode=False,
            receipt_url=None,
            source=None,
            transfer_data=None,
        )
        if v.charge_refunds_expanded:
            charge["refunds"] = {
                "object": "list",
                "data": [],
                "has_more": False,
                "url": f"/v1/charges/{past.id}/refunds",
            }
        else:
            charge.pop("refunds", None)
        return self._shape(charge, "charge", rec.omit, rec.nulls)

    def _render_child(
        self, child: Any, v: ApiVersion, expand: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        if isinstance(child, _Refund):
            out = self._render_refund(child, v)
        elif isinstance(child, _Dispute):
            out = self._render_dispute(child, v)
        else:
            out = self._render_efw(child, v)
        if expand:
            rec = self._pis[child.payment_intent]
            if "charge" in expand:
                out["charge"] = self.get_rendered_charge(child.charge, api_version=v.name)
            if "payment_intent" in expand:
                out["payment_intent"] = self._render_pi(rec, v)
        return out

    def _render_refund(self, r: _Refund, v: ApiVersion) -> dict[str, Any]:
        out = dict(self.templates.refund)
        out.update(
            id=r.id,
            object="refund",
            amount=r.amount,
            charge=r.charge,
            payment_intent=r.payment_intent,
            created=r.created,
            currency=r.currency,
            status=r.status,
            reason=r.reason,
            metadata=r.metadata,
            balance_transaction=f"txn_{r.id[3:]}",
            receipt_number=None,
            source_transfer_reversal=None,
            transfer_reversal=None,
        )
        if r.status == "failed":
            out["failure_reason"] = r.failure_reason
            out["failure_balance_transaction"] = f"txn_{r.id[3:]}f"
        if r.status == "pending" and v.refund_pending_reason:
            out["pending_reason"] = "processing"  # [V6]
        rec = self._pis.get(r.payment_intent)
        return self._shape(out, "refund", rec.omit if rec else frozenset())

    def _render_dispute(self, d: _Dispute, v: ApiVersion) -> dict[str, Any]:
        out = dict(self.templates.dispute)
        details = dict(out.get("evidence_details") or {})
        details.update(
            due_by=d.due_by,
            has_evidence=d.submission_count > 0,
            past_due=False,
            submission_count=d.submission_count,
        )
        methods = dict(out.get("payment_method_details") or {"type": "card"})
        if isinstance(methods.get("card"), Mapping):
            card = dict(methods["card"])
            card["case_type"] = "inquiry" if d.status in _DISPUTE_INQUIRY else "chargeback"
            methods["card"] = card
        moves = []
        if d.withdrawn:
            moves.append(self._dispute_txn(d, -d.amount, "Chargeback withdrawal", "w"))
        if d.reinstated:
            moves.append(self._dispute_txn(d, d.amount, "Chargeback reversal", "r"))
        out.update(
            id=d.id,
            object="dispute",
            amount=d.amount,
            charge=d.charge,
            payment_intent=d.payment_intent,
            currency=d.currency,
            created=d.created,
            reason=d.reason,
            status=d.status,
            # [D3] An inquiry leaves the payment refundable; a chargeback does not.
            is_charge_refundable=d.status in _DISPUTE_INQUIRY,
            livemode=False,
            metadata=d.metadata,
            evidence_details=details,
            payment_method_details=methods,
            balance_transactions=moves,
        )
        rec = self._pis.get(d.payment_intent)
        return self._shape(out, "dispute", rec.omit if rec else frozenset())

    @staticmethod
    def _dispute_txn(d: _Dispute, amount: int, what: str, tag: str) -> dict[str, Any]:
        # [D4] The dispute lists the balance transactions that withdrew and reinstated the
        # funds. Stripe's dispute fee is left out (it varies by country and over time).
        return {
            "id": f"txn_{d.id[3:]}{tag}",
            "object": "balance_transaction",
            "amount": amount,
            "currency": d.currency,
            "created": d.created,
            "description": f"{what} for {d.charge}",
            "fee": 0,
            "fee_details": [],
            "net": amount,
            "reporting_category": "dispute" if amount < 0 else "dispute_reversal",
            "source": d.id,
            "status": "available",
            "type": "adjustment",
        }

    def _render_efw(self, w: _FraudWarning, v: ApiVersion) -> dict[str, Any]:
        out = dict(self.templates.early_fraud_warning)
        out.update(
            id=w.id,
            object="radar.early_fraud_warning",
            actionable=w.actionable,
            charge=w.charge,
            payment_intent=w.payment_intent,
            created=w.created,
            fraud_type=w.fraud_type,
            livemode=False,
        )
        rec = self._pis.get(w.payment_intent)
        return self._shape(out, "radar.early_fraud_warning", rec.omit if rec else frozenset())


# -- helpers -------------------------------------------------------------------------------


def _envelope(envelope: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated event overrides: livemode, account (Connect), api_version, thin."""
    out = dict(envelope or {})
    unknown = set(out) - {"livemode", "account", "api_version", "thin"}
    if unknown:
        raise ValueError(f"unknown envelope keys: {sorted(unknown)}")
    for key in ("livemode", "thin"):
        if key in out and not isinstance(out[key], bool):
            raise ValueError(f"envelope {key} must be a boolean")
    if out.get("account") is not None and not str(out["account"]).startswith("acct_"):
        raise ValueError("envelope account must be a Connect account id (acct_...)")
    if out.get("api_version") is not None:
        parse_version(out["api_version"])
    return out


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


def _paths(name: str, value: Any) -> frozenset[tuple[str, str]]:
    """Per-PaymentIntent omit_fields / null_fields: "field" (of the PaymentIntent) or
    "kind.field" (its charge, refunds, disputes...)."""
    if value is None:
        return frozenset()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a list of field names")
    out = set()
    for item in value:
        if not isinstance(item, str) or not item:
            raise ValueError(f"{name} must be a list of field names, got {item!r}")
        if "." in item:
            out.add(_split_path(item))
        else:
            out.add(("payment_intent", item))
    return frozenset(out)


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
        elif key in ("omit_fields", "null_fields"):
            out[key] = _paths(key, value)
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
        # Stripe clears the previous attempt's error once the PaymentIntent moves on [P3].
        rec.last_payment_error = None
    if "canceled_at" not in given:
        rec.canceled_at = at if status == "canceled" else None
    if status != "canceled" and "cancellation_reason" not in given:
        rec.cancellation_reason = None
    if status in ("requires_capture",) and "capture_method" not in rec.extra:
        rec.extra["capture_method"] = "manual"  # only manual capture waits for a capture


def _holds_authorization(rec: _PaymentIntent, old: _PaymentIntent | None) -> bool:
    return old is not None and rec.charge_status == "succeeded" and rec.authorized > 0


def _charge_status_for(rec: _PaymentIntent) -> str:
    if rec.status == "requires_payment_method" and rec.last_payment_error is not None:
        return "failed"
    if rec.status in ("processing", "requires_action", "requires_confirmation"):
        return "pending"
    return "succeeded"


def _failure(error: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"code": error.get("code"), "message": error.get("message")}


def _check_dispute_move(old: str, new: str) -> None:
    if new not in DISPUTE_STATUSES:
        raise ValueError(f"status must be one of {sorted(DISPUTE_STATUSES)}, got {new!r}")
    if old in _DISPUTE_CLOSED:
        raise ValueError(f"the dispute is closed ({old}); it cannot become {new!r}")
    if new in _DISPUTE_INQUIRY and old not in _DISPUTE_INQUIRY:
        raise ValueError(f"a chargeback ({old}) cannot become an inquiry status ({new!r})")


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
