"""Hostile input against the real intake (issue 14): each kind answered with the right
status, nothing stored that should not be, nothing acknowledged lost, the process up and
its memory bounded (conftest checks the last two after every test).

Input that can never become valid answers 4xx and says why in
``recon_webhooks_rejected_total{reason}`` (a bounded set); 503 is kept for a database that
is really down, so that Stripe's retries and on-call are never pointed at PostgreSQL for a
malformed event.
"""

from __future__ import annotations

import contextlib
import gzip
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.hostile.harness import (
    BODY_TIMEOUT,
    HEADER_TIMEOUT,
    MAX_BYTES,
    MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
    OLD_SECRET,
    SECRET,
    WEBHOOK,
    Intake,
    body_of,
    closed_within,
    event,
    new_id,
    pi_object,
    sign,
    status_of,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@contextlib.contextmanager
def refused(intake: Intake, status: int, reason: str) -> Iterator[list[httpx.Response]]:
    """Around a request: it got ``status``, stored nothing, and counted ``reason``."""
    before_rows = intake.inbox_count()
    before = intake.rejections(reason)
    answers: list[httpx.Response] = []
    yield answers
    for response in answers:
        assert response.status_code == status, (response.status_code, response.text)
        assert response.json().get("error"), response.text
    assert intake.inbox_count() == before_rows, "a refused webhook was stored"
    assert intake.rejections(reason) >= before + max(1, len(answers)), (
        f"recon_webhooks_rejected_total{{reason={reason!r}}} did not count it"
    )


def accepted(intake: Intake, response: httpx.Response, event_id: str) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    row = intake.inbox_row(event_id)
    assert row is not None, "answered 2xx but not in the inbox"
    return row


# --------------------------------------------------------------------------- method, path


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD"])
def test_any_method_but_post_on_the_webhook_path_is_405_and_stores_nothing(
    intake: Intake, method: str
) -> None:
    before = intake.inbox_count()
    body = body_of(event())
    response = intake.request(
        method, content=b"" if method == "HEAD" else body, headers={"Stripe-Signature": sign(body)}
    )
    assert response.status_code == 405
    assert intake.inbox_count() == before


@pytest.mark.parametrize(
    "path",
    [
        b"/webhooks/stripe/",
        b"/webhooks/Stripe",
        b"/webhooks/../webhooks/stripe",
        b"/webhooks/stripe/../../etc/passwd",
        b"/webhooks/%2e%2e/%2e%2e/etc/passwd",
        b"//webhooks/stripe",
        b"/webhooks/stripe%00",
        b"/webhooks/stripe%2f..",
    ],
)
def test_a_signed_event_posted_to_another_path_is_refused_and_stored_nowhere(
    intake: Intake, path: bytes
) -> None:
    """Sent as raw bytes: an HTTP client would remove the dot segments itself."""
    evt = event()
    body = body_of(evt)
    answer = intake.raw(
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: evil.example\r\nStripe-Signature: "
        + sign(body).encode()
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )
    # 404 (or 400 for what is no path at all), never a 307 to a URL built from the
    # request's Host header.
    assert status_of(answer) in (400, 404), answer[:300]
    assert b"evil.example" not in answer
    assert intake.inbox_row(evt["id"]) is None


# --------------------------------------------------------------------------- signatures


def test_a_webhook_without_a_signature_is_400(intake: Intake) -> None:
    with refused(intake, 400, "no_signature") as answers:
        answers.append(intake.send_event(event(), signature=None))


def test_a_webhook_signed_with_a_wrong_secret_is_400(intake: Intake) -> None:
    body = body_of(event())
    with refused(intake, 400, "bad_signature") as answers:
        answers.append(intake.post(body, sign(body, "whsec_not_ours_at_all")))


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("garbage", "bad_signature"),
        ("t=,v1=", "bad_signature"),
        ("t=abc,v1=00", "bad_signature"),
        ("v1=" + "0" * 64, "bad_signature"),
        ("t=1,t=2,v1=zz", "bad_signature"),
        ("t=99999999999999999999999999,v1=00", "future"),
        ("t=-1,v1=00", "bad_signature"),
    ],
)
def test_a_malformed_signature_header_is_400(intake: Intake, header: str, reason: str) -> None:
    with refused(intake, 400, reason) as answers:
        answers.append(intake.send_event(event(), signature=header))


