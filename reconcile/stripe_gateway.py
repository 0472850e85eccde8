"""Reads from Stripe: PaymentIntents and Events, paced, retried and counted.

What the answers mean lives in reconcile/stripe_objects.py; how the sweep reads many
payments in few calls lives in reconcile/stripe_batch.py.

A thin typed shell around the official ``stripe.StripeClient``.  The client itself makes
no retries (``max_network_retries=0``): retries are ours, so that every attempt goes
through the shared rate limiter, is counted, and is bounded in attempts and total time.

Retried: 429, 5xx, connection failures and timeouts (and anything Stripe marks
``Stripe-Should-Retry: true``).  Never retried: 401/403 (a wrong key stays wrong) and the
other 4xx.  Retries exhausted raise :class:`StripeUnavailable`; the caller records its run
as partial and a later run resumes.

The API key never leaves the ``StripeClient``: it is not stored here, and messages that
Stripe sends back (which quote a masked key on 401/403) are redacted before they reach an
exception of ours.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar
from urllib.parse import quote

import orjson
import stripe
import tenacity

from reconcile.model import Payment
from reconcile.ratelimit import DEFAULT_RATE, LocalRateLimiter, RateLimiter
from reconcile.redact import redact
from reconcile.stripe_objects import needs_refund_list, payment_from_stripe

if TYPE_CHECKING:
    from stripe._base_address import BaseAddresses
    from stripe.params import (
        EventListParams,
        EventListParamsCreated,
        PaymentIntentListParams,
        PaymentIntentRetrieveParams,
    )

__all__ = [
    "EVENTS_RETENTION",
    "PAGE_SIZE",
    "RequestOutcome",
    "StripeAuthError",
    "StripeGateway",
    "StripeGatewayError",
    "StripeRequestError",
    "StripeUnavailable",
    "epoch_seconds",
]

logger = logging.getLogger(__name__)

PAGE_SIZE: Final = 100  # Stripe's maximum ``limit``
# The API version pinned on every request (``Stripe-Version``), so that what we read has
# the shape reconcile/stripe_objects.py was written for, whatever the account's default or
# the installed library's.  Override with RECON_STRIPE_API_VERSION.
STRIPE_API_VERSION: Final = "2026-10-28.endive"
# Stripe object ids: a prefix and letters, digits and underscores.  Anything else (a "/",
# "?", "..", spaces) would change the URL it is put into, so it never reaches one.
_ID = re.compile(r"[A-Za-z][A-Za-z0-9]*_[A-Za-z0-9_]{1,250}")
EVENTS_RETENTION: Final = timedelta(days=30)
_CLOCK_SKEW: Final = 300

RequestOutcome = Literal[
    "ok", "not_found", "rate_limited", "server_error", "connection_error", "error"
]

_T = TypeVar("_T")

# --------------------------------------------------------------------------- errors


class StripeGatewayError(Exception):
    """Base of every error this module raises."""


class InvalidStripeId(StripeGatewayError, ValueError):
    """Not the id of a Stripe object (it is never sent to Stripe)."""


def check_id(value: str, prefix: str, what: str) -> str:
    """``value`` when it is a well-formed Stripe id starting ``prefix``; else InvalidStripeId."""
    if not isinstance(value, str) or not value.startswith(prefix) or not _ID.fullmatch(value):
        shown = repr(value)[:80]
        raise InvalidStripeId(f"not {what} id: {shown} (expected {prefix}... )")
    return value


class StripeUnavailable(StripeGatewayError):
    """Retries ran out on 429, 5xx or connection failures: try again later."""

    def __init__(self, message: str, *, outcome: RequestOutcome, attempts: int) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.attempts = attempts


class StripeAuthError(StripeGatewayError):
    """Stripe refused the API key (401) or its permissions (403).  Never retried."""

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class StripeRequestError(StripeGatewayError):
    """Stripe refused the request (a 4xx other than 401/403/429).  Never retried."""

    def __init__(
        self, message: str, *, http_status: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code


class _Transient(Exception):
    """One failed attempt that is worth another (internal to the retry loop)."""

    def __init__(
        self,
        outcome: RequestOutcome,
        detail: str,
        http_status: int | None,
        retry_after: float | None,
        *,
        final: bool = False,
    ) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail
        self.http_status = http_status
        self.retry_after = retry_after
        # Stripe said ``Stripe-Should-Retry: false``: the same request will fail again.
        self.final = final


class _Missing:
    """Sentinel result of a call that answered 404 ``resource_missing``."""


_MISSING: Final = _Missing()


def epoch_seconds(when: datetime) -> float:
    # Ledgers on SQLite hand back naive datetimes; they are UTC by this service's convention.
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


# --------------------------------------------------------------------------- the gateway


@dataclass
class _Page:
    data: list[dict[str, Any]]
    has_more: bool


class StripeGateway:
    """Stripe reads for the reconciliation jobs.

    Counters (HTTP requests actually sent, retried ones included): ``calls``,
    ``rate_limited`` (429 answers) and ``errors`` (attempts that failed for any other reason
    than a 429 or an expected 404).
    """

    def __init__(
        self,
        api_key: str,
        api_base: str | None = None,
        limiter: RateLimiter | None = None,
        *,
        endpoint_limiter: Callable[[str], RateLimiter] | None = None,
        api_version: str = STRIPE_API_VERSION,
        max_attempts: int = 6,
        max_elapsed: float = 60.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        on_request: Callable[[str, str], None] | None = None,
        timeout: float = 30.0,
        slack_before: timedelta = timedelta(minutes=5),
        slack_after: timedelta = timedelta(minutes=1),
        http_client: stripe.HTTPClient | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if not api_key:
            raise StripeAuthError("no Stripe API key configured (STRIPE_API_KEY is empty)")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.api_base = api_base.rstrip("/") if api_base else None
        self.limiter: RateLimiter = limiter or LocalRateLimiter(DEFAULT_RATE)
        self.endpoint_limiter = endpoint_limiter
        self.api_version = api_version
        self.max_attempts = max_attempts
        self.max_elapsed = max_elapsed
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.slack_before = slack_before
        self.slack_after = slack_after
        self._on_request = on_request
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self.calls = 0
        self.rate_limited = 0
        self.errors = 0
        base_addresses: BaseAddresses = {"api": self.api_base} if self.api_base else {}
        # requests explicitly (it is also stripe's default when installed), so that the
        # ``responses`` mocks of the unit tests see every request.
        self._client = stripe.StripeClient(
            api_key,
            base_addresses=base_addresses,
            max_network_retries=0,
            stripe_version=api_version,
            http_client=http_client or stripe.RequestsClient(timeout=timeout),
        )

    def __repr__(self) -> str:
        return f"StripeGateway(api_base={self.api_base!r}, calls={self.calls})"

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"calls": self.calls, "rate_limited": self.rate_limited, "errors": self.errors}

    # ----------------------------------------------------------------- public reads

    def retrieve(self, payment_id: str) -> Payment | None:
        """One PaymentIntent with its latest charge (and its disputes when the charge says
        it is disputed), or None when Stripe has no such object."""
        check_id(payment_id, "pi_", "a PaymentIntent")
        params: PaymentIntentRetrieveParams = {"expand": ["latest_charge"]}
        result = self._call(
            "payment_intents.retrieve",
            lambda: self._client.v1.payment_intents.retrieve(payment_id, params=params),
            missing_ok=True,
        )
        if isinstance(result, _Missing):
            return None
        return self.payment(result.to_dict(recursive=True, for_json=True))

    def payment(self, pi: Mapping[str, Any]) -> Payment:
        """The view of a PaymentIntent read at our pinned version, its disputes listed when
        its (expanded) charge says there are any."""
        charge = pi.get("latest_charge")
        disputes = None
        if isinstance(charge, Mapping) and charge.get("disputed") is True:
            disputes = self.list_disputes(str(pi["id"]))
        payment = payment_from_stripe(pi, api_version=self.api_version, disputes=disputes)
        if needs_refund_list(payment, pi):
            # A partial capture (or a cancel) with refunds: whether one of them is Stripe's
            # own refund of the uncaptured remainder only the Refund objects say.
            refunds = self.list_refunds(str(pi["id"]))
            payment = payment_from_stripe(
                pi, api_version=self.api_version, disputes=disputes, refunds=refunds
            )
        return payment

    def list_disputes(self, payment_id: str) -> list[dict[str, Any]]:
        """Every Dispute of a PaymentIntent (``GET /v1/disputes?payment_intent=``)."""
        check_id(payment_id, "pi_", "a PaymentIntent")
        params = {"payment_intent": payment_id, "limit": PAGE_SIZE}
        found: list[dict[str, Any]] = []
        for page in self._pages("disputes.list", "/v1/disputes", params):
            found.extend(page.data)
        return found

    def list_refunds(self, payment_id: str) -> list[dict[str, Any]]:
        """Every Refund of a PaymentIntent (``GET /v1/refunds?payment_intent=``)."""
        check_id(payment_id, "pi_", "a PaymentIntent")
        params = {"payment_intent": payment_id, "limit": PAGE_SIZE}
        found: list[dict[str, Any]] = []
        for page in self._pages("refunds.list", "/v1/refunds", params):
            found.extend(page.data)
        return found

    def payment_intent_of(self, object_type: str, object_id: str) -> str | None:
        """The PaymentIntent a charge, refund, dispute or early fraud warning belongs to
        (what a thin event names), or None when it has none or does not exist."""
        paths = {
            "payment_intent": None,
            "charge": ("charges.retrieve", "/v1/charges/", "ch_"),
            "refund": ("refunds.retrieve", "/v1/refunds/", "re_"),
            "dispute": ("disputes.retrieve", "/v1/disputes/", "d"),
            "radar.early_fraud_warning": (
                "early_fraud_warnings.retrieve",
                "/v1/radar/early_fraud_warnings/",
                "issfr_",
            ),
        }
        if object_type not in paths:
            return None
        route = paths[object_type]
        if route is None:
            return check_id(object_id, "pi_", "a PaymentIntent")
        endpoint, base, prefix = route
        check_id(object_id, prefix, f"a {object_type}")
        result = self._call(
            endpoint,
            functools.partial(self._client.raw_request, "get", base + quote(object_id, safe="")),
            missing_ok=True,
        )
        if isinstance(result, _Missing):
            return None
        ref = dict(result.data).get("payment_intent")
        if isinstance(ref, Mapping):
            ref = ref.get("id")
        return ref if isinstance(ref, str) and ref.startswith("pi_") else None

    def retrieve_event(self, event_id: str) -> dict[str, Any] | None:
        """One event as a plain dict (``recon replay``), or None when Stripe has no such event."""
        check_id(event_id, "evt_", "an event")
        result = self._call(
            "events.retrieve",
            functools.partial(
                self._client.raw_request, "get", f"/v1/events/{quote(event_id, safe='')}"
            ),
            missing_ok=True,
        )
        if isinstance(result, _Missing):
            return None
        return dict(result.data)

    def list_created(self, since: datetime, until: datetime) -> Iterator[Payment]:
        """Every PaymentIntent created in ``[since, until]``, newest first, all pages."""
        gte = math.ceil(epoch_seconds(since))
        lte = math.floor(epoch_seconds(until))
        for page in self.payment_pages(gte, lte):
            for obj in page.data:
                yield self.payment(obj)

    def events_since(
        self,
        created_after: int | None,
        types: Sequence[str] | None = None,
        limit_pages: int | None = None,
        *,
        window: int = 3600,
    ) -> Iterator[dict[str, Any]]:
        """Events created after ``created_after`` (Unix seconds), oldest first, as dicts.

        Stripe lists events newest first only, and a list filtered by time has no cursor at
        its oldest end.  So the span is cut into time windows walked from the oldest: each
        window is read whole (newest first, following ``starting_after``), then yielded
        reversed.  A caller that stores events as they come and advances its cursor to the
        last one it stored never skips any, even when it stops early, and memory holds one
        window, not 30 days.  Windows grow while they are nearly empty and shrink when they
        take many pages.  ``limit_pages`` is checked between windows, so a window in
        progress is finished (and may overshoot the limit by its own pages).  The last
        window, the one that reaches the present, has no upper bound.  ``None`` reads the
        whole retention (30 days).
        """
        # Windows closer to the present than this are left open-ended: with our clock ahead
        # of Stripe's, a closed window could end after events that Stripe has yet to create.
        now = int(self._wall_clock()) - _CLOCK_SKEW
        oldest = int(self._wall_clock()) - int(EVENTS_RETENTION.total_seconds())
        lo = oldest if created_after is None else max(int(created_after), oldest)
        width = max(1, window)
        pages = 0
        while limit_pages is None or pages < limit_pages:
            hi = lo + width
            open_ended = hi >= now
            created: EventListParamsCreated = {"gte": lo + 1}
            if not open_ended:
                created["lte"] = hi
            params: EventListParams = {"limit": PAGE_SIZE, "created": created}
            if types:
                params["types"] = list(types)
            window_events: list[dict[str, Any]] = []
            window_pages = 0
            for page in self._pages("events.list", "/v1/events", params):
                window_pages += 1
                window_events.extend(page.data)
            pages += window_pages
            yield from reversed(window_events)
            if open_ended:
                return
            lo = hi
            if window_pages <= 1 and len(window_events) < PAGE_SIZE // 2:
                width *= 4
            elif window_pages > 5:
                width = max(60, width // 2)

    # ----------------------------------------------------------------- paging

    def payment_pages(self, gte: int, lte: int) -> Iterator[_Page]:
        params: PaymentIntentListParams = {
            "created": {"gte": gte, "lte": lte},
            "limit": PAGE_SIZE,
            "expand": ["data.latest_charge"],
        }
        return self._pages("payment_intents.list", "/v1/payment_intents", params)

    def _pages(self, endpoint: str, path: str, params: Any) -> Iterator[_Page]:
        # Manual ``starting_after`` paging rather than ``auto_paging_iter``: each page is
        # then one paced, retried, counted call of ours, and callers can stop between pages.
        # ``raw_request`` (same auth, base URL and typed errors) hands back plain JSON: a
        # page of 100 expanded PaymentIntents costs ~15 ms that way against ~130 ms to
        # build StripeObjects and turn them back into dicts, which dominated a dense sweep.
        cursor: str | None = None
        while True:
            page_params = dict(params)
            if cursor is not None:
                page_params["starting_after"] = cursor
            listed = self._call(endpoint, functools.partial(self._get_json, path, page_params))
            assert not isinstance(listed, _Missing)
            body: Mapping[str, Any] = listed
            data: list[dict[str, Any]] = list(body.get("data") or [])
            has_more = bool(body.get("has_more")) and bool(data)
            yield _Page(data, has_more)
            if not has_more:
                return
            cursor = str(data[-1]["id"])

    def _get_json(self, path: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """GET ``path`` through the client (auth, base URL, typed errors) as plain JSON.

        ``raw_request`` parses every answer into OrderedDicts, about 8 ms for a page of 100
        expanded PaymentIntents, a sizeable share of a backlog sweep's CPU; a successful
        answer is parsed here with orjson instead (2.5 ms).  Errors still go through the
        library, so they raise its typed exceptions.  Should the library's internals change
        shape, ``raw_request`` is used as before.
        """
        requestor = getattr(self._client, "_requestor", None)
        request_raw = getattr(requestor, "request_raw", None)
        interpret = getattr(requestor, "_interpret_response", None)
        if request_raw is None or interpret is None:
            return dict(self._client.raw_request("get", path, **params).data)
        rbody, rcode, rheaders = request_raw(
            "get", path, params=dict(params), base_address="api", api_mode="V1"
        )
        if 200 <= rcode < 300 and isinstance(rbody, str | bytes):
            try:
                parsed = orjson.loads(rbody)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                return parsed
        return dict(interpret(rbody, rcode, rheaders, "V1").data)

    # ----------------------------------------------------------------- one call, retried

    def _call(
        self, endpoint: str, fn: Callable[[], _T], *, missing_ok: bool = False
    ) -> _T | _Missing:
        started = self._clock()

        def stop(state: tenacity.RetryCallState) -> bool:
            if state.attempt_number >= self.max_attempts:
                return True
            return self._clock() - started + state.upcoming_sleep >= self.max_elapsed

        retrying = tenacity.Retrying(
            sleep=self._sleep,
            stop=stop,
            wait=self._backoff,
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, _Transient) and not e.final),
            reraise=True,
        )
        try:
            return retrying(self._attempt, endpoint, fn, missing_ok)
        except _Transient as exc:
            attempts = retrying.statistics.get("attempt_number", self.max_attempts)
            failure = StripeUnavailable(
                f"Stripe {endpoint} unavailable after {attempts} attempt(s): {exc.detail}",
                outcome=exc.outcome,
                attempts=attempts,
            )
        # Raised outside the ``except`` so that the stripe error (its body, its headers) is
        # not chained to ours.
        raise failure

    def _backoff(self, state: tenacity.RetryCallState) -> float:
        # Exponential with "equal jitter": half the step fixed, half random, so that
        # workers that failed together do not retry together, yet none retries at once.
        step = min(self.backoff_max, self.backoff_initial * 2.0 ** (state.attempt_number - 1))
        delay = step / 2 + self._rng.uniform(0, step / 2)
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, self.backoff_max))
        return delay

    def _attempt(self, endpoint: str, fn: Callable[[], _T], missing_ok: bool) -> _T | _Missing:
        # The endpoint's own budget first: waiting there must not hold a slot of the
        # account-wide budget that other endpoints could use meanwhile.
        if self.endpoint_limiter is not None:
            self.endpoint_limiter(endpoint).acquire()
        self.limiter.acquire()
        with self._lock:
            self.calls += 1
        failure: Exception | None
        try:
            result = fn()
        except stripe.StripeError as exc:
            outcome, failure = self._classify(endpoint, exc, missing_ok)
        else:
            self._report(endpoint, "ok")
            return result
        with self._lock:
            if outcome == "rate_limited":
                self.rate_limited += 1
            elif outcome != "not_found":
                self.errors += 1
        self._report(endpoint, outcome)
        if failure is None:
            return _MISSING
        # Outside the ``except`` block: see ``_call``.
        raise failure

    def _classify(
        self, endpoint: str, exc: stripe.StripeError, missing_ok: bool
    ) -> tuple[RequestOutcome, Exception | None]:
        """The outcome of a failed attempt and what to raise (None: the object is missing)."""
        status = exc.http_status
        code = exc.code if isinstance(exc.code, str) else None
        message = redact(str(exc.user_message or "") or type(exc).__name__)
        if len(message) > 200:
            message = message[:200] + "..."  # e.g. a proxy's whole HTML error page
        if exc.request_id:
            message = f"{message} (request {exc.request_id})"
        where = f"Stripe {endpoint}"
        retry_after = _retry_after(exc.headers)
        # Stripe-Should-Retry: false means the same request will fail again, whatever its
        # status: never retried, the run ends partial and a later one tries afresh.
        final = _header(exc.headers, "stripe-should-retry") == "false"
        if isinstance(exc, stripe.RateLimitError) or status == 429:
            return "rate_limited", _Transient(
                "rate_limited", f"HTTP 429: {message}", status, retry_after, final=final
            )
        if isinstance(exc, stripe.APIConnectionError):
            return "connection_error", _Transient(
                "connection_error", f"connection failed: {message}", status, retry_after
            )
        if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError) or status in (
            401,
            403,
        ):
            return "error", StripeAuthError(
                f"{where}: Stripe refused the API key (HTTP {status}); check STRIPE_API_KEY",
                http_status=status,
            )
        if status is None or not 400 <= status < 500:
            # 5xx, and also bodies that are not Stripe JSON at all (a proxy's error page)
            return "server_error", _Transient(
                "server_error", f"HTTP {status}: {message}", status, retry_after, final=final
            )
        if status == 404 and code == "resource_missing" and missing_ok:
            return "not_found", None
        if _header(exc.headers, "stripe-should-retry") == "true":
            return "error", _Transient("error", f"HTTP {status}: {message}", status, retry_after)
        label = f"HTTP {status} {code}" if code else f"HTTP {status}"
        return "error", StripeRequestError(
            f"{where}: {label}: {message}", http_status=status, code=code
        )

    def _report(self, endpoint: str, outcome: RequestOutcome) -> None:
        if self._on_request is None:
            return
        try:
            self._on_request(endpoint, outcome)
        except Exception:
            # A broken metrics hook must not fail the reconciliation that it observes.
            logger.exception("on_request hook failed")


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == name:
            return str(value).strip().lower()
    return None


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    value = _header(headers, "retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # the HTTP-date form is not worth parsing here
    return seconds if seconds >= 0 and math.isfinite(seconds) else None
