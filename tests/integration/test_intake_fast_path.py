"""The intake's hot route as a plain ASGI callable (worker/intake/app.py ``Webhook``): it
refuses what the Starlette route refused, takes bodies however they are framed, stores the
body exactly as Stripe sent it, and keeps the 2xx-means-committed promise when the
connection under a grouped-commit writer dies."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import httpx
import pytest
import stripe
from sqlalchemy import Engine, text

from tests.bench.intake import serve_in_thread, with_app_name
from tests.integration.test_intake import (
    SECRET,
    RecordingQueue,
    count_rows,
    load,
    pi_event,
    post,
    settings_for,
)
from tests.stripe_server.webhook import signed_webhook
from worker.db import make_engine
from worker.intake import create_app
from worker.intake.signature import SignatureChecker

pytestmark = pytest.mark.integration


@pytest.fixture
def recorder(pg_schema: str) -> Iterator[RecordingQueue]:
    q = RecordingQueue(pg_schema)
    yield q
    q.close()


@pytest.fixture
def serve(pg_engine: Engine, pg_schema: str) -> Iterator[Callable[..., httpx.Client]]:
    with contextlib.ExitStack() as stack:

        def make(
            enqueue: Callable[[str], None],
            *,
            batch: int = 16,
            engine: Engine | None = None,
            **kw: Any,
        ) -> httpx.Client:
            app = create_app(
                settings_for(pg_schema, **kw),
                engine=engine or pg_engine,
                enqueue=enqueue,
                batch=batch,
            )
            url = stack.enter_context(serve_in_thread(app))
            client = stack.enter_context(httpx.Client(base_url=url, timeout=15))
            client.app = app  # type: ignore[attr-defined]
            return client

        yield make


def signed_bytes(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    """Headers for an arbitrary body signed as Stripe signs (HMAC-SHA256 of "{t}.{body}")."""
    t = int(time.time()) if timestamp is None else timestamp
    sig = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": f"t={t},v1={sig}",
    }


def stored_text(engine: Engine, event_id: str) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(
                text("SELECT payload::text FROM recon_inbox WHERE event_id = :id"), {"id": event_id}
            ).scalar_one()
        )


def raw_exchange(client: httpx.Client, request: bytes) -> bytes:
    """Send ``request`` as it is over a fresh connection; whatever comes back until close."""
    address = (client.base_url.host, client.base_url.port)
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- framing


def test_a_chunked_body_under_the_limit_is_stored_like_any_other(
    serve, recorder, pg_engine
) -> None:
    client = serve(recorder, webhook_max_bytes=65536)
    event = pi_event()
    body, headers = signed_webhook(event, SECRET)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 100):
            yield body[i : i + 100]

    response = client.post("/webhooks/stripe", content=chunks(), headers=headers)

    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False}
    assert client.app.state.publisher.flush(10)
    assert recorder.ids == [event["id"]]
    assert load(pg_engine, event["id"]) is not None


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(
    serve, recorder, pg_engine
) -> None:
    client = serve(recorder, webhook_max_bytes=256)
    body, headers = signed_webhook(pi_event(), SECRET)
    assert len(body) > 256

    response = client.post("/webhooks/stripe", content=body, headers=headers)

    assert response.status_code == 413
    assert response.json() == {"error": "body larger than 256 bytes"}
    assert count_rows(pg_engine) == 0


def test_a_malformed_content_length_is_refused_with_400_and_nothing_stored(
    serve, recorder, pg_engine
) -> None:
    client = serve(recorder)
    body, headers = signed_webhook(pi_event(), SECRET)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n{head}Content-Length: 12abc\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body

    answer = raw_exchange(client, request)

    assert answer.startswith(b"HTTP/1.1 400")
    assert count_rows(pg_engine) == 0


def test_a_client_that_leaves_mid_body_stores_nothing_and_the_intake_carries_on(
    serve, recorder, pg_engine
) -> None:
    client = serve(recorder)
    body, headers = signed_webhook(pi_event(), SECRET)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body[:100]
    address = (client.base_url.host, client.base_url.port)
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request)
        time.sleep(0.2)

    event = pi_event()
    after = post(client, *signed_webhook(event, SECRET))

    assert after.status_code == 200
    assert count_rows(pg_engine) == 1
    assert recorder.ids == [event["id"]]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_on_the_webhook_path_answer_405_as_before(serve, recorder, method) -> None:
    client = serve(recorder)
    assert client.request(method, "/webhooks/stripe").status_code == 405


# --------------------------------------------------------------------------- content


def test_the_content_type_does_not_decide_a_correctly_signed_event_is_stored(
    serve, recorder, pg_engine
) -> None:
    # The signature is what authenticates a delivery and the body is parsed as JSON
    # whatever the header says (as before): a proxy that rewrites Content-Type must not
    # turn Stripe's events into refusals that it retries for three days.
    client = serve(recorder)
    event = pi_event()
    body, headers = signed_webhook(event, SECRET)

    response = post(client, body, {**headers, "Content-Type": "text/plain"})

    assert response.status_code == 200
    assert load(pg_engine, event["id"]) is not None


def test_a_signed_form_encoded_body_is_refused_as_not_an_event(serve, recorder, pg_engine) -> None:
    client = serve(recorder)
    body = b"id=evt_123&type=payment_intent.succeeded"
    headers = {**signed_bytes(body), "Content-Type": "application/x-www-form-urlencoded"}

    response = post(client, body, headers)

    assert response.status_code == 400
    assert response.json()["error"].startswith("not a Stripe event: body is not JSON")
    assert count_rows(pg_engine) == 0


def test_a_signed_body_that_is_not_utf8_is_refused(serve, recorder, pg_engine) -> None:
    client = serve(recorder)
    body = json.dumps(pi_event()).encode()[:-1] + b'"\xff"}'

    response = post(client, body, signed_bytes(body))

    assert response.status_code == 400
    assert response.json() == {"error": "body is not UTF-8"}
    assert count_rows(pg_engine) == 0


@pytest.mark.parametrize(
    "tail",
    [b', "x": NaN}', b', "x": Infinity}', b', "x": "\\ud800"}'],
    ids=["nan", "inf", "surrogate"],
)
def test_json_that_is_not_strict_json_is_refused_even_when_signed(
    serve, recorder, pg_engine, tail
) -> None:
    client = serve(recorder)
    body = json.dumps(pi_event()).encode()[:-1] + tail

    response = post(client, body, signed_bytes(body))

    assert response.status_code == 400
    assert response.json()["error"].startswith("not a Stripe event")
    assert count_rows(pg_engine) == 0


@pytest.mark.parametrize("batch", [0, 16], ids=["one_commit_per_webhook", "grouped_commits"])
def test_the_inbox_keeps_the_body_exactly_as_stripe_sent_it(
    serve, recorder, pg_engine, batch
) -> None:
    client = serve(recorder, batch=batch)
    event = pi_event()
    body, headers = signed_webhook(event, SECRET)  # pretty-printed, as Stripe sends

    assert post(client, body, headers).status_code == 200

    assert stored_text(pg_engine, event["id"]) == body.decode()


@pytest.mark.parametrize("batch", [0, 16], ids=["one_commit_per_webhook", "grouped_commits"])
def test_an_integer_past_64_bits_keeps_every_digit_in_the_inbox(
    serve, recorder, pg_engine, batch
) -> None:
    # orjson reads such a number as a float: the stored payload must be the body, never
    # the parsed object encoded again.
    client = serve(recorder, batch=batch)
    event = pi_event()
    event["data"]["object"]["metadata"] = {"n": 123456789012345678901234567890}
    body, headers = signed_webhook(event, SECRET)

    assert post(client, body, headers).status_code == 200

    row = load(pg_engine, event["id"])
    assert row is not None
    assert row.payload["data"]["object"]["metadata"]["n"] == 123456789012345678901234567890


def test_a_payload_postgres_json_functions_refuse_is_still_stored_on_its_own(
    serve, recorder, pg_engine
) -> None:
    # json_to_recordset refuses a \u0000 escape that the json column itself accepts: the
    # grouped INSERT fails, the batch is stored row by row, nothing is lost or refused.
    client = serve(recorder, batch=16)
    event = pi_event()
    event["data"]["object"]["metadata"] = {"note": "a\u0000b"}
    body, headers = signed_webhook(event, SECRET)
    assert b"\\u0000" in body

    response = post(client, body, headers)

    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False}
    row = load(pg_engine, event["id"])
    assert row is not None and row.payload["data"]["object"]["metadata"]["note"] == "a\x00b"
    assert recorder.ids == [event["id"]]


# --------------------------------------------------------------------------- signature


def test_the_secret_that_matched_last_is_tried_first() -> None:
    payload = json.dumps(pi_event())
    header = stripe.WebhookSignature.generate_signature_header(payload, "whsec_old")
    checker = SignatureChecker(["whsec_new", "whsec_old"], 300)
    real = stripe.WebhookSignature.verify_header
    with mock.patch.object(stripe.WebhookSignature, "verify_header", side_effect=real) as calls:
        assert checker.check(payload, header) == "ok"
        first = calls.call_count
        assert checker.check(payload, header) == "ok"
        second = calls.call_count - first
    assert (first, second) == (2, 1)


def test_stale_and_bad_signatures_are_still_told_apart() -> None:
    payload = json.dumps(pi_event())
    old = stripe.WebhookSignature.generate_signature_header(
        payload, "whsec_a", int(time.time()) - 1000
    )
    checker = SignatureChecker(["whsec_a"], 300)
    assert checker.check(payload, old) == "stale"
    assert checker.check(payload, "t=1,v1=00") == "bad"
    assert checker.check(payload, "garbage") == "bad"


# --------------------------------------------------------------------------- failures


def test_a_writer_whose_kept_connection_is_killed_reconnects_and_loses_nothing(
    serve, recorder, pg_engine, pg_schema, pg_admin
) -> None:
    app_name = "recon-test-writer"
    engine = make_engine(with_app_name(pg_schema, app_name), pool_size=4, max_overflow=0)
    client = serve(recorder, batch=16, engine=engine)
    try:
        first = pi_event()
        assert post(client, *signed_webhook(first, SECRET)).status_code == 200
        # A writer keeps its connection while it is busy: kill them under its feet.
        with pg_admin.connect() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = :name"
                ),
                {"name": app_name},
            ).scalar_one()
        assert killed >= 1

        events = [pi_event() for _ in range(4)]
        answers = [post(client, *signed_webhook(e, SECRET)).json() for e in events]
    finally:
        engine.dispose()

    assert answers == [{"received": True, "duplicate": False}] * len(events)
    for event in [first, *events]:
        assert load(pg_engine, event["id"]) is not None
    assert sorted(recorder.ids) == sorted(e["id"] for e in [first, *events])
    assert all(recorder.visible)


def test_the_intake_runs_on_the_compiled_http_parser_and_event_loop() -> None:
    from worker.intake.serve import compiled_stack

    assert compiled_stack() == ("uvloop", "httptools")
