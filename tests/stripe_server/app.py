"""The HTTP face of the fake: Stripe's wire format under /v1 (and /v2/core/events), a control
plane under /_test.

Every /v1 and /v2 request goes through the same gate, in the order a real client would meet
the failures: latency, then authentication, then the API version, then the rate limits (the
global one and the endpoint's own [L1][L2]), then injected errors. Control endpoints skip the
gate and are not counted, so seeding or reading stats never disturbs what a test measures.
The `[..]` tags point at FACTS.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import random
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .state import SETTING_NAMES, StripeState
from .versions import parse_version

TEST_KEY_PREFIXES = ("sk_test_", "rk_test_")
MAX_LIMIT = 100
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

_NO_KEY_MESSAGE = (
    "You did not provide an API key. You need to provide your API key in the Authorization "
    "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
    "https://stripe.com/docs/api#authentication for details, or we can help at "
    "https://support.stripe.com/."
)
# [L3] The body of a rate-limited request.
_RATE_LIMIT_MESSAGE = (
    "Request rate limit exceeded. You can learn more about rate limits here "
    "https://stripe.com/docs/rate-limits."
)
_LOCK_TIMEOUT_MESSAGE = (
    "This object cannot be accessed right now because another API request or Stripe process "
    "is currently accessing it. If you see this error intermittently, retry the request."
)


# -- configuration and counters --------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    """Fault knobs, all changeable at runtime.

    rate_limit: requests per second admitted on /v1 over all endpoints (None: unlimited;
    Stripe: 100 live, 25 test [L1]); rate_burst: its bucket size (None: max(1, rate_limit)).
    endpoint_rate_limit: requests per second admitted per endpoint (None: unlimited; Stripe's
    default is 25 [L2]); endpoint_rate_limits: {endpoint: rate} overrides it per endpoint, by
    the names Stats uses ("payment_intents.retrieve"...). A request must pass both buckets
    and counts against both [L2]. rate_limit_should_retry: send `Stripe-Should-Retry:
    true/false` on 429s (None: no header) [L4].
    error_rate: probability of an injected error; fail_next: fail exactly the next N admitted
    requests; error_status: its code (5xx, 409 or 429); error_statuses: several such codes,
    one picked at random per injected error (a storm of 429s and 500s); error_code: its
    `code` (e.g. "lock_timeout" with 429 [L5]); error_should_retry: `Stripe-Should-Retry` on
    it [L4].
    latency_ms (+ uniform latency_jitter_ms) delays every answer. valid_keys: accepted API
    keys (None: any test-mode key). event_retention_days: hide older events as Stripe's
    Events API does after 30 days (None: keep all, friendlier to seeds with old timestamps).
    """

    rate_limit: float | None = None
    rate_burst: float | None = None
    endpoint_rate_limit: float | None = None
    endpoint_rate_limits: Mapping[str, float] = dataclasses.field(default_factory=dict)
    rate_limit_should_retry: bool | None = None
    error_rate: float = 0.0
    error_status: int = 500
    error_statuses: tuple[int, ...] = ()
    error_code: str | None = None
    error_should_retry: bool | None = None
    fail_next: int = 0
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    valid_keys: frozenset[str] | None = None
    event_retention_days: float | None = None
    random_seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["valid_keys"] = None if self.valid_keys is None else sorted(self.valid_keys)
        out["endpoint_rate_limits"] = dict(self.endpoint_rate_limits)
        return out

    def with_changes(self, changes: Mapping[str, Any]) -> ServerConfig:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        values = dict(changes)
        for key in ("rate_limit", "rate_burst", "event_retention_days", "endpoint_rate_limit"):
            if key in values and values[key] is not None:
                values[key] = _number(key, values[key], positive=True)
        if "endpoint_rate_limits" in values:
            limits = values["endpoint_rate_limits"] or {}
            if not isinstance(limits, Mapping):
                raise ValueError("endpoint_rate_limits must map endpoint names to rates")
            values["endpoint_rate_limits"] = {
                str(k): _number(f"endpoint_rate_limits[{k}]", v, positive=True)
                for k, v in limits.items()
            }
        for key in ("rate_limit_should_retry", "error_should_retry"):
            if values.get(key) is not None and not isinstance(values[key], bool):
                raise ValueError(f"{key} must be true, false or null")
        if values.get("error_code") is not None and not isinstance(values["error_code"], str):
            raise ValueError("error_code must be a string or null")
        for key in ("latency_ms", "latency_jitter_ms"):
            if key in values:
                values[key] = _number(key, values[key])
        if "error_rate" in values:
            rate = _number("error_rate", values["error_rate"])
            if rate > 1:
                raise ValueError("error_rate is a probability between 0 and 1")
            values["error_rate"] = rate
        if "fail_next" in values:
            values["fail_next"] = _whole("fail_next", values["fail_next"])
        if "error_status" in values:
            values["error_status"] = _error_status("error_status", values["error_status"])
        if "error_statuses" in values:
            codes = values["error_statuses"] or ()
            if isinstance(codes, str | int) or not isinstance(codes, Iterable):
                raise ValueError("error_statuses must be a list of status codes")
            values["error_statuses"] = tuple(_error_status("error_statuses", c) for c in codes)
        if values.get("valid_keys") is not None:
            keys = values["valid_keys"]
            if isinstance(keys, str) or not isinstance(keys, Iterable):
                raise ValueError("valid_keys must be a list of keys or null")
            values["valid_keys"] = frozenset(keys)
        if values.get("random_seed") is not None:
            values["random_seed"] = _whole("random_seed", values["random_seed"])
        return dataclasses.replace(self, **values)


def _number(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value}")
    return float(value)


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


class Stats:
    """Calls served on /v1 and /v2, by endpoint and outcome ("200", "401", "404", "429",
    "5xx"...), and when each arrived: enough to prove that a client sharing a budget never
    sent more than it allowed in any one second, per endpoint or in all."""

    MAX_ARRIVALS = 2_000_000

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._arrivals: deque[tuple[float, str, str]] = deque(maxlen=self.MAX_ARRIVALS)
        self._clock = clock

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._arrivals.clear()

    def record(self, endpoint: str, status: int, at: float | None = None) -> None:
        outcome = "5xx" if status >= 500 else str(status)
        at = self._clock() if at is None else at
        with self._lock:
            self._counts[(endpoint, outcome)] += 1
            self._arrivals.append((at, endpoint, outcome))

    def _times(self, endpoint: str | None, outcome: str | None, admitted_only: bool) -> list[float]:
        with self._lock:
            items = list(self._arrivals)
        return sorted(
            t
            for t, ep, out in items
            if (endpoint is None or ep == endpoint)
            and (outcome is None or out == outcome)
            and not (admitted_only and out == "429")
        )

    def per_second(
        self,
        endpoint: str | None = None,
        outcome: str | None = None,
        *,
        admitted_only: bool = False,
    ) -> dict[int, int]:
        """Requests by the whole (Unix) second they arrived in."""
        counts: Counter[int] = Counter(
            int(t) for t in self._times(endpoint, outcome, admitted_only)
        )
        return dict(sorted(counts.items()))

    def peak(
        self,
        endpoint: str | None = None,
        outcome: str | None = None,
        *,
        window: float = 1.0,
        admitted_only: bool = False,
    ) -> int:
        """The most requests that arrived within any `window` seconds (a sliding window, so
        a burst straddling two clock seconds is not split in two)."""
        times = self._times(endpoint, outcome, admitted_only)
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def count(self, endpoint: str | None = None, outcome: str | None = None) -> int:
        with self._lock:
            return sum(
                n
                for (ep, out), n in self._counts.items()
                if (endpoint is None or ep == endpoint) and (outcome is None or out == outcome)
            )

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            items = list(self._counts.items())
        by_endpoint: dict[str, dict[str, int]] = {}
        by_outcome: Counter[str] = Counter()
        for (endpoint, outcome), n in items:
            slot = by_endpoint.setdefault(endpoint, {"total": 0})
            slot["total"] += n
            slot[outcome] = slot.get(outcome, 0) + n
            by_outcome[outcome] += n
        return {
            "total": sum(by_outcome.values()),
            "by_endpoint": by_endpoint,
            "by_outcome": dict(by_outcome),
        }


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.capacity = burst
        self.tokens = burst
        self.clock = clock
        self.stamp = clock()

    def ready(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens >= 1

    def take(self) -> bool:
        if self.ready():
            self.tokens -= 1
            return True
        return False


# -- Stripe errors and query parsing -------------------------------------------------------


class StripeHTTPError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.should_retry = should_retry
        self.body: dict[str, Any] = {"type": type, "message": message}
        if code is not None:
            self.body["code"] = code
            self.body["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param is not None:
            self.body["param"] = param

    def response(self) -> Response:
        response = _json({"error": self.body}, self.status)
        if self.should_retry is not None:
            # [L4] The API tells clients whether a retry can succeed.
            response.headers["Stripe-Should-Retry"] = "true" if self.should_retry else "false"
        return response


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json"
    )


def _bad(message: str, param: str | None = None) -> StripeHTTPError:
    return StripeHTTPError(400, message, param=param)


_KEY = re.compile(r"^([A-Za-z_]+)(?:\[([A-Za-z0-9_]*)\])?$")


def parse_query(items: Iterable[tuple[str, str]], allowed: Iterable[str]) -> dict[str, Any]:
    """Stripe's form encoding: `a=1`, `a[]=x`/`a[0]=x` (lists), `a[gte]=1` (hashes)."""
    allowed = set(allowed)
    out: dict[str, Any] = {}
    for key, value in items:
        match = _KEY.match(key)
        name, sub = (match.group(1), match.group(2)) if match else (key, None)
        if name not in allowed:
            raise _bad(f"Received unknown parameter: {key}", param=key)
        current = out.get(name)
        if sub is None:
            if isinstance(current, list | dict):
                raise _bad(f"Invalid {name}: mixes a scalar with a list or hash", param=name)
            out[name] = value
        elif sub == "" or sub.isdigit():
            if current is None:
                current = out[name] = []
            if not isinstance(current, list):
                raise _bad(f"Invalid array: {name}", param=name)
            current.append(value)
        else:
            if current is None:
                current = out[name] = {}
            if not isinstance(current, dict):
                raise _bad(f"Invalid hash: {name}", param=name)
            current[sub] = value
    return out


