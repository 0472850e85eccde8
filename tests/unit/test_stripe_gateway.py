"""StripeGateway against Stripe's wire format, mocked with ``responses`` (no real I/O)."""

from __future__ import annotations

import copy
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
import stripe

from reconcile.model import DisputeStatus, PaymentStatus
from reconcile.stripe_batch import ReadAhead, fetch_many
from reconcile.stripe_gateway import (
    STRIPE_API_VERSION,
    InvalidStripeId,
    StripeAuthError,
    StripeGateway,
    StripeRequestError,
    StripeUnavailable,
)
from reconcile.stripe_objects import payment_from_stripe

BASE = "http://stripe.test"
API_KEY = "sk_test_51VerySecretKeyDoNotLog"
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "stripe-fixtures" / "fixtures3.json"
T0 = int(datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp())

# Used only when the shared fixtures are not there, so that these tests never skip.
_MINIMAL_PI: dict[str, Any] = {
    "id": "pi_minimal",
    "object": "payment_intent",
    "amount": 1099,
    "amount_received": 0,
    "currency": "usd",
    "created": 1234567890,
    "customer": None,
    "last_payment_error": None,
    "latest_charge": None,
    "livemode": False,
    "metadata": {},
    "receipt_email": None,
    "status": "requires_payment_method",
}
_MINIMAL_CHARGE: dict[str, Any] = {
    "id": "ch_minimal",
    "object": "charge",
    "amount": 100,
    "amount_captured": 100,
    "amount_refunded": 0,
    "billing_details": {"email": None, "name": "Jenny Rosen"},
    "disputed": False,
    "refunded": False,
}
_MINIMAL_EVENT: dict[str, Any] = {
    "id": "evt_minimal",
    "object": "event",
    "api_version": None,
    "created": 1234567890,
    "data": {"object": {}},
    "livemode": False,
    "pending_webhooks": 0,
    "request": {"id": None, "idempotency_key": None},
    "type": "plan.created",
}


def _resources() -> dict[str, Any]:
    try:
        return json.loads(FIXTURES.read_text())["resources"]  # type: ignore[no-any-return]
    except (OSError, ValueError, KeyError):
        return {"payment_intent": _MINIMAL_PI, "charge": _MINIMAL_CHARGE, "event": _MINIMAL_EVENT}


RESOURCES = _resources()


def make_pi(
    pid: str,
    *,
    status: str = "succeeded",
    amount: int = 1000,
    received: int | None = None,
    currency: str = "usd",
    created: int = T0,
    **fields: Any,
) -> dict[str, Any]:
    obj = copy.deepcopy(RESOURCES["payment_intent"])
    obj.update(
        id=pid,
        status=status,
        amount=amount,
        amount_received=(amount if status == "succeeded" else 0) if received is None else received,
        currency=currency,
        created=created,
        last_payment_error=None,
        latest_charge=None,
        metadata={},
    )
    obj.update(fields)
    return obj


def make_charge(**fields: Any) -> dict[str, Any]:
    charge = copy.deepcopy(RESOURCES["charge"])
    charge.update(fields)
    return charge


def make_event(eid: str, created: int, obj: dict[str, Any], type_: str) -> dict[str, Any]:
    event = copy.deepcopy(RESOURCES["event"])
    event.update(id=eid, created=created, type=type_, data={"object": obj})
    return event


def error_body(status: int, code: str | None, message: str, type_: str = "invalid_request_error"):
    return {"error": {"type": type_, "code": code, "message": message}}


# --------------------------------------------------------------------------- a fake Stripe


