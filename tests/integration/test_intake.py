"""Webhook intake against the real PostgreSQL: what is answered 2xx is committed, what is
rejected is stored nowhere, and the queue only ever hears about new rows after their commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from reconcile import inbox
from reconcile.tables import inbox as inbox_table
from tests.bench.intake import serve_in_thread
from tests.stripe_server.webhook import signed_webhook
from worker.celery_app import make_app
from worker.db import make_engine
from worker.intake import create_app
from worker.queue import enqueue_event
from worker.settings import Settings

pytestmark = pytest.mark.integration

SECRET = "whsec_test_current_0123456789"
OLD_SECRET = "whsec_test_previous_9876543210"


def pi_event(
    pi: str | None = None, *, status: str = "succeeded", event_type: str | None = None
) -> dict[str, Any]:
    pi = pi or "pi_" + uuid.uuid4().hex[:20]
    return {
        "id": "evt_" + uuid.uuid4().hex[:24],
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type or f"payment_intent.{status}",
        "data": {
            "object": {
                "id": pi,
                "object": "payment_intent",
                "amount": 2000,
                "amount_received": 2000 if status == "succeeded" else 0,
                "currency": "usd",
                "status": status,
                "created": int(time.time()) - 60,
                "metadata": {},
            }
        },
    }


def settings_for(url: str, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "broker_url": None,
        "redis_url": None,
        "stripe_webhook_secret": f"{SECRET},{OLD_SECRET}",
    }
    values.update(kw)
    return Settings(**values)


class RecordingQueue:
    """A fake enqueue that checks, from a connection of its own, that the row it is told
    about is already committed (an enqueue inside the transaction would not see it)."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url, pool_size=2, max_overflow=0)
        self.calls: list[Any] = []
        self.visible: list[bool] = []
        self.lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        with self.engine.connect() as conn:
            row = inbox.load(conn, args[0]) if args and isinstance(args[0], str) else None
        with self.lock:
            self.calls.append((args, kwargs))
            self.visible.append(row is not None and row.status == "pending")

    @property
    def ids(self) -> list[str]:
        return [a[0] for a, _ in self.calls]

    def close(self) -> None:
        self.engine.dispose()


def count_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(inbox_table)).scalar_one())


def load(engine: Engine, event_id: str) -> inbox.InboxRow | None:
    with engine.connect() as conn:
        return inbox.load(conn, event_id)


@pytest.fixture
def recorder(pg_schema: str) -> Iterator[RecordingQueue]:
    q = RecordingQueue(pg_schema)
    yield q
    q.close()


@pytest.fixture(params=[0, 16], ids=["one_commit_per_webhook", "grouped_commits"])
def batch(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def client_for(pg_engine: Engine, pg_schema: str) -> Iterator[Callable[..., httpx.Client]]:
    """An intake served by uvicorn on a free port, and an HTTP client aimed at it."""
    with contextlib.ExitStack() as stack:

        def make(
            enqueue: Callable[[str], None],
            *,
            batch: int = 0,
            engine: Engine | None = None,
            **kw: Any,
        ) -> httpx.Client:
            settings = settings_for(kw.pop("database_url", pg_schema), **kw)
            app = create_app(settings, engine=engine or pg_engine, enqueue=enqueue, batch=batch)
            url = stack.enter_context(serve_in_thread(app))
            client = stack.enter_context(httpx.Client(base_url=url, timeout=15))
            client.app = app  # type: ignore[attr-defined]
            return client

        yield make


def post(client: httpx.Client, body: bytes, headers: dict[str, str]) -> httpx.Response:
    response = client.post("/webhooks/stripe", content=body, headers=headers)
    # The queue hears about a webhook after its answer, from the publisher thread.
    assert client.app.state.publisher.flush(10)  # type: ignore[attr-defined]
    return response


# --------------------------------------------------------------------------- accepted


def test_a_signed_webhook_is_stored_and_its_id_alone_enqueued_after_the_commit(
    client_for, recorder, pg_engine, batch
) -> None:
    client = client_for(recorder, batch=batch)
    event = pi_event()
    body, headers = signed_webhook(event, SECRET)

    response = post(client, body, headers)

    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False}
    row = load(pg_engine, event["id"])
    assert row is not None
    assert (row.status, row.type, row.source) == ("pending", event["type"], "webhook")
    assert row.payment_id == event["data"]["object"]["id"]
    assert row.payload == event
    assert recorder.calls == [((event["id"],), {})]
    assert recorder.visible == [True]