def _to_int(value: Any, param: str) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise _bad(f"Invalid integer: {value}", param=param)
    return int(value)


def _created(value: Any) -> int | dict[str, int] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _to_int(value, "created")
    if not isinstance(value, dict):
        raise _bad("Invalid created: must be an integer or a hash", param="created")
    out = {}
    for op, raw in value.items():
        if op not in ("gt", "gte", "lt", "lte"):
            raise _bad(f"Received unknown parameter: created[{op}]", param=f"created[{op}]")
        out[op] = _to_int(raw, f"created[{op}]")
    return out


def _limit(params: Mapping[str, Any]) -> int:
    if "limit" not in params:
        return 10
    limit = _to_int(params["limit"], "limit")
    if limit < 1:
        raise _bad("This value must be greater than or equal to 1.", param="limit")
    if limit > MAX_LIMIT:
        raise _bad(f"This value must be less than or equal to {MAX_LIMIT}.", param="limit")
    return limit


def _cursors(params: Mapping[str, Any]) -> tuple[str | None, str | None]:
    after, before = params.get("starting_after"), params.get("ending_before")
    if after is not None and before is not None:
        raise _bad("You may only specify one of these parameters: ending_before, starting_after.")
    for name, value in (("starting_after", after), ("ending_before", before)):
        if value is not None and not isinstance(value, str):
            raise _bad(f"Invalid string: {value}", param=name)
    return after, before