class FakeStripe:
    """PaymentIntents and Events behind ``responses``: retrieve, list with created filters,
    ``limit`` and ``starting_after``, newest first, like Stripe."""

    def __init__(self, rsps: responses.RequestsMock) -> None:
        self.payments: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.failures: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        rsps.add_callback(
            responses.GET, re.compile(re.escape(BASE) + r"/v1/payment_intents/[^/?]+"), self._get
        )
        rsps.add_callback(
            responses.GET, re.compile(re.escape(BASE) + r"/v1/payment_intents(\?.*)?$"), self._list
        )
        rsps.add_callback(
            responses.GET, re.compile(re.escape(BASE) + r"/v1/events(\?.*)?$"), self._events
        )

    def add(self, *pis: dict[str, Any]) -> None:
        for pi in pis:
            self.payments[pi["id"]] = pi

    @property
    def counts(self) -> Counter[str]:
        return Counter(name for name, _ in self.requests)

    def _record(self, name: str, request: Any) -> dict[str, list[str]]:
        query = parse_qs(urlsplit(request.url).query)
        self.requests.append((name, query))
        return query

    def _failure(self) -> tuple[int, dict[str, str], str] | None:
        if not self.failures:
            return None
        status, body, headers = self.failures.pop(0)
        return status, headers, json.dumps(body)

    def _get(self, request: Any) -> tuple[int, dict[str, str], str]:
        self._record("retrieve", request)
        if failure := self._failure():
            return failure
        pid = urlsplit(request.url).path.rsplit("/", 1)[-1]
        if pid not in self.payments:
            body = error_body(404, "resource_missing", f"No such payment_intent: '{pid}'")
            return 404, {}, json.dumps(body)
        return 200, {}, json.dumps(self.payments[pid])

    @staticmethod
    def _page(
        objects: list[dict[str, Any]], query: dict[str, list[str]], url: str
    ) -> dict[str, Any]:
        def q(name: str) -> str | None:
            return query.get(name, [None])[0]

        gte, lte = q("created[gte]"), q("created[lte]")
        rows = [
            o
            for o in objects
            if (gte is None or o["created"] >= int(gte))
            and (lte is None or o["created"] <= int(lte))
        ]
        rows.sort(key=lambda o: (o["created"], o["id"]), reverse=True)
        types = [v for k, vs in query.items() if k.startswith("types[") for v in vs]
        if types:
            rows = [o for o in rows if o["type"] in types]
        after = q("starting_after")
        if after is not None:
            index = next(i for i, o in enumerate(rows) if o["id"] == after)
            rows = rows[index + 1 :]
        limit = int(q("limit") or 10)
        return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit, "url": url}

    def _list(self, request: Any) -> tuple[int, dict[str, str], str]:
        query = self._record("list", request)
        if failure := self._failure():
            return failure
        page = self._page(list(self.payments.values()), query, "/v1/payment_intents")
        return 200, {}, json.dumps(page)

    def _events(self, request: Any) -> tuple[int, dict[str, str], str]:
        query = self._record("events", request)
        return 200, {}, json.dumps(self._page(self.events, query, "/v1/events"))


class CountingLimiter:
    def __init__(self) -> None:
        self.acquired = 0

    def acquire(self) -> None:
        self.acquired += 1


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def fake(rsps: responses.RequestsMock) -> FakeStripe:
    return FakeStripe(rsps)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def hook_calls() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def make_gateway(
    sleeps: list[float], hook_calls: list[tuple[str, str]]
) -> Callable[..., StripeGateway]:
    def make(**kwargs: Any) -> StripeGateway:
        options: dict[str, Any] = {
            "api_base": BASE,
            "limiter": CountingLimiter(),
            "sleep": sleeps.append,  # retries wait for nothing in unit tests
            "rng": random.Random(7),
            "on_request": lambda endpoint, outcome: hook_calls.append((endpoint, outcome)),
        }
        options.update(kwargs)
        return StripeGateway(API_KEY, **options)

    return make


# --------------------------------------------------------------------------- retrieve


def test_retrieve_returns_the_payment_with_its_latest_charge_expanded(fake, make_gateway, rsps):
    charge = make_charge(
        amount_refunded=0, billing_details={"email": "ada@example.com", "name": "Ada Lovelace"}
    )
    fake.add(make_pi("pi_ok", amount=2500, latest_charge=charge))
    gateway = make_gateway()

    payment = gateway.retrieve("pi_ok")

    assert payment is not None
    assert (payment.id, payment.status, payment.amount) == ("pi_ok", PaymentStatus.SUCCEEDED, 2500)
    assert payment.customer_email == "ada@example.com"
    assert payment.customer_name == "Ada Lovelace"  # the customer index learns the name
    assert fake.requests == [("retrieve", {"expand[0]": ["latest_charge"]})]
    assert rsps.calls[0].request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert gateway.snapshot() == {"calls": 1, "rate_limited": 0, "errors": 0}
    assert gateway.limiter.acquired == 1


def test_retrieve_answers_none_when_stripe_has_no_such_payment(fake, make_gateway, hook_calls):
    gateway = make_gateway()

    assert gateway.retrieve("pi_gone") is None
    assert gateway.snapshot() == {"calls": 1, "rate_limited": 0, "errors": 0}
    assert hook_calls == [("payment_intents.retrieve", "not_found")]


def test_retrieves_one_event_as_a_plain_dict_or_none_when_missing(rsps, make_gateway):
    event = {"id": "evt_1", "object": "event", "type": "payment_intent.succeeded"}
    rsps.add(responses.GET, f"{BASE}/v1/events/evt_1", json=event)
    rsps.add(
        responses.GET,
        f"{BASE}/v1/events/evt_gone",
        status=404,
        json={"error": {"type": "invalid_request_error", "code": "resource_missing"}},
    )
    gateway = make_gateway()

    assert gateway.retrieve_event("evt_1") == event
    assert gateway.retrieve_event("evt_gone") is None
    with pytest.raises(ValueError):
        gateway.retrieve_event("../payment_intents")
    assert gateway.snapshot()["calls"] == 2


def test_a_404_other_than_resource_missing_is_an_error_not_a_missing_payment(rsps, make_gateway):
    rsps.add(
        responses.GET,
        re.compile(re.escape(BASE) + r"/v1/payment_intents/.*"),
        status=404,
        json=error_body(404, None, "Unrecognized request URL (GET: /v1/payment_intentz/x)."),
    )

    with pytest.raises(StripeRequestError) as info:
        make_gateway().retrieve("pi_x")
    assert info.value.http_status == 404