def test_a_redelivered_event_answers_duplicate_and_is_not_enqueued_again(
    client_for, recorder, pg_engine, batch
) -> None:
    client = client_for(recorder, batch=batch)
    event = pi_event()
    first = post(client, *signed_webhook(event, SECRET))
    # Stripe re-signs every attempt: a new timestamp, the same event.
    second = post(client, *signed_webhook(event, SECRET, timestamp=int(time.time()) + 1))

    assert first.json() == {"received": True, "duplicate": False}
    assert second.status_code == 200
    assert second.json() == {"received": True, "duplicate": True}
    assert recorder.ids == [event["id"]]
    assert count_rows(pg_engine) == 1


def test_concurrent_deliveries_store_each_event_once_and_enqueue_each_once(
    client_for, recorder, pg_engine, batch
) -> None:
    client = client_for(recorder, batch=batch)
    events = [pi_event() for _ in range(20)]
    deliveries = [signed_webhook(e, SECRET) for e in events for _ in range(3)]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=client.base_url, timeout=15) as ac:
            return await asyncio.gather(
                *(ac.post("/webhooks/stripe", content=b, headers=h) for b, h in deliveries)
            )

    responses = asyncio.run(send_all())
    assert client.app.state.publisher.flush(10)

    assert [r.status_code for r in responses] == [200] * len(deliveries)
    assert sum(not r.json()["duplicate"] for r in responses) == len(events)
    assert sorted(recorder.ids) == sorted(e["id"] for e in events)
    assert all(recorder.visible)
    assert count_rows(pg_engine) == len(events)


def test_a_webhook_signed_with_the_previous_secret_is_accepted_during_rotation(
    client_for, recorder, pg_engine
) -> None:
    client = client_for(recorder)
    event = pi_event()

    response = post(client, *signed_webhook(event, OLD_SECRET))

    assert response.status_code == 200
    assert load(pg_engine, event["id"]) is not None


def test_a_header_carrying_signatures_for_several_secrets_passes_on_any_match(
    client_for, recorder, pg_engine
) -> None:
    client = client_for(recorder)
    event = pi_event()
    response = post(client, *signed_webhook(event, ["whsec_somebody_else", SECRET]))
    assert response.status_code == 200


def test_an_event_of_an_unknown_type_is_stored_as_ignored_and_not_enqueued(
    client_for, recorder, pg_engine
) -> None:
    client = client_for(recorder)
    event = pi_event(event_type="customer.created")
    event["data"]["object"] = {"id": "cus_123", "object": "customer"}

    response = post(client, *signed_webhook(event, SECRET))

    assert response.status_code == 200
    row = load(pg_engine, event["id"])
    assert row is not None and row.status == "ignored"
    assert recorder.calls == []


@pytest.mark.parametrize("batch", [0, 16], ids=["one_commit_per_webhook", "grouped_commits"])
def test_on_sqlite_a_webhook_is_stored_once_and_a_redelivery_is_a_duplicate(
    sqlite_engine, tmp_path, batch
) -> None:
    recorder = RecordingQueue(str(sqlite_engine.url))
    app = create_app(
        settings_for(str(sqlite_engine.url)), engine=sqlite_engine, enqueue=recorder, batch=batch
    )
    events = [pi_event() for _ in range(5)]
    try:
        with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=15) as http:

            async def send_all() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=url, timeout=15) as ac:
                    return await asyncio.gather(
                        *(
                            ac.post("/webhooks/stripe", content=b, headers=h)
                            for b, h in (signed_webhook(e, SECRET) for e in events + events)
                        )
                    )

            responses = asyncio.run(send_all())
            assert app.state.publisher.flush(10)
            assert http.get("/readyz").status_code == 200
    finally:
        recorder.close()

    assert [r.status_code for r in responses] == [200] * 10
    assert sorted(r.json()["duplicate"] for r in responses) == [False] * 5 + [True] * 5
    assert count_rows(sqlite_engine) == 5
    assert sorted(recorder.ids) == sorted(e["id"] for e in events)
    assert all(recorder.visible)


# --------------------------------------------------------------------------- rejected


def test_a_webhook_signed_with_an_unknown_secret_is_refused_and_stored_nowhere(
    client_for, recorder, pg_engine
) -> None:
    client = client_for(recorder)
    response = post(client, *signed_webhook(pi_event(), "whsec_attacker"))

    assert response.status_code == 400
    assert "bad signature" in response.json()["error"]
    assert count_rows(pg_engine) == 0
    assert recorder.calls == []