def test_a_signature_header_that_is_not_ascii_is_400(intake: Intake) -> None:
    body = body_of(event())
    request = (
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Stripe-Signature: t=1,v1=\xff\xfe\x00\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )
    before = intake.inbox_count()
    assert status_of(intake.raw(request)) == 400
    assert intake.inbox_count() == before


def test_a_body_changed_after_signing_is_400(intake: Intake) -> None:
    evt = event()
    header = sign(body_of(evt))
    evt["data"]["object"]["amount_received"] = 1
    with refused(intake, 400, "bad_signature") as answers:
        answers.append(intake.post(body_of(evt), header))


def test_a_replayed_delivery_is_answered_duplicate_and_stored_once(intake: Intake) -> None:
    evt = event(type="customer.created")
    body = body_of(evt)
    header = sign(body)
    first = intake.post(body, header)
    again = intake.post(body, header)
    accepted(intake, first, evt["id"])
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert len(intake.rows("SELECT 1 FROM recon_inbox WHERE event_id = :i", i=evt["id"])) == 1


def test_a_replayed_signature_on_another_body_is_400(intake: Intake) -> None:
    header = sign(body_of(event()))
    with refused(intake, 400, "bad_signature") as answers:
        answers.append(intake.post(body_of(event()), header))


def test_a_delivery_signed_longer_ago_than_the_tolerance_is_400_stale(intake: Intake) -> None:
    body = body_of(event())
    with refused(intake, 400, "stale") as answers:
        answers.append(intake.post(body, sign(body, timestamp=time.time() - 3600)))


def test_a_signature_timestamp_far_in_the_future_is_400(intake: Intake) -> None:
    body = body_of(event())
    with refused(intake, 400, "future") as answers:
        answers.append(intake.post(body, sign(body, timestamp=time.time() + 86400 * 365)))


def test_during_secret_rotation_either_secret_is_accepted(intake: Intake) -> None:
    for secret in (OLD_SECRET, SECRET):
        evt = event(type="customer.updated")
        body = body_of(evt)
        accepted(intake, intake.post(body, sign(body, secret)), evt["id"])


def test_a_header_with_many_signatures_is_400_unless_one_matches(intake: Intake) -> None:
    evt = event(type="customer.updated")
    body = body_of(evt)
    good = sign(body)
    t, v1 = good.split(",", 1)
    few = ",".join(f"v1={i:064x}" for i in range(10))
    many = ",".join(f"v1={i:064x}" for i in range(100))
    with refused(intake, 400, "bad_signature") as answers:
        answers.append(intake.post(body, f"{t},{few}"))
        # More than any rotation needs: refused before a single HMAC, even with a match.
        answers.append(intake.post(body, f"{t},{many},{v1}"))
    accepted(intake, intake.post(body, f"{t},{few},{v1}"), evt["id"])