def _expand(params: Mapping[str, Any], allowed: Iterable[str]) -> set[str]:
    raw = params.get("expand", [])
    wanted = set(raw if isinstance(raw, list) else [raw])
    for item in wanted - set(allowed):
        raise _bad(f"This property cannot be expanded ({item}).", param="expand")
    return wanted


# -- the application -----------------------------------------------------------------------


class FakeStripe:
    """State + faults + stats, and the Starlette app (`.app`) that serves them.

    `config` takes ServerConfig's fields and the account settings of StripeState
    (api_version, omit_fields, companion_events, thin_events...), which go to the state."""

    def __init__(self, state: StripeState | None = None, **config: Any) -> None:
        account = {k: config.pop(k) for k in list(config) if k in SETTING_NAMES}
        self.state = state if state is not None else StripeState()
        if account:
            self.state.configure(**account)
        self.initial_settings = self.state.settings
        self.initial_config = ServerConfig().with_changes(config)
        self.stats = Stats()
        self._gate = threading.Lock()
        self._apply_config(self.initial_config)
        self.app = self._build_app()
        self.app.state.fake = self

    # -- runtime control (also reachable over HTTP under /_test) --------------------------

    def configure(self, **changes: Any) -> ServerConfig:
        account = {k: changes.pop(k) for k in list(changes) if k in SETTING_NAMES}
        with self._gate:
            config = self.config.with_changes(changes)  # validate both before changing either
            if account:
                self.state.configure(**account)
            self._apply_config(config, changes)
            return self.config

    def reset(self, *, state: bool = True, stats: bool = True, config: bool = True) -> None:
        if state:
            self.state.reset()
        if stats:
            self.stats.reset()
        if config:
            with self._gate:
                self._apply_config(self.initial_config)
                self.state.configure(**self.initial_settings.to_dict())

    def _apply_config(self, config: ServerConfig, changes: Mapping[str, Any] | None = None):
        self.config = config
        rate_changed = changes is None or {"rate_limit", "rate_burst"} & set(changes)
        if rate_changed:
            self._bucket = None
            if config.rate_limit is not None:
                burst = config.rate_burst or max(1.0, config.rate_limit)
                self._bucket = TokenBucket(config.rate_limit, burst)
        endpoint_keys = {"endpoint_rate_limit", "endpoint_rate_limits"}
        if changes is None or endpoint_keys & set(changes):
            self._endpoint_buckets: dict[str, TokenBucket] = {}
        if changes is None or "random_seed" in changes:
            self._rng = random.Random(config.random_seed)

    # -- the gate ----------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        key = ""
        if scheme.lower() == "bearer":
            key = credential.strip()
        elif scheme.lower() == "basic":
            try:
                key = base64.b64decode(credential).decode().partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                key = credential
        if not key:
            raise StripeHTTPError(401, _NO_KEY_MESSAGE)
        valid = self.config.valid_keys
        if not key.startswith(TEST_KEY_PREFIXES) or (valid is not None and key not in valid):
            raise StripeHTTPError(401, f"Invalid API Key provided: {_mask(key)}")

    def _version(self, request: Request) -> str:
        """[V2] The request's Stripe-Version header, else the account's default version."""
        asked = request.headers.get("stripe-version")
        if asked is None:
            return self.state.api_version
        try:
            return parse_version(asked).name
        except ValueError:
            raise StripeHTTPError(
                400, f"Invalid Stripe API version: {asked}", code="api_version_invalid"
            ) from None

    def _endpoint_bucket(self, endpoint: str) -> TokenBucket | None:
        bucket = self._endpoint_buckets.get(endpoint)
        if bucket is None:
            rate = self.config.endpoint_rate_limits.get(endpoint, self.config.endpoint_rate_limit)
            if rate is None:
                return None
            bucket = self._endpoint_buckets[endpoint] = TokenBucket(rate, max(1.0, rate))
        return bucket

    def _admit(self, endpoint: str) -> None:
        with self._gate:
            config = self.config
            # [L2] An endpoint's own limit also counts against the global one: admit only
            # when both have room, and take from both.
            buckets = [b for b in (self._bucket, self._endpoint_bucket(endpoint)) if b]
            if not all(b.ready() for b in buckets):
                raise StripeHTTPError(
                    429,
                    _RATE_LIMIT_MESSAGE,
                    code="rate_limit",
                    should_retry=config.rate_limit_should_retry,
                )
            for bucket in buckets:
                bucket.take()
            fail = False
            if config.fail_next > 0:
                self.config = dataclasses.replace(config, fail_next=config.fail_next - 1)
                fail = True
            elif config.error_rate > 0:
                fail = self._rng.random() < config.error_rate
            if fail:
                if config.error_statuses:
                    status = self._rng.choice(config.error_statuses)
                    config = dataclasses.replace(config, error_status=status)
                raise _injected(config)

    async def _serve_v1(
        self, request: Request, endpoint: str, handler: Callable[[Request], Response]
    ) -> Response:
        config = self.config
        delay = config.latency_ms
        if config.latency_jitter_ms:
            delay += self._rng.uniform(0, config.latency_jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        version = self.state.api_version
        arrived = time.time()
        try:
            self._authenticate(request)
            version = self._version(request)
            request.state.api_version = version
            self._admit(endpoint)
            response = handler(request)
        except StripeHTTPError as exc:
            response = exc.response()
        self.stats.record(endpoint, response.status_code, arrived)
        response.headers["Request-Id"] = f"req_{uuid.uuid4().hex[:14]}"
        response.headers["Stripe-Version"] = version or ""
        return response

    def _v1(self, path: str, endpoint: str, handler: Callable[[Request], Response]) -> Route:
        async def serve(request: Request) -> Response:
            return await self._serve_v1(request, endpoint, handler)

        return Route(path, serve, methods=["GET"], name=endpoint)

    # -- /v1 handlers ----------------------------------------------------------------------

    def _retrieve_payment_intent(self, request: Request) -> Response:
        params = parse_query(request.query_params.multi_items(), {"expand", "client_secret"})
        expand = _expand(params, {"latest_charge", "latest_charge.refunds"})
        pi_id = request.path_params["id"]
        pi = self.state.get_rendered_pi(
            pi_id,
            expand_charge=bool(expand),
            expand_refunds="latest_charge.refunds" in expand,
            api_version=request.state.api_version,
        )
        if pi is None:
            raise StripeHTTPError(
                404,
                f"No such payment_intent: '{pi_id}'",
                code="resource_missing",
                param="intent",
            )
        return _json(pi)

    def _list_payment_intents(self, request: Request) -> Response:
        params = parse_query(
            request.query_params.multi_items(),
            {"created", "customer", "limit", "starting_after", "ending_before", "expand"},
        )
        expand = _expand(params, {"data.latest_charge", "data.latest_charge.refunds"})
        after, before = _cursors(params)
        try:
            data, has_more = self.state.list_payment_intents(
                limit=_limit(params),
                created=_created(params.get("created")),
                starting_after=after,
                ending_before=before,
                customer=params.get("customer"),
                expand_charge=bool(expand),
                expand_refunds="data.latest_charge.refunds" in expand,
                api_version=request.state.api_version,
            )
        except LookupError as exc:
            raise _missing("payment_intent", params[str(exc.args[0])], str(exc.args[0])) from None
        return _json(_page(data, has_more, "/v1/payment_intents"))

    def _list_events(self, request: Request) -> Response:
        params = parse_query(
            request.query_params.multi_items(),
            {
                "created",
                "type",
                "types",
                "limit",
                "starting_after",
                "ending_before",
                "delivery_success",
                "expand",
            },
        )
        _expand(params, ())
        after, before = _cursors(params)
        types = params.get("types")
        if types is not None and "type" in params:
            raise _bad("You may only specify one of these parameters: type, types.")
        if types is not None and (not isinstance(types, list) or len(types) > 20):
            raise _bad("types must be a list of at most 20 event types.", param="types")
        delivery = params.get("delivery_success")
        if delivery not in (None, "true", "false"):
            raise _bad(f"Invalid boolean: {delivery}", param="delivery_success")
        try:
            data, has_more = self.state.list_events(
                limit=_limit(params),
                created=_created(params.get("created")),
                starting_after=after,
                ending_before=before,
                types=types,
                type_pattern=params.get("type"),
                delivery_success=None if delivery is None else delivery == "true",
                min_created=self._events_min_created(),
            )
        except LookupError as exc:
            raise _missing("event", params[str(exc.args[0])], str(exc.args[0])) from None
        return _json(_page(data, has_more, "/v1/events"))

    def _retrieve_event(self, request: Request) -> Response:
        # [E2] Event payloads are never expanded: `expand` is refused here.
        _expand(parse_query(request.query_params.multi_items(), {"expand"}), ())
        event_id = request.path_params["id"]
        event = self.state.get_rendered_event(event_id, min_created=self._events_min_created())
        if event is None:
            raise _missing("event", event_id, "id", status=404)
        return _json(event)

    def _retrieve_charge(self, request: Request) -> Response:
        expand = _expand(parse_query(request.query_params.multi_items(), {"expand"}), {"refunds"})
        charge_id = request.path_params["id"]
        charge = self.state.get_rendered_charge(
            charge_id, expand_refunds="refunds" in expand, api_version=request.state.api_version
        )
        if charge is None:
            raise _missing("charge", charge_id, "id", status=404)
        return _json(charge)

    def _children(self, kind: str, resource: str, path: str) -> tuple[Callable, Callable]:
        """Retrieve and list handlers of refunds, disputes, early fraud warnings: list filters
        payment_intent, charge, created [R5][D6][F3]; expand charge, payment_intent."""

        def retrieve(request: Request) -> Response:
            params = parse_query(request.query_params.multi_items(), {"expand"})
            expand = _expand(params, {"charge", "payment_intent"})
            child_id = request.path_params["id"]
            found = self.state.get_rendered_child(
                kind, child_id, expand=expand, api_version=request.state.api_version
            )
            if found is None:
                raise _missing(resource, child_id, "id", status=404)
            return _json(found)

        def listing(request: Request) -> Response:
            params = parse_query(
                request.query_params.multi_items(),
                {
                    "created",
                    "charge",
                    "payment_intent",
                    "limit",
                    "starting_after",
                    "ending_before",
                    "expand",
                },
            )
            expand = _expand(params, {"data.charge", "data.payment_intent"})
            after, before = _cursors(params)
            for name in ("charge", "payment_intent"):
                if name in params and not isinstance(params[name], str):
                    raise _bad(f"Invalid string: {params[name]}", param=name)
            try:
                data, has_more = self.state.list_children(
                    kind,
                    limit=_limit(params),
                    created=_created(params.get("created")),
                    starting_after=after,
                    ending_before=before,
                    payment_intent=params.get("payment_intent"),
                    charge=params.get("charge"),
                    expand={e.removeprefix("data.") for e in expand},
                    api_version=request.state.api_version,
                )
            except LookupError as exc:
                param = str(exc.args[0])
                raise _missing(resource, params[param], param) from None
            return _json(_page(data, has_more, path))

        return retrieve, listing

    def _retrieve_v2_event(self, request: Request) -> Response:
        # [T3] The full thin event: what the notification carries plus snapshot_event.
        event_id = request.path_params["id"]
        event = self.state.get_thin_event(event_id)
        if event is None:
            raise _missing("event", event_id, "id", status=404)
        return _json(event)

    def _events_min_created(self) -> int | None:
        days = self.config.event_retention_days
        return None if days is None else self.state.now() - int(days * 86_400)

    async def _unrecognized(self, request: Request) -> Response:
        def handler(request: Request) -> Response:
            raise StripeHTTPError(
                404, f"Unrecognized request URL ({request.method}: {request.url.path})."
            )

        return await self._serve_v1(request, "unrecognized", handler)

    # -- /_test control plane --------------------------------------------------------------

    @staticmethod
    def _write_options(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        """at / record_events / envelope of a control write, and its API version: the body's
        `api_version`, else the control request's own Stripe-Version header [V2]."""
        options: dict[str, Any] = {
            "at": body.pop("at", None),
            "record_events": bool(body.pop("record_events", True)),
            "envelope": body.pop("envelope", None),
        }
        version = body.pop("api_version", None) or request.headers.get("stripe-version")
        if version is not None:
            options["api_version"] = version
        return options

    async def _control_create(self, request: Request) -> Response:
        body = await _body(request, dict)
        options = self._write_options(request, body)
        return _json(_change(self.state.create_payment_intent(**options, **body)))

    async def _control_update(self, request: Request) -> Response:
        body = await _body(request, dict)
        options = self._write_options(request, body)
        pi_id = request.path_params["id"]
        return _json(_change(self.state.update_payment_intent(pi_id, **options, **body)))

    async def _control_get(self, request: Request) -> Response:
        pi_id = request.path_params["id"]
        pi = self.state.payment_intent(pi_id, expand_charge=True)
        if pi is None:
            raise _missing("payment_intent", pi_id, "id", status=404)
        return _json(pi)

    def _control_action(self, method: str, *, versioned: bool = False) -> Callable:
        """POST /_test/<objects>/{id}/<action> -> StripeState.<method>(id, **body)."""

        async def action(request: Request) -> Response:
            body = await _body(request, dict, empty_ok=True)
            options = self._write_options(request, body)
            if not versioned:
                options.pop("api_version", None)
            if method == "touch_payment_intent":
                options.pop("envelope", None)
            call = getattr(self.state, method)
            return _json(_change(call(request.path_params["id"], **options, **body)))

        return action

    async def _control_bulk(self, request: Request) -> Response:
        body = await _body(request, (list, dict))
        record = False
        if isinstance(body, dict):
            record = body.get("record_events", False)
            body = body.get("payment_intents")
            if not isinstance(body, list):
                raise _bad("payment_intents must be a list")
        if not all(isinstance(item, dict) for item in body):
            raise _bad("every payment intent must be an object")
        ids = self.state.seed_payment_intents(body, record_events=bool(record))
        return _json({"count": len(ids), "ids": ids})

    async def _control_add_event(self, request: Request) -> Response:
        body = await _body(request, dict)
        if not isinstance(body.get("type"), str) or not isinstance(body.get("object"), dict):
            raise _bad("an event needs a string 'type' and an 'object'")
        return _json(
            self.state.add_event(
                body["type"], body["object"], body.get("created"), envelope=body.get("envelope")
            )
        )

    async def _control_events(self, request: Request) -> Response:
        types = request.query_params.getlist("type") or None
        return _json({"data": self.state.events(types)})

    async def _control_thin_event(self, request: Request) -> Response:
        return _json(self.state.thin_event(request.path_params["id"]))

    async def _control_stats(self, request: Request) -> Response:
        out = self.stats.snapshot()
        if request.query_params.get("per_second") in ("1", "true"):
            endpoint = request.query_params.get("endpoint")
            window = float(request.query_params.get("window", "1"))
            out["per_second"] = self.stats.per_second(endpoint)
            out["peak"] = self.stats.peak(endpoint, window=window)
            out["peak_admitted"] = self.stats.peak(endpoint, window=window, admitted_only=True)
        return _json(out)

    async def _control_stats_reset(self, request: Request) -> Response:
        self.stats.reset()
        return _json(self.stats.snapshot())

    async def _control_config(self, request: Request) -> Response:
        if request.method == "POST":
            self.configure(**await _body(request, dict))
        return _json({**self.config.to_dict(), **self.state.settings.to_dict()})

    async def _control_reset(self, request: Request) -> Response:
        body = await _body(request, dict, empty_ok=True)
        unknown = set(body) - {"state", "stats", "config"}
        if unknown:
            raise _bad(f"unknown reset options: {sorted(unknown)}")
        self.reset(**{k: bool(v) for k, v in body.items()})
        return _json({"ok": True})

    async def _control_health(self, request: Request) -> Response:
        return _json(
            {
                "ok": True,
                "payment_intents": self.state.count_payment_intents(),
                "events": self.state.count_events(),
                "fixtures": self.state.templates.source,
                "api_version": self.state.api_version,
            }
        )

    def _build_app(self) -> Starlette:
        def control(path: str, endpoint: Callable, methods: list[str]) -> Route:
            async def guarded(request: Request) -> Response:
                try:
                    return await endpoint(request)
                except StripeHTTPError as exc:
                    return exc.response()
                except KeyError as exc:
                    return _missing("object", exc.args[0], "id", status=404).response()
                except (ValueError, TypeError) as exc:
                    return _bad(str(exc)).response()

            return Route(path, guarded, methods=methods)

        refund_get, refund_list = self._children("refund", "refund", "/v1/refunds")
        dispute_get, dispute_list = self._children("dispute", "dispute", "/v1/disputes")
        efw_get, efw_list = self._children(
            "radar.early_fraud_warning", "early_fraud_warning", "/v1/radar/early_fraud_warnings"
        )
        routes = [
            self._v1("/v1/payment_intents", "payment_intents.list", self._list_payment_intents),
            self._v1(
                "/v1/payment_intents/{id}",
                "payment_intents.retrieve",
                self._retrieve_payment_intent,
            ),
            self._v1("/v1/events", "events.list", self._list_events),
            self._v1("/v1/events/{id}", "events.retrieve", self._retrieve_event),
            self._v1("/v1/charges/{id}", "charges.retrieve", self._retrieve_charge),
            self._v1("/v1/refunds", "refunds.list", refund_list),
            self._v1("/v1/refunds/{id}", "refunds.retrieve", refund_get),
            self._v1("/v1/disputes", "disputes.list", dispute_list),
            self._v1("/v1/disputes/{id}", "disputes.retrieve", dispute_get),
            self._v1("/v1/radar/early_fraud_warnings", "radar.early_fraud_warnings.list", efw_list),
            self._v1(
                "/v1/radar/early_fraud_warnings/{id}",
                "radar.early_fraud_warnings.retrieve",
                efw_get,
            ),
            self._v1("/v2/core/events/{id}", "v2.core.events.retrieve", self._retrieve_v2_event),
            Route("/v1/{rest:path}", self._unrecognized, methods=_ALL_METHODS),
            Route("/v2/{rest:path}", self._unrecognized, methods=_ALL_METHODS),
            control("/_test/health", self._control_health, ["GET"]),
            control("/_test/payment_intents", self._control_create, ["POST"]),
            control("/_test/payment_intents/bulk", self._control_bulk, ["POST"]),
            control("/_test/payment_intents/{id}", self._control_update, ["POST"]),
            control("/_test/payment_intents/{id}", self._control_get, ["GET"]),
            control(
                "/_test/payment_intents/{id}/capture",
                self._control_action("capture", versioned=True),
                ["POST"],
            ),
            control(
                "/_test/payment_intents/{id}/cancel",
                self._control_action("cancel", versioned=True),
                ["POST"],
            ),
            control(
                "/_test/payment_intents/{id}/touch",
                self._control_action("touch_payment_intent"),
                ["POST"],
            ),
            control(
                "/_test/payment_intents/{id}/refunds", self._control_action("refund"), ["POST"]
            ),
            control(
                "/_test/payment_intents/{id}/disputes",
                self._control_action("open_dispute"),
                ["POST"],
            ),
            control(
                "/_test/payment_intents/{id}/early_fraud_warnings",
                self._control_action("add_early_fraud_warning"),
                ["POST"],
            ),
            control("/_test/refunds/{id}", self._control_action("update_refund"), ["POST"]),
            control("/_test/disputes/{id}", self._control_action("update_dispute"), ["POST"]),
            control("/_test/events", self._control_add_event, ["POST"]),
            control("/_test/events", self._control_events, ["GET"]),
            control("/_test/events/{id}/thin", self._control_thin_event, ["GET"]),
            control("/_test/stats", self._control_stats, ["GET"]),
            control("/_test/stats/reset", self._control_stats_reset, ["POST"]),
            control("/_test/config", self._control_config, ["GET", "POST"]),
            control("/_test/reset", self._control_reset, ["POST"]),
        ]
        return Starlette(routes=routes)


def _error_status(key: str, value: Any) -> int:
    status = _whole(key, value)
    if not (500 <= status <= 599 or status in (409, 429)):
        raise ValueError(f"{key} must be a 5xx code, 409 or 429")
    return status


def _injected(config: ServerConfig) -> StripeHTTPError:
    """An error the test asked for, shaped as Stripe sends that kind."""
    if config.error_status == 429:
        if config.error_code in (None, "rate_limit"):
            message = _RATE_LIMIT_MESSAGE
        else:
            message = _LOCK_TIMEOUT_MESSAGE  # [L5]
        return StripeHTTPError(
            429,
            message,
            code=config.error_code or "rate_limit",
            should_retry=config.error_should_retry,
        )
    if config.error_status == 409:
        return StripeHTTPError(
            409,
            "Keys for idempotent requests can only be used with the same parameters they were "
            "first used with (injected by the test Stripe server).",
            type="idempotency_error",
            code=config.error_code,
            should_retry=config.error_should_retry,
        )
    return StripeHTTPError(
        config.error_status,
        "An unknown error occurred (injected by the test Stripe server).",
        type="api_error",
        code=config.error_code,
        should_retry=config.error_should_retry,
    )


def create_app(state: StripeState | None = None, **config: Any) -> Starlette:
    """An ASGI app for uvicorn; its FakeStripe is `app.state.fake`."""
    return FakeStripe(state, **config).app


def _mask(key: str) -> str:
    prefixes = ("sk_test_", "rk_test_", "sk_live_", "rk_live_")
    prefix = next((p for p in prefixes if key.startswith(p)), "")
    return f"{prefix}****{key[-4:]}"


def _missing(resource: str, value: Any, param: str, status: int = 400) -> StripeHTTPError:
    return StripeHTTPError(
        status, f"No such {resource}: '{value}'", code="resource_missing", param=param
    )


def _page(data: list[dict[str, Any]], has_more: bool, url: str) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def _change(change: Any) -> dict[str, Any]:
    return {
        "payment_intent": change.payment_intent,
        "events": change.events,
        "event": change.event,
        "refund": change.refund,
        "dispute": change.dispute,
        "early_fraud_warning": change.early_fraud_warning,
        "thin_events": change.thin_events,
    }


async def _body(request: Request, kind: type | tuple[type, ...], *, empty_ok: bool = False) -> Any:
    raw = await request.body()
    if not raw.strip() and empty_ok:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise _bad("request body must be JSON") from None
    if not isinstance(body, kind):
        raise _bad("request body has the wrong JSON type")
    return body