def test_a_webhook_signed_longer_ago_than_the_tolerance_is_refused_as_stale(
    client_for, recorder, pg_engine
) -> None:
    client = client_for(recorder, webhook_tolerance="300s")
    old = int(time.time()) - 301

    response = post(client, *signed_webhook(pi_event(), SECRET, timestamp=old))

    assert response.status_code == 400
    assert "stale timestamp" in response.json()["error"]
    assert count_rows(pg_engine) == 0


def test_a_body_altered_after_signing_is_refused(client_for, recorder, pg_engine) -> None:
    client = client_for(recorder)
    body, headers = signed_webhook(pi_event(), SECRET)
    response = post(client, body.replace(b"2000", b"9000", 1), headers)
    assert response.status_code == 400
    assert count_rows(pg_engine) == 0


def test_a_request_without_a_signature_is_refused(client_for, recorder, pg_engine) -> None:
    client = client_for(recorder)
    body, headers = signed_webhook(pi_event(), SECRET)
    del headers["Stripe-Signature"]
    response = post(client, body, headers)
    assert response.status_code == 400
    assert response.json() == {"error": "missing Stripe-Signature header"}


def test_a_signed_body_that_is_not_a_stripe_event_is_refused(
    client_for, recorder, pg_engine
) -> None:
    client = client_for(recorder)
    response = post(client, *signed_webhook({"id": "ch_123", "object": "charge"}, SECRET))
    assert response.status_code == 400
    assert response.json()["error"].startswith("not a Stripe event")
    assert count_rows(pg_engine) == 0


def test_a_body_over_the_size_limit_is_refused_with_413_and_not_stored(
    client_for, recorder, pg_engine
) -> None:
    client = client_for(recorder, webhook_max_bytes=4096)
    event = pi_event()
    event["data"]["object"]["metadata"] = {"padding": "x" * 5000}

    response = post(client, *signed_webhook(event, SECRET))

    assert response.status_code == 413
    assert count_rows(pg_engine) == 0


def test_without_any_webhook_secret_configured_the_intake_answers_500_never_2xx(
    client_for, recorder, pg_engine
) -> None:
    client = client_for(recorder, stripe_webhook_secret="")
    response = post(client, *signed_webhook(pi_event(), SECRET))
    assert response.status_code == 500
    assert "secret not configured" in response.json()["error"]
    assert count_rows(pg_engine) == 0


# --------------------------------------------------------------------------- failures


DEAD_DB = "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=1"


@pytest.mark.parametrize("batch", [0, 16], ids=["one_commit_per_webhook", "grouped_commits"])
def test_with_the_database_down_the_intake_answers_503_so_stripe_retries(
    client_for, recorder, batch
) -> None:
    dead = make_engine(DEAD_DB, pool_size=1, max_overflow=0, pool_timeout=2)
    client = client_for(recorder, batch=batch, engine=dead, database_url=DEAD_DB)
    response = post(client, *signed_webhook(pi_event(), SECRET))
    ready = client.get("/readyz")
    dead.dispose()

    assert response.status_code == 503
    assert response.json() == {"error": "database unavailable"}
    assert recorder.calls == []
    assert ready.status_code == 503
    assert ready.json()["failed"] == ["database"]


def test_with_the_broker_down_the_webhook_is_still_accepted_and_left_pending(
    client_for, pg_engine
) -> None:
    down = make_app(
        settings_for("sqlite://", broker_url="redis://127.0.0.1:1/15"), set_as_current=False
    )
    client = client_for(lambda event_id: enqueue_event(event_id, app=down))
    before = client.get("/metrics").text
    event = pi_event()

    started = time.monotonic()
    response = post(client, *signed_webhook(event, SECRET))
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False}
    row = load(pg_engine, event["id"])
    assert row is not None and row.status == "pending" and row.enqueued_at is None
    assert elapsed < 5, "a dead broker must not hold Stripe's request for long"
    after = client.get("/metrics").text
    assert (
        _sample(after, "recon_enqueue_failures_total")
        == _sample(before, "recon_enqueue_failures_total") + 1
    )


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics output")


# --------------------------------------------------------------------------- probes


