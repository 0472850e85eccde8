"""The HTTP face of the fake: Stripe's wire format under /v1, a control plane under /_test.

Every /v1 request goes through the same gate, in the order a real client would meet the
failures: latency, then authentication, then the rate limit, then injected 5xx. Control
endpoints skip the gate and are not counted, so seeding or reading stats never disturbs what
a test measures.
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
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .state import StripeState

TEST_KEY_PREFIXES = ("sk_test_", "rk_test_")
MAX_LIMIT = 100
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

_NO_KEY_MESSAGE = (
    "You did not provide an API key. You need to provide your API key in the Authorization "
    "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
    "https://stripe.com/docs/api#authentication for details, or we can help at "
    "https://support.stripe.com/."
)
_RATE_LIMIT_MESSAGE = (
    "Request rate limit exceeded. You can learn more about rate limits here "
    "https://stripe.com/docs/rate-limits."
)


# -- configuration and counters --------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    """Fault knobs, all changeable at runtime.

    rate_limit: requests per second admitted on /v1 (None: unlimited); rate_burst: bucket
    size (None: max(1, rate_limit)). error_rate: probability of an injected 5xx; fail_next:
    fail exactly the next N admitted requests; error_status: the 5xx code used. latency_ms
    (+ uniform latency_jitter_ms) delays every /v1 answer. valid_keys: accepted API keys
    (None: any test-mode key). event_retention_days: hide older events as Stripe's Events
    API does after 30 days (None: keep all, friendlier to seeds with old timestamps).
    """

    rate_limit: float | None = None
    rate_burst: float | None = None
    error_rate: float = 0.0
    error_status: int = 500
    fail_next: int = 0
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    valid_keys: frozenset[str] | None = None
    event_retention_days: float | None = None
    random_seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["valid_keys"] = None if self.valid_keys is None else sorted(self.valid_keys)
        return out

    def with_changes(self, changes: Mapping[str, Any]) -> ServerConfig:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        values = dict(changes)
        for key in ("rate_limit", "rate_burst", "event_retention_days"):
            if key in values and values[key] is not None:
                values[key] = _number(key, values[key], positive=True)
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
            status = _whole("error_status", values["error_status"])
            if not 500 <= status <= 599:
                raise ValueError("error_status must be a 5xx code")
            values["error_status"] = status
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
    """Calls served on /v1, by endpoint and outcome ("200", "401", "404", "429", "5xx"...)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def record(self, endpoint: str, status: int) -> None:
        outcome = "5xx" if status >= 500 else str(status)
        with self._lock:
            self._counts[(endpoint, outcome)] += 1

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

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
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
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": type, "message": message}
        if code is not None:
            self.body["code"] = code
            self.body["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param is not None:
            self.body["param"] = param

    def response(self) -> Response:
        return _json({"error": self.body}, self.status)


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
    """State + faults + stats, and the Starlette app (`.app`) that serves them."""

    def __init__(self, state: StripeState | None = None, **config: Any) -> None:
        self.state = state if state is not None else StripeState()
        self.initial_config = ServerConfig().with_changes(config)
        self.stats = Stats()
        self._gate = threading.Lock()
        self._apply_config(self.initial_config)
        self.app = self._build_app()
        self.app.state.fake = self

    # -- runtime control (also reachable over HTTP under /_test) --------------------------

    def configure(self, **changes: Any) -> ServerConfig:
        with self._gate:
            self._apply_config(self.config.with_changes(changes), changes)
            return self.config

    def reset(self, *, state: bool = True, stats: bool = True, config: bool = True) -> None:
        if state:
            self.state.reset()
        if stats:
            self.stats.reset()
        if config:
            with self._gate:
                self._apply_config(self.initial_config)

    def _apply_config(self, config: ServerConfig, changes: Mapping[str, Any] | None = None):
        self.config = config
        rate_changed = changes is None or {"rate_limit", "rate_burst"} & set(changes)
        if rate_changed:
            self._bucket = None
            if config.rate_limit is not None:
                burst = config.rate_burst or max(1.0, config.rate_limit)
                self._bucket = TokenBucket(config.rate_limit, burst)
        if changes is None or "random_seed" in changes:
            self._rng = random.Random(config.random_seed)

    # -- the /v1 gate ----------------------------------------------------------------------

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

    def _admit(self) -> None:
        with self._gate:
            if self._bucket is not None and not self._bucket.take():
                raise StripeHTTPError(429, _RATE_LIMIT_MESSAGE, code="rate_limit")
            fail = False
            if self.config.fail_next > 0:
                self.config = dataclasses.replace(self.config, fail_next=self.config.fail_next - 1)
                fail = True
            elif self.config.error_rate > 0:
                fail = self._rng.random() < self.config.error_rate
            if fail:
                raise StripeHTTPError(
                    self.config.error_status,
                    "An unknown error occurred (injected by the test Stripe server).",
                    type="api_error",
                )

    async def _serve_v1(
        self, request: Request, endpoint: str, handler: Callable[[Request], Response]
    ) -> Response:
        config = self.config
        delay = config.latency_ms
        if config.latency_jitter_ms:
            delay += self._rng.uniform(0, config.latency_jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        try:
            self._authenticate(request)
            self._admit()
            response = handler(request)
        except StripeHTTPError as exc:
            response = exc.response()
        self.stats.record(endpoint, response.status_code)
        response.headers["Request-Id"] = f"req_{uuid.uuid4().hex[:14]}"
        response.headers["Stripe-Version"] = request.headers.get(
            "stripe-version", self.state.api_version or ""
        )
        return response

    def _v1(self, path: str, endpoint: str, handler: Callable[[Request], Response]) -> Route:
        async def serve(request: Request) -> Response:
            return await self._serve_v1(request, endpoint, handler)

        return Route(path, serve, methods=["GET"], name=endpoint)

    # -- /v1 handlers ----------------------------------------------------------------------

    def _retrieve_payment_intent(self, request: Request) -> Response:
        params = parse_query(request.query_params.multi_items(), {"expand", "client_secret"})
        expand = _expand(params, {"latest_charge"})
        pi_id = request.path_params["id"]
        pi = self.state.get_rendered_pi(pi_id, expand_charge="latest_charge" in expand)
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
        expand = _expand(params, {"data.latest_charge"})
        after, before = _cursors(params)
        try:
            data, has_more = self.state.list_payment_intents(
                limit=_limit(params),
                created=_created(params.get("created")),
                starting_after=after,
                ending_before=before,
                customer=params.get("customer"),
                expand_charge="data.latest_charge" in expand,
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
        _expand(parse_query(request.query_params.multi_items(), {"expand"}), ())
        event_id = request.path_params["id"]
        event = self.state.get_rendered_event(event_id, min_created=self._events_min_created())
        if event is None:
            raise _missing("event", event_id, "id", status=404)
        return _json(event)

    def _retrieve_charge(self, request: Request) -> Response:
        _expand(parse_query(request.query_params.multi_items(), {"expand"}), ())
        charge_id = request.path_params["id"]
        charge = self.state.get_rendered_charge(charge_id)
        if charge is None:
            raise _missing("charge", charge_id, "id", status=404)
        return _json(charge)

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

    async def _control_create(self, request: Request) -> Response:
        body = await _body(request, dict)
        at, record = body.pop("at", None), body.pop("record_events", True)
        change = self.state.create_payment_intent(at=at, record_events=record, **body)
        return _json(_change(change))

    async def _control_update(self, request: Request) -> Response:
        body = await _body(request, dict)
        at, record = body.pop("at", None), body.pop("record_events", True)
        pi_id = request.path_params["id"]
        try:
            change = self.state.update_payment_intent(pi_id, at=at, record_events=record, **body)
        except KeyError:
            raise _missing("payment_intent", pi_id, "id", status=404) from None
        return _json(_change(change))

    async def _control_get(self, request: Request) -> Response:
        pi_id = request.path_params["id"]
        pi = self.state.payment_intent(pi_id, expand_charge=True)
        if pi is None:
            raise _missing("payment_intent", pi_id, "id", status=404)
        return _json(pi)

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
        return _json(self.state.add_event(body["type"], body["object"], body.get("created")))

    async def _control_events(self, request: Request) -> Response:
        types = request.query_params.getlist("type") or None
        return _json({"data": self.state.events(types)})

    async def _control_stats(self, request: Request) -> Response:
        return _json(self.stats.snapshot())

    async def _control_stats_reset(self, request: Request) -> Response:
        self.stats.reset()
        return _json(self.stats.snapshot())

    async def _control_config(self, request: Request) -> Response:
        if request.method == "POST":
            self.configure(**await _body(request, dict))
        return _json(self.config.to_dict())

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
            }
        )

    def _build_app(self) -> Starlette:
        def control(path: str, endpoint: Callable, methods: list[str]) -> Route:
            async def guarded(request: Request) -> Response:
                try:
                    return await endpoint(request)
                except StripeHTTPError as exc:
                    return exc.response()
                except (ValueError, TypeError) as exc:
                    return _bad(str(exc)).response()

            return Route(path, guarded, methods=methods)

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
            Route("/v1/{rest:path}", self._unrecognized, methods=_ALL_METHODS),
            control("/_test/health", self._control_health, ["GET"]),
            control("/_test/payment_intents", self._control_create, ["POST"]),
            control("/_test/payment_intents/bulk", self._control_bulk, ["POST"]),
            control("/_test/payment_intents/{id}", self._control_update, ["POST"]),
            control("/_test/payment_intents/{id}", self._control_get, ["GET"]),
            control("/_test/events", self._control_add_event, ["POST"]),
            control("/_test/events", self._control_events, ["GET"]),
            control("/_test/stats", self._control_stats, ["GET"]),
            control("/_test/stats/reset", self._control_stats_reset, ["POST"]),
            control("/_test/config", self._control_config, ["GET", "POST"]),
            control("/_test/reset", self._control_reset, ["POST"]),
        ]
        return Starlette(routes=routes)


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