def test_a_rejected_api_key_raises_auth_error_that_does_not_show_the_key(
    fake, make_gateway, hook_calls
):
    masked = "sk_test_" + "*" * 20 + API_KEY[-4:]
    body = error_body(401, None, f"Invalid API Key provided: {masked}")
    fake.failures = [(401, body, {}), (401, body, {})]
    gateway = make_gateway()

    with pytest.raises(StripeAuthError) as info:
        gateway.retrieve("pi_1")

    exc = info.value
    for text in (str(exc), repr(exc), repr(gateway), str(exc.args)):
        assert API_KEY not in text
        assert "sk_test_" not in text
        assert API_KEY[-4:] not in text
    assert exc.__cause__ is None and exc.__context__ is None
    assert exc.http_status == 401
    assert gateway.snapshot()["calls"] == 1  # never retried
    assert hook_calls == [("payment_intents.retrieve", "error")]


def test_a_key_without_the_needed_permissions_is_an_auth_error_too(fake, make_gateway):
    message = "The provided key 'rk_test_****DoNotLog' does not have the required permissions"
    fake.failures = [(403, error_body(403, None, message), {})]

    with pytest.raises(StripeAuthError) as info:
        make_gateway().retrieve("pi_1")

    assert info.value.http_status == 403
    assert "rk_test" not in str(info.value) and "DoNotLog" not in str(info.value)


def test_an_empty_payment_id_is_refused_rather_than_listing_everything(fake, make_gateway):
    with pytest.raises(ValueError):
        make_gateway().retrieve("")
    assert fake.requests == []


def test_an_empty_api_key_is_refused_before_any_request(rsps):
    with pytest.raises(StripeAuthError):
        StripeGateway("", api_base=BASE, limiter=CountingLimiter())
    assert len(rsps.calls) == 0


def test_a_429_twice_then_200_is_retried_and_counted_without_really_sleeping(
    fake, make_gateway, sleeps, hook_calls
):
    fake.add(make_pi("pi_1"))
    limited = error_body(429, "rate_limit", "Too many requests")
    fake.failures = [(429, limited, {}), (429, limited, {})]
    gateway = make_gateway(backoff_initial=0.5, backoff_max=8)
    started = time.monotonic()

    payment = gateway.retrieve("pi_1")

    assert payment is not None and payment.id == "pi_1"
    assert gateway.snapshot() == {"calls": 3, "rate_limited": 2, "errors": 0}
    assert gateway.limiter.acquired == 3  # every attempt is paced, retries included
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0  # exponential, jittered
    assert time.monotonic() - started < 1.0
    assert [outcome for _, outcome in hook_calls] == ["rate_limited", "rate_limited", "ok"]


def test_a_retry_after_header_lengthens_the_wait(fake, make_gateway, sleeps):
    fake.add(make_pi("pi_1"))
    fake.failures = [(429, error_body(429, "rate_limit", "slow down"), {"Retry-After": "3"})]

    make_gateway(backoff_initial=0.1).retrieve("pi_1")

    assert sleeps == [3.0]


def test_a_500_forever_raises_stripe_unavailable_after_max_attempts(
    rsps, make_gateway, sleeps, hook_calls
):
    rsps.add(
        responses.GET,
        re.compile(re.escape(BASE) + r"/v1/payment_intents/.*"),
        status=500,
        json=error_body(500, None, "An unknown error occurred", "api_error"),
    )
    gateway = make_gateway(max_attempts=4)

    with pytest.raises(StripeUnavailable) as info:
        gateway.retrieve("pi_1")

    assert info.value.attempts == 4
    assert info.value.outcome == "server_error"
    assert info.value.__context__ is None
    assert gateway.snapshot() == {"calls": 4, "rate_limited": 0, "errors": 4}
    assert len(sleeps) == 3
    assert hook_calls == [("payment_intents.retrieve", "server_error")] * 4


def test_a_proxy_error_page_that_is_not_json_is_retried_as_a_server_error(rsps, make_gateway):
    url = re.compile(re.escape(BASE) + r"/v1/payment_intents/.*")
    rsps.add(responses.GET, url, status=502, body="<html>" + "Bad gateway " * 100 + "</html>")
    rsps.add(responses.GET, url, json=make_pi("pi_1"))
    gateway = make_gateway()

    assert gateway.retrieve("pi_1") is not None
    assert gateway.snapshot() == {"calls": 2, "rate_limited": 0, "errors": 1}


def test_connection_failures_are_retried(rsps, make_gateway, hook_calls):
    url = re.compile(re.escape(BASE) + r"/v1/payment_intents/.*")
    rsps.add(responses.GET, url, body=requests.ConnectionError("connection refused"))
    rsps.add(responses.GET, url, json=make_pi("pi_1"))
    gateway = make_gateway()

    assert gateway.retrieve("pi_1") is not None
    assert [outcome for _, outcome in hook_calls] == ["connection_error", "ok"]
    assert gateway.snapshot()["calls"] == 2