def test_health_readiness_and_metrics_endpoints_answer(client_for, recorder, pg_engine) -> None:
    client = client_for(recorder)
    post(client, *signed_webhook(pi_event(), SECRET))
    post(client, *signed_webhook(pi_event(), "whsec_wrong"))

    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": "ok", "broker": "in-process"}
    text = client.get("/metrics").text
    for name in (
        "recon_webhooks_received_total",
        "recon_inbox_lag_seconds",
        "recon_inbox_unprocessed",
        "recon_actions_total",
        "recon_tickets_opened_total",
        "recon_stripe_requests_total",
        "recon_runs_total",
        "recon_task_duration_seconds",
        "recon_enqueue_failures_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert (
        'recon_webhooks_received_total{outcome="accepted",type="payment_intent.succeeded"}' in text
    )
    assert 'recon_webhooks_received_total{outcome="bad_signature",type="unknown"}' in text
    # One stored event still pending: the inbox gauges are measured at scrape time.
    assert _sample(text, "recon_inbox_unprocessed") == 1


def test_readiness_checks_the_redis_broker_when_one_is_configured(
    client_for, recorder, redis_client
) -> None:
    from tests.conftest import REDIS_URL

    up = client_for(recorder, broker_url=REDIS_URL).get("/readyz")
    down = client_for(recorder, broker_url="redis://127.0.0.1:1/15").get("/readyz")
    assert up.status_code == 200 and up.json()["broker"] == "ok"
    assert down.status_code == 503 and down.json()["failed"] == ["broker"]


# --------------------------------------------------------------------------- chunked


def test_a_chunked_body_is_cut_off_at_the_size_limit_while_a_normal_one_is_stored(
    client_for, pg_engine, recorder
) -> None:
    http = client_for(recorder, webhook_max_bytes=8192)
    event = pi_event()
    ok = http.post("/webhooks/stripe", **_kw(*signed_webhook(event, SECRET)))

    big = copy.deepcopy(pi_event())
    big["data"]["object"]["metadata"] = {"padding": "x" * 20000}
    body, headers = signed_webhook(big, SECRET)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 1024):
            yield body[i : i + 1024]

    # A generator body goes out chunked: no Content-Length to refuse up front.
    too_big = http.post("/webhooks/stripe", content=chunks(), headers=headers)
    assert http.app.state.publisher.flush(10)
    health = http.get("/healthz")

    assert ok.status_code == 200 and ok.json() == {"received": True, "duplicate": False}
    assert too_big.status_code == 413
    assert health.status_code == 200
    assert load(pg_engine, event["id"]) is not None
    assert load(pg_engine, big["id"]) is None
    assert recorder.ids == [event["id"]]


def _kw(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    return {"content": body, "headers": headers}


def test_signed_webhook_helper_output_is_what_the_official_library_verifies() -> None:
    import stripe

    body, headers = signed_webhook(pi_event(), SECRET)
    assert stripe.WebhookSignature.verify_header(
        body.decode(), headers["Stripe-Signature"], SECRET, 300
    )
    assert json.loads(body)["object"] == "event"


def test_a_dead_broker_is_tried_once_then_skipped_briefly_every_id_counted_as_not_enqueued() -> (
    None
):
    from worker.intake.publisher import Publisher

    tried: list[str] = []

    def dead(event_id: str) -> None:
        tried.append(event_id)
        raise ConnectionError("broker down")

    before = _counter("recon_enqueue_failures_total")
    publisher = Publisher(send_one=dead)
    for n in range(5):
        publisher.put(f"evt_{n}")
    assert publisher.flush(10)
    publisher.close()

    assert tried == ["evt_0"] or tried[0] == "evt_0" and len(tried) < 5
    assert _counter("recon_enqueue_failures_total") == before + 5


def _counter(name: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name) or 0.0


@pytest.mark.e2e
def test_with_two_worker_processes_every_scrape_counts_the_webhooks_of_both(
    pg_schema, pg_engine
) -> None:
    from tests.bench.intake import SECRET as BENCH_SECRET
    from tests.bench.intake import serve_subprocess

    events = [pi_event() for _ in range(12)]
    server = serve_subprocess(pg_schema, workers=2, batch=0, secret=BENCH_SECRET)
    with server as (host, _), httpx.Client(base_url=f"http://{host}", timeout=15) as http:
        for event in events:
            # A fresh connection each time, so both processes get some of them.
            body, headers = signed_webhook(event, BENCH_SECRET)
            response = http.post(
                "/webhooks/stripe", content=body, headers={**headers, "Connection": "close"}
            )
            assert response.status_code == 200
        scrapes = [http.get("/metrics", headers={"Connection": "close"}).text for _ in range(4)]
    label = 'recon_webhooks_received_total{outcome="accepted",type="payment_intent.succeeded"}'
    assert [_sample(text, label) for text in scrapes] == [12.0] * 4
    assert count_rows(pg_engine) == 12