def test_a_header_with_thousands_of_signatures_is_refused_before_any_hmac(
    intake: Intake,
) -> None:
    body = body_of(event())
    t = sign(body).split(",", 1)[0]
    huge = t + "," + ",".join(f"v1={i:064x}" for i in range(2000))
    before = intake.inbox_count()
    started = time.monotonic()
    response = intake.post(body, huge)
    assert response.status_code in (400, 431)
    assert time.monotonic() - started < 5
    assert intake.inbox_count() == before


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A timing side channel would let an attacker find a valid signature byte by byte: the
    official library compares with ``hmac.compare_digest``, which the intake relies on."""
    import stripe._webhook as webhook_module

    from worker.intake.signature import SignatureChecker

    calls: list[tuple[str, str]] = []

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return hmac.compare_digest(a, b)

    monkeypatch.setattr(webhook_module, "secure_compare", spy)
    body = body_of(event())
    checker = SignatureChecker([SECRET], 300)
    assert checker.check(body.decode(), sign(body, "whsec_other")) == "bad"
    assert calls, "the signature was not compared through the library's secure_compare"
    import stripe._util as util

    assert "compare_digest" in util.secure_compare.__code__.co_names


# --------------------------------------------------------------------------- HTTP framing


def test_a_body_declared_larger_than_the_limit_is_413_before_it_is_read(intake: Intake) -> None:
    request = (
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,v1=00\r\n"
        b"Content-Length: 50000000\r\n\r\n" + b"{" * 1000
    )
    before = intake.inbox_count()
    answer = intake.raw(request)
    assert status_of(answer) == 413, answer[:200]
    assert intake.inbox_count() == before


def test_a_chunked_body_past_the_limit_is_413(intake: Intake) -> None:
    body = body_of(event())
    padded = body[:-1] + b',"pad":"' + b"x" * (MAX_BYTES + 10) + b'"}'

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(padded), 16384):
            yield padded[i : i + 16384]

    with refused(intake, 413, "too_large") as answers:
        answers.append(intake.post(chunks(), sign(padded)))  # type: ignore[arg-type]


def test_a_valid_chunked_body_is_accepted(intake: Intake) -> None:
    evt = event(type="customer.updated")
    body = body_of(evt)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 7):
            yield body[i : i + 7]

    accepted(intake, intake.post(chunks(), sign(body)), evt["id"])  # type: ignore[arg-type]


def test_content_length_and_chunked_together_are_refused_as_smuggling(intake: Intake) -> None:
    body = body_of(event())
    request = (
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: "
        + sign(body).encode()
        + b"\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        + hex(len(body))[2:].encode()
        + b"\r\n"
        + body
        + b"\r\n0\r\n\r\n"
    )
    before = intake.inbox_count()
    assert status_of(intake.raw(request)) == 400
    assert intake.inbox_count() == before


def test_an_invalid_content_length_is_400(intake: Intake) -> None:
    request = b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}"
    assert status_of(intake.raw(request)) == 400


def test_a_content_length_longer_than_the_body_sent_stores_nothing(intake: Intake) -> None:
    evt = event()
    body = body_of(evt)
    request = (
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: "
        + sign(body).encode()
        + b"\r\nContent-Length: "
        + str(len(body) + 100).encode()
        + b"\r\n\r\n"
        + body
    )
    with intake.connect() as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        closed_within(sock, BODY_TIMEOUT + 3)
    time.sleep(0.2)
    assert intake.inbox_row(evt["id"]) is None


def test_garbage_instead_of_http_is_400_and_the_intake_stays_up(intake: Intake) -> None:
    before = intake.rejections("malformed_http")
    answer = intake.raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 200)
    assert status_of(answer) == 400
    assert intake.rejections("malformed_http") == before + 1
    assert intake.request("GET", "/healthz").status_code == 200


def test_an_oversized_header_is_refused_with_431_and_the_connection_closed(
    intake: Intake,
) -> None:
    before = intake.rejections("headers_too_large")
    request = (
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"a" * (MAX_HEADER_BYTES * 4)
        + b"\r\nContent-Length: 2\r\n\r\n{}"
    )
    answer = intake.raw(request)
    assert status_of(answer) == 431, answer[:200]
    assert intake.rejections("headers_too_large") == before + 1


def test_thousands_of_small_headers_are_refused_with_431(intake: Intake) -> None:
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
    answer = intake.raw(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    assert status_of(answer) == 431, answer[:200]


def test_an_endless_header_stream_is_cut_off_and_memory_stays_bounded(intake: Intake) -> None:
    closed = False
    with intake.connect() as sock:
        sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nX-Long: ")
        try:
            for _ in range(2000):  # up to 64 MiB, but the server must hang up long before
                sock.sendall(b"a" * 32768)
        except OSError:
            closed = True
        if not closed:
            closed, _ = closed_within(sock, 3)
    assert closed, "the server kept reading an endless header"


def test_pipelined_webhooks_on_one_connection_are_each_answered_and_stored(
    intake: Intake,
) -> None:
    evts = [event(type="customer.updated") for _ in range(3)]
    data = b""
    for evt in evts:
        body = body_of(evt)
        data += (
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: "
            + sign(body).encode()
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
    with intake.connect() as sock:
        sock.sendall(data)
        deadline = time.monotonic() + 10
        answered = b""
        sock.settimeout(0.5)
        while answered.count(b"HTTP/1.1 200") < 3 and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                answered += sock.recv(65536)
    assert answered.count(b"HTTP/1.1 200") == 3, answered
    for evt in evts:
        assert intake.inbox_row(evt["id"]) is not None


def test_a_kept_alive_request_with_a_large_body_is_not_taken_for_large_headers(
    intake: Intake,
) -> None:
    """The header limit counts header bytes only: a second request on the connection whose
    body (larger than the header limit) arrives after the first answer is still served."""
    first = event(type="customer.updated")
    second = event(type="customer.updated", pad="x" * (MAX_HEADER_BYTES * 3))

    def request(evt: dict[str, Any]) -> tuple[bytes, bytes]:
        body = body_of(evt)
        head = (
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: "
            + sign(body).encode()
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        return head, body

    head1, body1 = request(first)
    head2, body2 = request(second)
    with intake.connect() as sock:
        sock.sendall(head1 + body1 + head2 + body2[:100])
        sock.settimeout(0.5)
        answered = b""
        deadline = time.monotonic() + 10
        while b"HTTP/1.1 200" not in answered and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                answered += sock.recv(65536)
        sock.sendall(body2[100:])
        while answered.count(b"HTTP/1.1 ") < 2 and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                answered += sock.recv(65536)
    assert answered.count(b"HTTP/1.1 200") == 2, answered[:400]
    assert intake.inbox_row(second["id"]) is not None


def test_an_http_1_0_webhook_is_answered_and_stored(intake: Intake) -> None:
    evt = event(type="customer.updated")
    body = body_of(evt)
    request = (
        b"POST /webhooks/stripe HTTP/1.0\r\nStripe-Signature: "
        + sign(body).encode()
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    assert status_of(intake.raw(request)) == 200
    assert intake.inbox_row(evt["id"]) is not None


def test_expect_100_continue_with_an_oversized_body_is_413_without_reading_it(
    intake: Intake,
) -> None:
    request = (
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,v1=00\r\n"
        b"Expect: 100-continue\r\nContent-Length: 900000000\r\n\r\n"
    )
    answer = intake.raw(request, wait=3)
    assert status_of(answer) == 413, answer[:200]


# --------------------------------------------------------------------------- content games


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""],
)
def test_the_signature_decides_whatever_the_content_type_claims(
    intake: Intake, content_type: str
) -> None:
    """A browser can send these cross-site without a preflight, but it cannot sign: the
    body is verified and parsed as JSON whatever the header says."""
    evt = event(type="customer.updated")
    response = intake.send_event(evt, headers={"Content-Type": content_type})
    accepted(intake, response, evt["id"])


def test_a_signed_form_encoded_body_is_400_not_json(intake: Intake) -> None:
    body = b"id=evt_1&type=payment_intent.succeeded&amount_received=5000"
    with refused(intake, 400, "not_json") as answers:
        answers.append(
            intake.post(body, headers={"Content-Type": "application/x-www-form-urlencoded"})
        )


def test_a_gzip_bomb_is_never_inflated(intake: Intake) -> None:
    """Content-Encoding is not honoured: Stripe sends plain JSON, and inflating a bomb
    would cost the memory the size limit protects."""
    bomb = gzip.compress(b"{" + b" " * (64 * 1024 * 1024) + b"}", compresslevel=9)
    assert len(bomb) < MAX_BYTES
    rss = intake.rss_kb()
    response = intake.request(
        "POST",
        content=bomb,
        headers={
            "Content-Encoding": "gzip",
            "Content-Type": "application/json",
            "Stripe-Signature": "t=1,v1=00",
        },
    )
    assert response.status_code in (400, 415)
    assert intake.rss_kb() - rss < 32 * 1024


def test_a_signed_gzip_body_is_refused_as_not_utf8(intake: Intake) -> None:
    packed = gzip.compress(body_of(event()))
    header = "t=" + str(int(time.time())) + ",v1=" + "0" * 64
    with refused(intake, 400, "not_utf8") as answers:
        answers.append(intake.post(packed, header, headers={"Content-Encoding": "gzip"}))


def test_a_body_with_a_byte_order_mark_is_400(intake: Intake) -> None:
    body = "\ufeff".encode() + body_of(event())
    with refused(intake, 400, "not_json") as answers:
        answers.append(intake.post(body))


# --------------------------------------------------------------------------- unstorable


UNSTORABLE: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {}


def _kind(name: str, reason: str) -> Callable[[Callable[[dict[str, Any]], Any]], Any]:
    def register(fn: Callable[[dict[str, Any]], Any]) -> Any:
        UNSTORABLE[name] = (fn, reason)
        return fn

    return register


@_kind("created beyond 64 bits", "bad_created")
def _big_created(evt: dict[str, Any]) -> str:
    return json.dumps(evt).replace(str(evt["created"]), "1" + "0" * 25, 1)


@_kind("created beyond 64 bits by one", "bad_created")
def _big_created_edge(evt: dict[str, Any]) -> str:
    return json.dumps(evt).replace(str(evt["created"]), str(2**63), 1)


@_kind("created negative", "bad_created")
def _neg_created(evt: dict[str, Any]) -> Any:
    return {**evt, "created": -1}


@_kind("created a float", "bad_created")
def _float_created(evt: dict[str, Any]) -> Any:
    return {**evt, "created": evt["created"] + 0.5}


@_kind("created a string", "bad_created")
def _str_created(evt: dict[str, Any]) -> Any:
    return {**evt, "created": str(evt["created"])}


@_kind("created far in the future", "future_event")
def _future_created(evt: dict[str, Any]) -> Any:
    return {**evt, "created": evt["created"] + 86400 * 365 * 50}


@_kind("NaN", "not_json")
def _nan(evt: dict[str, Any]) -> str:
    return json.dumps({**evt, "x": float("nan")})


@_kind("Infinity", "not_json")
def _inf(evt: dict[str, Any]) -> str:
    return json.dumps({**evt, "created": float("inf")})


@_kind("NUL in the event id", "bad_id")
def _nul_id(evt: dict[str, Any]) -> Any:
    return {**evt, "id": evt["id"] + "\u0000x"}


@_kind("NUL in the payment id", "bad_id")
def _nul_pi(evt: dict[str, Any]) -> Any:
    evt["data"]["object"]["id"] += "\u0000"
    return evt


@_kind("an event id of 300 characters", "bad_id")
def _long_id(evt: dict[str, Any]) -> Any:
    return {**evt, "id": "evt_" + "a" * 296}


@_kind("a payment id of 300 characters", "bad_id")
def _long_pi(evt: dict[str, Any]) -> Any:
    evt["data"]["object"]["id"] = "pi_" + "a" * 297
    return evt


@_kind("an event id with path characters", "bad_id")
def _path_id(evt: dict[str, Any]) -> Any:
    return {**evt, "id": "evt_../../v1/charges?limit=1"}


@_kind("a payment id with path characters", "bad_id")
def _path_pi(evt: dict[str, Any]) -> Any:
    evt["data"]["object"]["id"] = "pi_x/../../v1/customers"
    return evt


@_kind("an event id that is a number", "bad_id")
def _num_id(evt: dict[str, Any]) -> Any:
    return {**evt, "id": 12345}


@_kind("deep nesting (10000)", "not_json")
def _deep(evt: dict[str, Any]) -> str:
    return json.dumps(evt)[:-1] + ',"x":' + "[" * 10000 + "]" * 10000 + "}"


@_kind("deep nesting (500)", "too_deep")
def _deep500(evt: dict[str, Any]) -> str:
    return json.dumps(evt)[:-1] + ',"x":' + "[" * 500 + "]" * 500 + "}"


@_kind("deep nesting in the object (100)", "too_deep")
def _deep100(evt: dict[str, Any]) -> Any:
    inner: Any = {}
    for _ in range(100):
        inner = {"a": inner}
    evt["data"]["object"]["metadata"] = inner
    return evt


@_kind("a lone surrogate", "not_json")
def _surrogate(evt: dict[str, Any]) -> str:
    return json.dumps(evt)[:-1] + ',"x":"\\ud800"}'


@_kind("a lone low surrogate in the type", "not_json")
def _surrogate_type(evt: dict[str, Any]) -> str:
    return json.dumps(evt).replace('"payment_intent.succeeded"', '"payment_intent.\\udc00"', 1)


@_kind("an array", "not_object")
def _array(evt: dict[str, Any]) -> Any:
    return [evt]


@_kind("a string", "not_object")
def _string(evt: dict[str, Any]) -> str:
    return '"evt"'


@_kind("null", "not_object")
def _null(evt: dict[str, Any]) -> Any:
    return None


@_kind("a number", "not_object")
def _number(evt: dict[str, Any]) -> Any:
    return 1


@_kind("empty body", "not_json")
def _empty(evt: dict[str, Any]) -> str:
    return ""


@_kind("truncated JSON", "not_json")
def _truncated(evt: dict[str, Any]) -> str:
    return json.dumps(evt)[:-10]


@_kind("no data.object", "not_event")
def _no_data(evt: dict[str, Any]) -> Any:
    return {**evt, "data": {}}


@_kind("object is not an event", "not_event")
def _not_event(evt: dict[str, Any]) -> Any:
    return {**evt, "object": "payment_intent"}


@_kind("livemode a string", "not_event")
def _livemode_str(evt: dict[str, Any]) -> Any:
    return {**evt, "livemode": "false"}


@_kind("a homoglyph event type", "bad_type")
def _homoglyph(evt: dict[str, Any]) -> Any:
    return {**evt, "type": "payment_intent.\u0455ucceeded"}  # Cyrillic dze


@_kind("an event type with escape sequences", "bad_type")
def _ansi_type(evt: dict[str, Any]) -> Any:
    return {**evt, "type": "payment_intent.succeeded\x1b[2J\x1b]8;;http://x\x07"}


@_kind("an event type with a newline", "bad_type")
def _newline_type(evt: dict[str, Any]) -> Any:
    return {**evt, "type": "payment_intent.succeeded\nfake log line"}


@_kind("an event type of 200 characters", "bad_type")
def _long_type(evt: dict[str, Any]) -> Any:
    return {**evt, "type": "payment_intent." + "a" * 185}


@_kind("no event type", "bad_type")
def _no_type(evt: dict[str, Any]) -> Any:
    return {k: v for k, v in evt.items() if k != "type"}


@_kind("a thin event with a malformed related object", "not_event")
def _thin_bad(evt: dict[str, Any]) -> Any:
    return {
        "id": evt["id"],
        "object": "v2.core.event",
        "type": "v1.payment_intent.succeeded",
        "created": "2026-01-01T00:00:00.000Z",
        "related_object": {"id": 5, "type": "payment_intent"},
    }


@_kind("a thin event from the far future", "future_event")
def _thin_future(evt: dict[str, Any]) -> Any:
    return {
        "id": evt["id"],
        "object": "v2.core.event",
        "type": "v1.payment_intent.succeeded",
        "created": "2999-01-01T00:00:00.000Z",
        "related_object": {"id": "pi_1", "type": "payment_intent", "url": "/v1/x"},
    }


@_kind("a thin event with a path in its related id", "bad_id")
def _thin_path(evt: dict[str, Any]) -> Any:
    return {
        "id": evt["id"],
        "object": "v2.core.event",
        "type": "v1.payment_intent.succeeded",
        "created": "2026-01-01T00:00:00.000Z",
        "related_object": {"id": "pi_1/../../x", "type": "payment_intent", "url": "/v1/x"},
    }


@pytest.mark.parametrize("kind", sorted(UNSTORABLE))
def test_a_signed_event_that_can_never_be_stored_is_400_with_its_reason(
    intake: Intake, kind: str
) -> None:
    make, reason = UNSTORABLE[kind]
    evt = event()
    made = make(json.loads(json.dumps(evt)))
    text = made if isinstance(made, str) else json.dumps(made)
    body = text.encode("utf-8", "surrogatepass")
    with refused(intake, 400, reason) as answers:
        answers.append(intake.post(body, sign(text)))
    assert intake.inbox_row(evt["id"]) is None


def test_the_rejection_reasons_are_a_small_fixed_set(intake: Intake) -> None:
    from worker.metrics import REJECTION_REASONS

    seen = {
        line.split('reason="', 1)[1].split('"', 1)[0]
        for line in intake.metrics().splitlines()
        if line.startswith("recon_webhooks_rejected_total{")
    }
    assert seen <= REJECTION_REASONS
    assert len(REJECTION_REASONS) <= 30


def test_many_distinct_event_types_do_not_grow_the_metric_labels(intake: Intake) -> None:
    for i in range(60):
        evt = event(type=f"made_up.type_{i}")
        assert intake.send_event(evt).status_code == 200
    types = {
        line.split('type="', 1)[1].split('"', 1)[0]
        for line in intake.metrics().splitlines()
        if line.startswith("recon_webhooks_received_total{")
    }
    assert not any(t.startswith("made_up.") for t in types), sorted(types)[:10]
    assert len(types) < 40


def test_duplicate_keys_are_read_the_same_way_by_the_intake_and_the_worker(
    intake: Intake,
) -> None:
    """JSON with a key twice: every parser on the way (orjson at the intake, PostgreSQL's
    json, the worker's json) must take the same value, or a signed event could say one
    amount to the check and another to the ledger.  The last one wins everywhere; the
    amount decided on is the last, and the ledger is not moved by the first."""
    pi = new_id("pi")
    intake.seed_inflight(pi, 5000)
    obj = pi_object(pi)
    text = json.dumps(event(obj))
    text = text.replace('"amount_received": 5000', '"amount_received": 5000, "amount_received": 1')
    evt_id = json.loads(text)["id"]
    response = intake.post(text.encode())
    accepted(intake, response, evt_id)
    intake.settled(evt_id)
    entry = intake.entry(pi)
    # The worker saw 1 (the last), not 5000: a partial capture or a ticket, never 5000.
    assert entry.committed_amount in (0, 1)


# --------------------------------------------------------------------------- slow clients


def test_a_connection_that_sends_nothing_is_closed_after_the_header_deadline(
    intake: Intake,
) -> None:
    before = intake.rejections("slow_headers")
    started = time.monotonic()
    with intake.connect() as sock:
        closed, answer = closed_within(sock, HEADER_TIMEOUT + 3)
    assert closed
    assert HEADER_TIMEOUT - 0.2 < time.monotonic() - started < HEADER_TIMEOUT + 2
    assert status_of(answer) == 408
    assert intake.rejections("slow_headers") == before + 1


def test_slowloris_headers_are_cut_off_at_the_header_deadline(intake: Intake) -> None:
    with intake.connect() as sock:
        sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = False
        # One header byte every 0.3 s: each arrives before any idle timer would fire.
        while time.monotonic() - started < HEADER_TIMEOUT + 4:
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
            shut, answer = closed_within(sock, 0.3)
            if shut:
                closed = True
                break
    assert closed, "a client trickling headers held its connection past the deadline"
    assert time.monotonic() - started < HEADER_TIMEOUT + 3


def test_slowloris_body_is_answered_408_and_stores_nothing(intake: Intake) -> None:
    evt = event()
    body = body_of(evt)
    with intake.connect() as sock:
        sock.sendall(
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: "
            + sign(body).encode()
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body[:10]
        )
        started = time.monotonic()
        answer = b""
        closed = False
        while time.monotonic() - started < BODY_TIMEOUT + 4:
            try:
                sock.sendall(body[10:11])
            except OSError:
                closed = True
                break
            shut, got = closed_within(sock, 0.3)
            answer += got
            if shut or got:
                closed = True
                break
    assert closed, "a client trickling its body held its connection past the deadline"
    assert status_of(answer) == 408, answer[:200]
    assert intake.inbox_row(evt["id"]) is None
    assert intake.rejections("slow_body") >= 1


def test_connections_past_the_cap_are_refused_and_service_resumes(intake: Intake) -> None:
    """Idle sockets up to the cap: a webhook then gets 503 (Stripe retries), never a hang;
    once the header deadline has closed them, webhooks are accepted again."""
    before = intake.rejections("over_capacity")
    socks = []
    try:
        for _ in range(MAX_CONNECTIONS + 5):
            socks.append(socket.create_connection(("127.0.0.1", intake.port), timeout=5))
            socks[-1].sendall(b"POST /webhooks/stripe HTTP/1.1\r\n")
        time.sleep(0.2)
        evt = event(type="customer.updated")
        try:
            response = intake.send_event(evt)
        except httpx.HTTPError:
            pytest.fail("a webhook past the connection cap was left hanging or dropped")
        # 503: Stripe retries it later; nothing stored meanwhile.
        assert response.status_code == 503
        assert intake.inbox_row(evt["id"]) is None
    finally:
        for s in socks:
            s.close()
    time.sleep(HEADER_TIMEOUT + 0.5)
    assert intake.rejections("over_capacity") >= before + 1
    evt = event(type="customer.updated")
    accepted(intake, intake.send_event(evt), evt["id"])


def test_a_flood_of_bad_signatures_leaves_the_intake_serving(intake: Intake) -> None:
    body = body_of(event())
    statuses: list[int] = []
    lock = threading.Lock()

    def hammer() -> None:
        with httpx.Client(base_url=intake.url, timeout=15) as client:
            for _ in range(50):
                r = client.post(WEBHOOK, content=body, headers={"Stripe-Signature": "t=1,v1=0"})
                with lock:
                    statuses.append(r.status_code)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses.count(400) + statuses.count(503) == 400
    evt = event(type="customer.updated")
    accepted(intake, intake.send_event(evt), evt["id"])


def test_open_file_descriptors_return_to_normal_after_the_slow_clients(intake: Intake) -> None:
    time.sleep(HEADER_TIMEOUT + 0.5)
    assert intake.open_fds() < 100