def test_retries_stop_before_the_total_time_budget_is_spent(rsps, make_gateway):
    rsps.add(
        responses.GET,
        re.compile(re.escape(BASE) + r"/v1/payment_intents/.*"),
        status=503,
        json=error_body(503, None, "unavailable", "api_error"),
    )
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    gateway = make_gateway(
        max_attempts=100, max_elapsed=10.0, backoff_initial=1.0, backoff_max=4.0,
        sleep=sleep, clock=lambda: now[0],
    )  # fmt: skip

    with pytest.raises(StripeUnavailable) as info:
        gateway.retrieve("pi_1")

    assert sum(slept) < 10.0
    assert 3 <= info.value.attempts < 100
    assert gateway.snapshot()["calls"] == info.value.attempts


def test_a_400_is_not_retried(fake, make_gateway, sleeps):
    fake.failures = [(400, error_body(400, "parameter_invalid_integer", "Invalid integer"), {})]
    gateway = make_gateway()

    with pytest.raises(StripeRequestError) as info:
        gateway.retrieve("pi_1")

    assert (info.value.http_status, info.value.code) == (400, "parameter_invalid_integer")
    assert "HTTP 400 parameter_invalid_integer: Invalid integer" in str(info.value)
    assert gateway.snapshot() == {"calls": 1, "rate_limited": 0, "errors": 1}
    assert sleeps == []


def test_a_409_that_stripe_marks_retryable_is_retried(fake, make_gateway):
    fake.add(make_pi("pi_1"))
    fake.failures = [
        (409, error_body(409, "lock_timeout", "locked"), {"Stripe-Should-Retry": "true"})
    ]
    gateway = make_gateway()

    assert gateway.retrieve("pi_1") is not None
    assert gateway.snapshot()["calls"] == 2


def test_a_broken_metrics_hook_does_not_fail_the_call(fake, make_gateway):
    fake.add(make_pi("pi_1"))

    def hook(endpoint: str, outcome: str) -> None:
        raise RuntimeError("metrics down")

    assert make_gateway(on_request=hook).retrieve("pi_1") is not None


def test_without_an_api_base_requests_go_to_the_real_stripe_host(rsps):
    rsps.add(
        responses.GET,
        re.compile(r"https://api\.stripe\.com/v1/payment_intents/pi_real.*"),
        json=make_pi("pi_real"),
    )
    gateway = StripeGateway(API_KEY, api_base=None, limiter=CountingLimiter())

    assert gateway.retrieve("pi_real") is not None


# --------------------------------------------------------------------------- lists


def test_list_created_follows_the_starting_after_chain_across_pages(fake, make_gateway):
    fake.add(*(make_pi(f"pi_{i:04d}", created=T0 + i) for i in range(250)))
    fake.add(make_pi("pi_before", created=T0 - 1), make_pi("pi_after", created=T0 + 1000))
    gateway = make_gateway()
    since = datetime.fromtimestamp(T0, UTC)

    payments = list(gateway.list_created(since, since + timedelta(seconds=249, microseconds=5)))

    assert [p.id for p in payments] == [f"pi_{i:04d}" for i in reversed(range(250))]
    assert gateway.snapshot()["calls"] == 3
    queries = [q for _, q in fake.requests]
    for q in queries:
        assert q["created[gte]"] == [str(T0)] and q["created[lte]"] == [str(T0 + 249)]
        assert q["limit"] == ["100"] and q["expand[0]"] == ["data.latest_charge"]
    assert "starting_after" not in queries[0]
    assert queries[1]["starting_after"] == ["pi_0150"]
    assert queries[2]["starting_after"] == ["pi_0050"]


def test_a_429_in_the_middle_of_paging_retries_that_page_only(fake, make_gateway):
    fake.add(*(make_pi(f"pi_{i:04d}", created=T0 + i) for i in range(150)))
    gateway = make_gateway()
    pages = gateway.list_created(
        datetime.fromtimestamp(T0, UTC), datetime.fromtimestamp(T0 + 200, UTC)
    )
    first = [next(pages) for _ in range(100)]
    fake.failures = [(429, error_body(429, "rate_limit", "Too many requests"), {})]

    rest = list(pages)

    assert len({p.id for p in first + rest}) == 150
    assert gateway.snapshot() == {"calls": 3, "rate_limited": 1, "errors": 0}
    assert fake.requests[-1][1]["starting_after"] == ["pi_0050"]


# --------------------------------------------------------------------------- fetch_many


def make_slim(pid: str, created: int) -> dict[str, Any]:
    """A small PaymentIntent: for tests with thousands, where full fixtures would be slow."""
    return dict(_MINIMAL_PI, id=pid, status="succeeded", amount_received=1099, created=created)


def ledger_time(pi: dict[str, Any], lag: float = 2.0) -> datetime:
    """The ledger records its inflight entry just after creating the PaymentIntent."""
    return datetime.fromtimestamp(pi["created"] + lag, UTC)


