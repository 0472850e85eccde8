"""Reads from Stripe: PaymentIntents and Events, paced, retried and counted.

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import stripe
import tenacity

from reconcile.model import Payment, PaymentStatus
from reconcile.ratelimit import DEFAULT_RATE, LocalRateLimiter, RateLimiter

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
    "Outcome",
    "StripeAuthError",
    "StripeGateway",
    "StripeGatewayError",
    "StripeRequestError",
    "StripeUnavailable",
    "payment_from_stripe",
]

logger = logging.getLogger(__name__)

PAGE_SIZE: Final = 100  # Stripe's maximum ``limit``
EVENTS_RETENTION: Final = timedelta(days=30)
_CLOCK_SKEW: Final = 300

Outcome = Literal["ok", "not_found", "rate_limited", "server_error", "connection_error", "error"]

_T = TypeVar("_T")

# Stripe keys (also in the masked form Stripe quotes back: ``sk_test_****1234``).
_KEY_TEXT = re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9*]+")


def _redact(text: str) -> str:
    return _KEY_TEXT.sub("***", text)


# --------------------------------------------------------------------------- errors


class StripeGatewayError(Exception):
    """Base of every error this module raises."""


class StripeUnavailable(StripeGatewayError):
    """Retries ran out on 429, 5xx or connection failures: try again later."""

    def __init__(self, message: str, *, outcome: Outcome, attempts: int) -> None:
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
        self, outcome: Outcome, detail: str, http_status: int | None, retry_after: float | None
    ) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail
        self.http_status = http_status
        self.retry_after = retry_after


class _Missing:
    """Sentinel result of a call that answered 404 ``resource_missing``."""


_MISSING: Final = _Missing()


# --------------------------------------------------------------------------- conversion


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
    if customer_email is None:
        billing = charge.get("billing_details")
        if isinstance(billing, Mapping):
            customer_email = billing.get("email") or None

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
        metadata={str(k): "" if v is None else str(v) for k, v in dict(metadata).items()},
    )


def _epoch(when: datetime) -> float:
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
            http_client=http_client or stripe.RequestsClient(timeout=timeout),
        )

    def __repr__(self) -> str:
        return f"StripeGateway(api_base={self.api_base!r}, calls={self.calls})"

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"calls": self.calls, "rate_limited": self.rate_limited, "errors": self.errors}

    # ----------------------------------------------------------------- public reads

    def retrieve(self, payment_id: str) -> Payment | None:
        """One PaymentIntent with its latest charge, or None when Stripe has no such object."""
        if not payment_id or payment_id != payment_id.strip():
            # an empty id would turn the retrieve URL into the list URL
            raise ValueError(f"not a PaymentIntent id: {payment_id!r}")
        params: PaymentIntentRetrieveParams = {"expand": ["latest_charge"]}
        result = self._call(
            "payment_intents.retrieve",
            lambda: self._client.v1.payment_intents.retrieve(payment_id, params=params),
            missing_ok=True,
        )
        if isinstance(result, _Missing):
            return None
        return payment_from_stripe(result)

    def retrieve_event(self, event_id: str) -> dict[str, Any] | None:
        """One event as a plain dict (``recon replay``), or None when Stripe has no such event."""
        if not event_id or event_id != event_id.strip() or "/" in event_id:
            raise ValueError(f"not an event id: {event_id!r}")
        result = self._call(
            "events.retrieve",
            functools.partial(self._client.raw_request, "get", f"/v1/events/{event_id}"),
            missing_ok=True,
        )
        if isinstance(result, _Missing):
            return None
        return dict(result.data)

    def list_created(self, since: datetime, until: datetime) -> Iterator[Payment]:
        """Every PaymentIntent created in ``[since, until]``, newest first, all pages."""
        gte = math.ceil(_epoch(since))
        lte = math.floor(_epoch(until))
        for page in self._payment_pages(gte, lte):
            for obj in page.data:
                yield payment_from_stripe(obj)

    def fetch_many(self, items: Sequence[tuple[str, datetime]]) -> dict[str, Payment | None]:
        """The Stripe state of many payments in as few API calls as the data allows.

        ``items`` are (PaymentIntent id, approximate creation time from the ledger).  Dense
        runs of items are read by listing their time window, 100 PaymentIntents a call;
        sparse ones and whatever the lists did not find are retrieved one by one (and come
        back None when Stripe really has no such object).  Every requested id is a key of
        the result.  See :class:`_BatchFetch` for the plan.
        """
        wanted: dict[str, float] = {}
        for payment_id, when in items:
            ts = _epoch(when)
            wanted[payment_id] = min(ts, wanted.get(payment_id, ts))
        fetch = _BatchFetch(
            self, wanted, self.slack_before.total_seconds(), self.slack_after.total_seconds()
        )
        fetch.run()
        for payment_id in wanted:
            if payment_id not in fetch.results:
                fetch.results[payment_id] = self.retrieve(payment_id)
        return {payment_id: fetch.results[payment_id] for payment_id in wanted}

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

    def _payment_pages(self, gte: int, lte: int) -> Iterator[_Page]:
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
            listed = self._call(
                endpoint, functools.partial(self._client.raw_request, "get", path, **page_params)
            )
            assert not isinstance(listed, _Missing)
            body: Mapping[str, Any] = listed.data
            data: list[dict[str, Any]] = list(body.get("data") or [])
            has_more = bool(body.get("has_more")) and bool(data)
            yield _Page(data, has_more)
            if not has_more:
                return
            cursor = str(data[-1]["id"])

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
            retry=tenacity.retry_if_exception_type(_Transient),
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
    ) -> tuple[Outcome, Exception | None]:
        """The outcome of a failed attempt and what to raise (None: the object is missing)."""
        status = exc.http_status
        code = exc.code if isinstance(exc.code, str) else None
        message = _redact(str(exc.user_message or "") or type(exc).__name__)
        if len(message) > 200:
            message = message[:200] + "..."  # e.g. a proxy's whole HTML error page
        if exc.request_id:
            message = f"{message} (request {exc.request_id})"
        where = f"Stripe {endpoint}"
        retry_after = _retry_after(exc.headers)
        if isinstance(exc, stripe.RateLimitError) or status == 429:
            return "rate_limited", _Transient(
                "rate_limited", f"HTTP 429: {message}", status, retry_after
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
                "server_error", f"HTTP {status}: {message}", status, retry_after
            )
        if status == 404 and code == "resource_missing" and missing_ok:
            return "not_found", None
        if _header(exc.headers, "stripe-should-retry") == "true":
            return "error", _Transient("error", f"HTTP {status}: {message}", status, retry_after)
        label = f"HTTP {status} {code}" if code else f"HTTP {status}"
        return "error", StripeRequestError(
            f"{where}: {label}: {message}", http_status=status, code=code
        )

    def _report(self, endpoint: str, outcome: Outcome) -> None:
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


# --------------------------------------------------------------------------- fetch_many


@dataclass
class _Segment:
    ids: list[str]
    lo: int  # created[gte]
    hi: int  # created[lte]


@dataclass
class _BatchFetch:
    """The plan behind :meth:`StripeGateway.fetch_many`.

    Cost model: listing a window costs one call per 100 PaymentIntents that Stripe holds in
    it (ours or not); retrieving costs one call per id.  Stripe's density (PaymentIntents
    per second) is unknown until a list shows it, and the ledger's own density is only a
    lower bound for it, so:

    1. Items sorted by time are grouped into runs: while the density is unknown, items whose
       windows ``[t - slack_before, t + slack_after]`` overlap; once it is known, items
       closer to the previous one than a page's worth of Stripe's payments (so that a dense
       burst is not drowned in a sparse chain that happens to link it to others).
    2. A segment is listed when it is expected to cost fewer pages than it has ids (with an
       unknown density: when it has at least two ids; the biggest goes first, so the one
       page that may be wasted exploring is spent where listing is most likely to pay).
    3. While listing (newest first), after each page: ids whose window lies wholly above
       the page's oldest item and that were not seen are given up to retrieval; the rest
       ("ahead") can still appear.  The listing stops as soon as the pages it is expected
       to need exceed the ids still ahead, or the pages spent exceed what it could still
       save.  The ids still ahead are then planned again with the density now known,
       below the point reached.
    4. Whatever is left is retrieved one by one.

    List pages in total never exceed the number of ids, so the worst case costs at most
    twice the retrieves; the dense case costs about one call per 100 payments.
    """

    gateway: StripeGateway
    wanted: Mapping[str, float]
    slack_before: float
    slack_after: float
    results: dict[str, Payment | None] = field(default_factory=dict)
    # ids whose window has been listed without finding them: only a retrieve can tell
    given_up: set[str] = field(default_factory=set)
    # upper bound of what is left to list for an id whose listing stopped part-way
    caps: dict[str, int] = field(default_factory=dict)
    seen_items: int = 0
    seen_seconds: float = 0.0
    budget: int = 0

    def __post_init__(self) -> None:
        self.budget = len(self.wanted)

    @property
    def density(self) -> float | None:
        """PaymentIntents per second on Stripe, as far as the lists have shown."""
        if self.seen_seconds <= 0:
            return None
        return self.seen_items / self.seen_seconds

    def _pending(self) -> list[tuple[float, str]]:
        return sorted(
            (t, pid)
            for pid, t in self.wanted.items()
            if pid not in self.results and pid not in self.given_up
        )

    def _window(self, pid: str) -> tuple[int, int]:
        t = self.wanted[pid]
        hi = math.ceil(t + self.slack_after)
        cap = self.caps.get(pid)
        return math.floor(t - self.slack_before), hi if cap is None else min(hi, cap)

    def segments(self) -> list[_Segment]:
        return self.runs(self._pending(), self.density)

    def runs(self, items: Iterable[tuple[float, str]], density: float | None) -> list[_Segment]:
        """``items`` (time, id) sorted by time, grouped into runs worth one window each."""
        # Taking the next item into the run extends the window by the time between the two:
        # worth it while that costs less than the one retrieve it saves, i.e. while the
        # spacing holds less than a page of Stripe's payments.  Before the density is known,
        # only items whose windows overlap are run together.
        max_spacing = None
        if density is not None:
            max_spacing = math.inf if density == 0 else PAGE_SIZE / density
        segments: list[_Segment] = []
        last_t = -math.inf
        for t, pid in items:
            lo, hi = self._window(pid)
            last = segments[-1] if segments else None
            joins = last is not None and (
                lo <= last.hi if max_spacing is None else t - last_t <= max_spacing
            )
            if last is not None and joins:
                last.ids.append(pid)
                last.lo = min(last.lo, lo)
                last.hi = max(last.hi, hi)
            else:
                segments.append(_Segment([pid], lo, hi))
            last_t = t
        return segments

    def estimated_pages(self, seconds: float) -> int | None:
        density = self.density
        if density is None:
            return None
        return math.ceil(density * max(0.0, seconds) / PAGE_SIZE)

    def worth_listing(self, segment: _Segment) -> bool:
        count = sum(1 for pid in segment.ids if pid not in self.results)
        if count < 2:
            return False
        pages = self.estimated_pages(segment.hi - segment.lo)
        return max(1, pages or 1) < count

    def run(self) -> None:
        while self.budget > 0:
            candidates = [s for s in self.segments() if self.worth_listing(s)]
            if not candidates:
                return
            candidates.sort(key=lambda s: len(s.ids), reverse=True)
            density_before = self.density
            for segment in candidates:
                if self.budget <= 0:
                    return
                if not self.worth_listing(segment):
                    continue
                stopped_early = self.list_segment(segment)
                if stopped_early or _moved(density_before, self.density):
                    break  # plan the rest again with what was learnt
            else:
                return

    def list_segment(self, segment: _Segment) -> bool:
        """List one segment's window; True when it stopped before the window's end."""
        own = set(segment.ids)
        found = 0
        pages = 0
        items = 0
        planned_with = self.density
        for page in self.gateway._payment_pages(segment.lo, segment.hi):
            pages += 1
            self.budget -= 1
            items += len(page.data)
            for obj in page.data:
                pid = str(obj.get("id"))
                if pid in self.wanted and pid not in self.results:
                    self.results[pid] = payment_from_stripe(obj)
                    found += pid in own
            if not page.has_more:
                self._observe(items, segment.hi - segment.lo)
                self.given_up.update(pid for pid in own if pid not in self.results)
                return False
            oldest = int(page.data[-1]["created"])
            ahead = []
            for pid in own:
                if pid in self.results:
                    continue
                if self._window(pid)[0] <= oldest:
                    ahead.append(pid)
                else:
                    self.given_up.add(pid)
            covered = segment.hi - oldest
            if not ahead:
                self._observe(items, covered)
                return False
            density_here = (self.seen_items + items) / max(1.0, self.seen_seconds + covered)
            expected = math.ceil(density_here * max(0, oldest - segment.lo) / PAGE_SIZE)
            stop = expected > len(ahead) or pages > found + len(ahead) or self.budget <= 0
            if not stop and _moved(planned_with, density_here):
                # This window was planned blind (or on a very different density): if what
                # is left of it would now be planned as several runs, plan it again.
                planned_with = density_here
                rest = sorted((self.wanted[pid], pid) for pid in ahead)
                stop = len(self.runs(rest, density_here)) > 1
            if stop:
                self._observe(items, covered)
                for pid in ahead:
                    self.caps[pid] = oldest
                return True
        return False  # pragma: no cover - a page always answers has_more

    def _observe(self, items: int, seconds: float) -> None:
        self.seen_items += items
        self.seen_seconds += max(1.0, seconds)


def _moved(before: float | None, after: float | None) -> bool:
    """Whether a density estimate changed enough (or at all from unknown) to plan again."""
    if before is None or after is None:
        return before is not after
    low, high = sorted((before, after))
    return high > 2 * low if low > 0 else high > 0