def test_fetch_many_reads_a_dense_batch_with_a_few_list_calls(fake, make_gateway):
    pis = [make_pi(f"pi_{i:04d}", created=T0 + i * 7) for i in range(250)]
    fake.add(*pis)
    gateway = make_gateway()

    result = fetch_many(gateway, [(pi["id"], ledger_time(pi)) for pi in pis])

    assert set(result) == {pi["id"] for pi in pis}
    assert all(p is not None and p.id == pid for pid, p in result.items())
    assert fake.counts == {"list": 3}
    assert gateway.snapshot()["calls"] == 3


def test_fetch_many_retrieves_sparse_ids_one_by_one(fake, make_gateway):
    pis = [make_pi(f"pi_sparse_{i}", created=T0 + i * 86_400) for i in range(5)]
    fake.add(*pis)

    result = fetch_many(make_gateway(), [(pi["id"], ledger_time(pi)) for pi in pis])

    assert all(result[pi["id"]] is not None for pi in pis)
    assert fake.counts == {"retrieve": 5}


def test_fetch_many_falls_back_to_retrieve_for_what_the_list_window_did_not_hold(
    fake, make_gateway
):
    pis = [make_pi(f"pi_{i:04d}", created=T0 + i * 5) for i in range(150)]
    late = make_pi("pi_late", created=T0 - 86_400)  # the ledger's time is a day off
    fake.add(*pis, late)
    items = [(pi["id"], ledger_time(pi)) for pi in pis]
    items += [
        ("pi_late", datetime.fromtimestamp(T0 + 300, UTC)),
        ("pi_unknown", ledger_time(pis[9])),
    ]

    result = fetch_many(make_gateway(), items)

    assert result["pi_late"] is not None and result["pi_late"].id == "pi_late"
    assert result["pi_unknown"] is None
    assert all(result[pi["id"]] is not None for pi in pis)
    assert fake.counts == {"list": 2, "retrieve": 2}


def test_fetch_many_answers_every_requested_id_once_even_when_repeated(fake, make_gateway):
    pi = make_pi("pi_1")
    fake.add(pi)

    result = fetch_many(make_gateway(), [("pi_1", ledger_time(pi)), ("pi_1", ledger_time(pi))])

    assert list(result) == ["pi_1"]
    assert fake.counts == {"retrieve": 1}


def test_fetch_many_of_nothing_makes_no_call(fake, make_gateway):
    assert fetch_many(make_gateway(), []) == {}
    assert fake.requests == []


def test_fetch_many_stops_listing_when_stripe_is_far_denser_than_the_batch(fake, make_gateway):
    # 20,000 PaymentIntents in 2 hours on Stripe; the batch wants 8 of them, about a minute
    # apart: listing their windows would take dozens of pages.
    fake.add(*(make_slim(f"pi_other_{i:05d}", T0 + i * 36 // 100) for i in range(20_000)))
    wanted = [make_pi(f"pi_w{i}", created=T0 + 3600 + i * 60) for i in range(8)]
    fake.add(*wanted)

    result = fetch_many(make_gateway(), [(pi["id"], ledger_time(pi)) for pi in wanted])

    assert all(result[pi["id"]] is not None for pi in wanted)
    assert fake.counts["list"] <= 1  # at most one page spent learning the density
    assert sum(fake.counts.values()) <= len(wanted) + 1


def test_fetch_many_lists_a_dense_burst_even_when_a_sparse_chain_links_it_to_others(
    fake, make_gateway
):
    # Stripe: 2.8 payments a second for 2 hours.  The batch: every payment of a 3-minute
    # burst (an outage's worth), and a chain of ids 4 minutes apart around it, whose windows
    # overlap each other and the burst's.
    others = [make_slim(f"pi_o{i:05d}", T0 + i * 36 // 100) for i in range(20_000)]
    fake.add(*others)
    burst = [pi for pi in others if T0 + 3600 <= pi["created"] < T0 + 3780]
    chain = [make_slim(f"pi_c{i:02d}", T0 + 120 + i * 240 + 1) for i in range(29)]
    fake.add(*chain)
    wanted = burst + chain

    result = fetch_many(make_gateway(), [(pi["id"], ledger_time(pi)) for pi in wanted])

    assert all(result[pi["id"]] is not None for pi in wanted)
    calls = sum(fake.counts.values())
    # the burst's ~500 ids in about a dozen pages, the chain's 29 one by one
    assert calls <= 45, fake.counts
    assert fake.counts["retrieve"] <= len(chain)


def test_fetch_many_lists_the_dense_part_and_retrieves_the_sparse_part(fake, make_gateway):
    dense = [make_pi(f"pi_d{i:03d}", created=T0 + i * 3) for i in range(300)]
    sparse = [make_pi(f"pi_s{i}", created=T0 + 50_000 + i * 20_000) for i in range(4)]
    fake.add(*dense, *sparse)

    result = fetch_many(make_gateway(), [(pi["id"], ledger_time(pi)) for pi in dense + sparse])

    assert all(p is not None for p in result.values()) and len(result) == 304
    assert fake.counts == {"list": 3, "retrieve": 4}


def test_fetch_many_calls_per_payment_for_10000_dense_payments_over_3_hours(fake, make_gateway):
    """The figure the reconciliation target asks for: Stripe calls per reconciled payment
    when every Stripe payment of the window is in the batch."""
    rng = random.Random(3)
    span = 3 * 3600
    pis = [make_slim(f"pi_{i:05d}", T0 + rng.randrange(span)) for i in range(10_000)]
    fake.add(*pis)
    gateway = make_gateway()

    result = fetch_many(
        gateway, [(pi["id"], ledger_time(pi, lag=rng.uniform(0, 30))) for pi in pis]
    )

    per_payment = gateway.snapshot()["calls"] / len(pis)
    print(f"fetch_many dense: {gateway.snapshot()['calls']} calls, {per_payment:.4f} per payment")
    assert all(p is not None for p in result.values())
    assert fake.counts["retrieve"] == 0
    assert per_payment <= 0.0102  # 100 full pages, plus at most 2 for the window's edges


# --------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("status", [s.value for s in PaymentStatus])
def test_every_stripe_status_converts_to_its_payment_status(status):
    assert payment_from_stripe(make_pi("pi_1", status=status)).status == PaymentStatus(status)


def test_an_unknown_status_is_unknown_rather_than_guessed():
    payment = payment_from_stripe(make_pi("pi_1", status="requires_magic"))
    assert payment.status is None
    assert payment.problems == (
        "payment_intent.status: expected a PaymentIntent status, got 'requires_magic'",
    )


def test_zero_decimal_currency_amounts_are_kept_as_they_are():
    payment = payment_from_stripe(make_pi("pi_jpy", amount=5000, currency="jpy"))

    assert (payment.amount, payment.amount_received, payment.currency) == (5000, 5000, "JPY")


def test_created_becomes_an_aware_utc_datetime():
    created = payment_from_stripe(make_pi("pi_1", created=T0)).created

    assert created == datetime.fromtimestamp(T0, UTC) and created.tzinfo is not None


def test_a_refunded_and_disputed_charge_shows_on_the_payment():
    charge = make_charge(amount=3000, amount_captured=3000, amount_refunded=1200, disputed=True)
    dispute = {"id": "du_1", "status": "needs_response", "amount": 3000, "currency": "usd"}
    payment = payment_from_stripe(
        make_pi("pi_1", amount=3000, latest_charge=charge), disputes=[dispute]
    )

    assert payment.amount_refunded == 1200
    assert payment.disputed is True
    assert payment.disputes is not None and payment.disputes[0].amount == 3000


def test_an_unexpanded_latest_charge_says_nothing_of_refunds():
    payment = payment_from_stripe(make_pi("pi_1", latest_charge="ch_123"))

    assert (payment.amount_refunded, payment.disputes) == (None, None)


def test_last_payment_error_becomes_its_code_or_message():
    declined = {"type": "card_error", "code": "card_declined", "message": "Your card was declined."}
    message_only = {"type": "card_error", "message": "Something went wrong"}

    assert payment_from_stripe(make_pi("a", last_payment_error=declined)).last_payment_error == (
        "card_declined"
    )
    assert payment_from_stripe(
        make_pi("b", last_payment_error=message_only)
    ).last_payment_error == ("Something went wrong")
    assert payment_from_stripe(make_pi("c")).last_payment_error is None
    # the fixture's own error carries only a type: still a failed attempt
    bare = payment_from_stripe(make_pi("d", last_payment_error={"type": "idempotency_error"}))
    assert bare.last_payment_error == "idempotency_error"


def test_customer_and_email_come_from_wherever_stripe_has_them():
    expanded = make_pi("a", customer={"id": "cus_1", "object": "customer", "email": "c@x.io"})
    plain = make_pi("b", customer="cus_2", receipt_email="r@x.io")
    from_charge = make_pi(
        "c", customer=None, latest_charge=make_charge(billing_details={"email": "b@x.io"})
    )

    assert (
        payment_from_stripe(expanded).customer,
        payment_from_stripe(expanded).customer_email,
    ) == (
        "cus_1",
        "c@x.io",
    )
    assert (payment_from_stripe(plain).customer, payment_from_stripe(plain).customer_email) == (
        "cus_2",
        "r@x.io",
    )
    assert payment_from_stripe(from_charge).customer_email == "b@x.io"
    assert payment_from_stripe(from_charge).customer is None


def test_metadata_and_livemode_are_carried_over():
    payment = payment_from_stripe(
        make_pi("pi_1", metadata={"ledger_destination": "bal_1", "n": 3}, livemode=True)
    )

    assert payment.metadata == {"ledger_destination": "bal_1", "n": "3"}
    assert payment.livemode is True


def test_a_stripe_object_converts_like_its_dict():
    obj = stripe.StripeObject.construct_from(make_pi("pi_1", metadata={"k": "v"}), "sk_test_x")

    assert payment_from_stripe(obj) == payment_from_stripe(make_pi("pi_1", metadata={"k": "v"}))


# --------------------------------------------------------------------------- events


def test_events_come_oldest_first_across_pages_and_windows(fake, make_gateway):
    now = T0 + 10 * 3600
    created = sorted(random.Random(5).sample(range(T0 + 1, now), 450))
    fake.events = [
        make_event(f"evt_{i:04d}", c, make_pi(f"pi_{i}"), "payment_intent.succeeded")
        for i, c in enumerate(created)
    ]
    fake.events.append(make_event("evt_old", T0, make_pi("pi_old"), "payment_intent.succeeded"))
    gateway = make_gateway(wall_clock=lambda: float(now))

    events = list(gateway.events_since(T0, types=["payment_intent.succeeded"]))

    assert [e["id"] for e in events] == [f"evt_{i:04d}" for i in range(450)]
    assert all(isinstance(e, dict) and isinstance(e["data"]["object"], dict) for e in events)
    queries = [q for name, q in fake.requests if name == "events"]
    assert all(q["types[0]"] == ["payment_intent.succeeded"] for q in queries)
    assert all(int(q["created[gte]"][0]) > T0 for q in queries)
    assert queries[-1].get("created[lte]") is None  # the last window is open-ended


def test_events_stop_between_windows_once_the_page_limit_is_reached(fake, make_gateway):
    now = T0 + 10 * 3600
    fake.events = [
        make_event(f"evt_{i:04d}", T0 + 1 + i * 60, {}, "payment_intent.succeeded")
        for i in range(600)
    ]
    gateway = make_gateway(wall_clock=lambda: float(now))

    events = list(gateway.events_since(T0, limit_pages=2, window=3600))

    # the oldest events, in order, with no gap: a cursor at the last one skips nothing
    assert [e["id"] for e in events] == [f"evt_{i:04d}" for i in range(len(events))]
    assert 0 < len(events) < 600
    assert gateway.snapshot()["calls"] <= 3


def test_events_without_a_cursor_start_at_the_30_day_retention(fake, make_gateway):
    now = T0 + 40 * 86_400
    fake.events = [
        make_event("evt_too_old", now - 31 * 86_400, {}, "charge.refunded"),
        make_event("evt_recent", now - 86_400, {}, "charge.refunded"),
    ]
    gateway = make_gateway(wall_clock=lambda: float(now))

    events = list(gateway.events_since(None))

    assert [e["id"] for e in events] == ["evt_recent"]
    first = next(q for name, q in fake.requests if name == "events")
    assert int(first["created[gte]"][0]) == now - 30 * 86_400 + 1
    assert gateway.snapshot()["calls"] < 12  # empty windows grow quickly


# --------------------------------------------------------------------------- issue 9


def test_every_request_pins_the_stripe_version(fake, make_gateway, rsps):
    fake.add(make_pi("pi_v", latest_charge=make_charge()))
    make_gateway().retrieve("pi_v")
    make_gateway(api_version="2024-06-20").retrieve("pi_v")

    versions = [call.request.headers["Stripe-Version"] for call in rsps.calls]
    assert versions == [STRIPE_API_VERSION, "2024-06-20"]


@pytest.mark.parametrize("status", [429, 500, 503])
def test_stripe_should_retry_false_is_never_retried(fake, make_gateway, sleeps, status):
    fake.add(make_pi("pi_n"))
    fake.failures = [
        (status, error_body(status, "lock_timeout", "x"), {"Stripe-Should-Retry": "false"})
    ]
    gateway = make_gateway()

    with pytest.raises(StripeUnavailable) as raised:
        gateway.retrieve("pi_n")
    assert raised.value.attempts == 1
    assert fake.counts["retrieve"] == 1 and sleeps == []


def test_each_request_draws_on_its_endpoints_budget_and_the_global_one(fake, make_gateway):
    fake.add(make_pi("pi_e"))
    per_endpoint: dict[str, CountingLimiter] = {}

    def endpoint(name: str) -> CountingLimiter:
        return per_endpoint.setdefault(name, CountingLimiter())

    gateway = make_gateway(endpoint_limiter=endpoint)
    gateway.retrieve("pi_e")
    list(
        gateway.list_created(
            datetime.fromtimestamp(T0 - 10, UTC), datetime.fromtimestamp(T0 + 10, UTC)
        )
    )

    assert {k: v.acquired for k, v in per_endpoint.items()} == {
        "payment_intents.retrieve": 1,
        "payment_intents.list": 1,
    }
    assert gateway.limiter.acquired == 2


@pytest.mark.parametrize(
    "bad", ["../x", "pi_x?limit=1", "pi_x/../../v1/customers", "pi x", "", "evt_1", "pi_\u00e9"]
)
def test_a_payment_id_that_would_change_the_url_is_never_sent(fake, make_gateway, bad):
    with pytest.raises(InvalidStripeId):
        make_gateway().retrieve(bad)
    assert fake.requests == []


@pytest.mark.parametrize("bad", ["../x", "evt_x?limit=1", "evt_1/../2", "evt_\u00e9", "pi_1"])
def test_an_event_id_that_would_change_the_url_is_never_sent(rsps, make_gateway, bad):
    with pytest.raises(InvalidStripeId):
        make_gateway().retrieve_event(bad)
    assert len(rsps.calls) == 0


def test_a_disputed_charges_disputes_are_listed_and_read(fake, make_gateway, rsps):
    fake.add(make_pi("pi_d", latest_charge=make_charge(disputed=True)))
    dispute = {
        "id": "du_1",
        "object": "dispute",
        "status": "needs_response",
        "amount": 1000,
        "currency": "usd",
        "reason": "fraudulent",
        "payment_intent": "pi_d",
        "evidence_details": {"due_by": T0 + 86400},
    }
    rsps.add(
        responses.GET,
        re.compile(re.escape(BASE) + r"/v1/disputes\?.*payment_intent=pi_d"),
        json={"object": "list", "data": [dispute], "has_more": False, "url": "/v1/disputes"},
    )
    payment = make_gateway().retrieve("pi_d")

    assert payment is not None and payment.disputes is not None
    (read,) = payment.disputes
    assert (read.id, read.status, read.reason) == (
        "du_1",
        DisputeStatus.NEEDS_RESPONSE,
        "fraudulent",
    )
    assert read.evidence_due_by == datetime.fromtimestamp(T0 + 86400, UTC)


# --------------------------------------------------------------------------- ReadAhead


def _read_all(reader: ReadAhead, items: list[tuple[str, datetime]], first: int = 300):
    """What the sweep does: hand over chunks (a small first one), take batches of 100."""
    chunks = [items[:first]] + [items[i : i + 2000] for i in range(first, len(items), 2000)]
    out: dict[str, Any] = {}
    queued = 0
    for start in range(0, len(items), 100):
        while queued < len(chunks) and reader.pending < 2:
            reader.submit(chunks[queued])
            queued += 1
        out.update(reader.take(items[start : start + 100]))
    return out


def test_read_ahead_lists_each_stretch_of_a_dense_backlog_once(fake, make_gateway):
    rng = random.Random(5)
    span = 3 * 3600
    pis = sorted(
        (make_slim(f"pi_{i:05d}", T0 + rng.randrange(span)) for i in range(10_000)),
        key=lambda pi: pi["created"],
    )
    fake.add(*pis)
    gateway = make_gateway()
    items = [(pi["id"], ledger_time(pi, lag=rng.uniform(0, 30))) for pi in pis]
    items.sort(key=lambda item: item[1])

    with ReadAhead(gateway) as reader:
        result = _read_all(reader, items)

    assert all(result[pi["id"]] is not None for pi in pis)
    assert fake.counts["retrieve"] == 0
    assert gateway.snapshot()["calls"] / len(pis) <= 0.011


def test_read_ahead_retrieves_what_no_list_brought(fake, make_gateway):
    pis = [make_slim(f"pi_{i:04d}", T0 + i * 2) for i in range(900)]
    late = make_slim("pi_late", T0 - 86_400)  # the ledger's time is a day off
    fake.add(*pis, late)
    items = [(pi["id"], ledger_time(pi)) for pi in pis]
    items.insert(400, ("pi_late", ledger_time(pis[399])))
    items.insert(500, ("pi_unknown", ledger_time(pis[499])))

    with ReadAhead(make_gateway()) as reader:
        result = _read_all(reader, items)

    assert result["pi_late"] is not None and result["pi_late"].id == "pi_late"
    assert result["pi_unknown"] is None
    assert all(result[pi["id"]] is not None for pi in pis)
    assert fake.counts["retrieve"] == 2


def test_read_ahead_reads_again_a_state_older_than_max_age(fake, make_gateway):
    pis = [make_slim(f"pi_{i:03d}", T0 + i * 3) for i in range(50)]
    fake.add(*pis)
    now = [0.0]
    items = [(pi["id"], ledger_time(pi)) for pi in pis]
    with ReadAhead(make_gateway(), max_age=60, clock=lambda: now[0]) as reader:
        reader.submit(items)
        reader.take(items[:1])  # the chunk is read and resolved at t=0
        now[0] = 61.0
        before = sum(fake.counts.values())
        result = reader.take(items[1:])

    assert all(result[pi["id"]] is not None for pi in pis[1:])
    assert sum(fake.counts.values()) > before  # stale: read again, not served from memory


def test_fetch_many_answers_a_payment_stripe_refuses_to_read_as_unknown_and_reads_the_rest(
    fake, make_gateway
):
    pis = [make_pi(f"pi_sparse_{i}", created=T0 + i * 86_400) for i in range(3)]
    fake.add(*pis)
    fake.failures.append(
        (400, error_body(400, "parameter_invalid_string", "Invalid string: pi_sparse_0"), {})
    )

    result = fetch_many(make_gateway(), [(pi["id"], ledger_time(pi)) for pi in pis])

    refused = result["pi_sparse_0"]
    assert refused is not None and refused.status is None and refused.amount_received is None
    assert "Stripe refused to read it" in refused.problems[0]
    assert "HTTP 400" in refused.problems[0]
    assert result["pi_sparse_1"] is not None and result["pi_sparse_1"].status is not None
    assert result["pi_sparse_2"] is not None and result["pi_sparse_2"].status is not None
