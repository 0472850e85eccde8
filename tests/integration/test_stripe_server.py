"""The local Stripe server, exercised through the official stripe client over localhost."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import stripe

from tests.stripe_server import (
    StripeState,
    embedded_templates,
    load_templates,
    random_payment_intents,
    run_server,
    signed_webhook,
)
from tests.stripe_server.templates import DEFAULT_FIXTURES_PATH

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000


@pytest.fixture(scope="module")
def server():
    with run_server() as srv:
        yield srv


@pytest.fixture
def srv(server):
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def client(srv):
    return srv.client()


def seed_sequence(srv, n, start=T0, **fields):
    """n PaymentIntents created one second apart; ids sort the same way as creation."""
    specs = [
        {"id": f"pi_{i:05d}", "amount": 100 + i, "created": start + i, **fields} for i in range(n)
    ]
    srv.state.seed_payment_intents(specs)
    return [s["id"] for s in specs]


# -- retrieve -------------------------------------------------------------------------------


def test_a_payment_intent_is_retrieved_with_the_state_it_was_given(srv, client):
    srv.state.create_payment_intent(
        id="pi_top_up_1",
        amount=2500,
        currency="EUR",
        status="succeeded",
        created=T0,
        customer="cus_1",
        metadata={"balance_id": "bln_42"},
    )

    pi = client.v1.payment_intents.retrieve("pi_top_up_1")

    assert isinstance(pi, stripe.PaymentIntent)
    assert (pi.id, pi.status, pi.amount, pi.amount_received) == (
        "pi_top_up_1",
        "succeeded",
        2500,
        2500,
    )
    assert (pi.currency, pi.created, pi.customer) == ("eur", T0, "cus_1")
    assert pi.metadata.to_dict() == {"balance_id": "bln_42"}
    assert pi.last_payment_error is None
    assert pi.latest_charge == "ch_top_up_1"


def test_served_objects_carry_every_top_level_field_of_the_stripe_example(srv, client):
    srv.state.create_payment_intent(id="pi_fields", amount=100)
    templates = srv.state.templates

    pi = client.v1.payment_intents.retrieve("pi_fields").to_dict()

    assert set(pi) == set(templates.payment_intent)


def test_a_failed_attempt_leaves_the_intent_awaiting_a_payment_method_with_the_error(srv, client):
    srv.state.create_payment_intent(
        id="pi_declined", amount=900, status="requires_payment_method", last_payment_error=True
    )

    pi = client.v1.payment_intents.retrieve("pi_declined", params={"expand": ["latest_charge"]})

    assert pi.status == "requires_payment_method"
    assert pi.last_payment_error.code == "card_declined"
    assert pi.latest_charge.status == "failed"
    assert pi.latest_charge.failure_code == "card_declined"
    assert pi.amount_received == 0


def test_an_expanded_latest_charge_reports_refunds_and_disputes_from_state(srv, client):
    srv.state.create_payment_intent(id="pi_refunded", amount=1000, status="succeeded")
    srv.state.update_payment_intent("pi_refunded", amount_refunded=1000, disputed=True)

    pi = client.v1.payment_intents.retrieve("pi_refunded", params={"expand": ["latest_charge"]})

    charge = pi.latest_charge
    assert isinstance(charge, stripe.Charge)
    assert (charge.id, charge.payment_intent, charge.amount_captured) == (
        "ch_refunded",
        "pi_refunded",
        1000,
    )
    assert (charge.amount_refunded, charge.refunded, charge.disputed) == (1000, True, True)


def test_a_partial_refund_does_not_mark_the_charge_refunded(srv, client):
    srv.state.create_payment_intent(
        id="pi_partial", amount=1000, status="succeeded", amount_refunded=300
    )

    charge = client.v1.payment_intents.retrieve(
        "pi_partial", params={"expand": ["latest_charge"]}
    ).latest_charge

    assert (charge.amount_refunded, charge.refunded) == (300, False)


def test_an_unknown_payment_intent_raises_resource_missing_with_404(srv, client):
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.payment_intents.retrieve("pi_nope")

    error = raised.value
    assert error.http_status == 404
    assert error.code == "resource_missing"
    assert error.param == "intent"
    assert error.user_message == "No such payment_intent: 'pi_nope'"
    assert srv.calls("payment_intents.retrieve", "404") == 1


def test_a_parameter_stripe_does_not_know_is_rejected(srv, client):
    seed_sequence(srv, 1)

    with pytest.raises(stripe.InvalidRequestError, match="unknown parameter: status"):
        client.v1.payment_intents.list(params={"status": "succeeded"})


def test_a_property_that_cannot_be_expanded_is_rejected(srv, client):
    seed_sequence(srv, 1)

    with pytest.raises(stripe.InvalidRequestError, match="cannot be expanded"):
        client.v1.payment_intents.retrieve("pi_00000", params={"expand": ["customer"]})


# -- list and paging ------------------------------------------------------------------------


def test_auto_paging_walks_250_intents_newest_first_inside_the_created_window(srv, client):
    ids = seed_sequence(srv, 300)
    inside = ids[20:270]  # created T0+20 .. T0+269

    page = client.v1.payment_intents.list(
        params={"limit": 100, "created": {"gte": T0 + 20, "lte": T0 + 269}}
    )
    seen = [pi.id for pi in page.auto_paging_iter()]

    assert seen == list(reversed(inside))
    assert srv.calls("payment_intents.list") == 3


def test_gt_and_lt_leave_out_the_boundary_seconds(srv, client):
    ids = seed_sequence(srv, 10)

    page = client.v1.payment_intents.list(params={"created": {"gt": T0 + 2, "lt": T0 + 7}})

    assert [pi.id for pi in page.data] == list(reversed(ids[3:7]))
    assert page.has_more is False
    assert page.url == "/v1/payment_intents"


def test_intents_created_in_the_same_second_come_back_in_one_stable_order(srv, client):
    specs = [{"id": f"pi_same_{c}", "amount": 100, "created": T0} for c in "abcde"]
    srv.state.seed_payment_intents(specs)

    first = client.v1.payment_intents.list(params={"limit": 2})
    rest = [pi.id for pi in first.auto_paging_iter()]

    assert rest == ["pi_same_e", "pi_same_d", "pi_same_c", "pi_same_b", "pi_same_a"]


def test_ending_before_pages_backwards_towards_the_newest(srv, client):
    ids = seed_sequence(srv, 25)

    page = client.v1.payment_intents.list(params={"limit": 10, "ending_before": ids[4]})
    walked = [pi.id for pi in page.auto_paging_iter()]

    assert [pi.id for pi in page.data] == list(reversed(ids[5:15]))
    assert page.has_more is True
    assert walked == ids[5:]


def test_a_list_page_can_expand_each_latest_charge(srv, client):
    srv.state.create_payment_intent(id="pi_paid", amount=700, status="succeeded")

    page = client.v1.payment_intents.list(params={"expand": ["data.latest_charge"]})

    assert page.data[0].latest_charge.amount_captured == 700


def test_listing_filters_by_customer(srv, client):
    srv.state.seed_payment_intents(
        [
            {"id": "pi_c1", "amount": 1, "customer": "cus_a", "created": T0},
            {"id": "pi_c2", "amount": 1, "customer": "cus_b", "created": T0 + 1},
            {"id": "pi_c3", "amount": 1, "customer": "cus_a", "created": T0 + 2},
        ]
    )

    page = client.v1.payment_intents.list(params={"customer": "cus_a"})

    assert [pi.id for pi in page.data] == ["pi_c3", "pi_c1"]


@pytest.mark.parametrize("limit", [0, 101])
def test_a_limit_outside_1_to_100_is_rejected(srv, client, limit):
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.payment_intents.list(params={"limit": limit})

    assert raised.value.param == "limit"


def test_a_cursor_naming_no_object_is_rejected(srv, client):
    seed_sequence(srv, 3)

    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.payment_intents.list(params={"starting_after": "pi_gone"})

    assert (raised.value.code, raised.value.param) == ("resource_missing", "starting_after")


# -- events -----------------------------------------------------------------------------------


def test_each_state_change_records_its_stripe_event_with_a_snapshot_of_that_moment(srv):
    state = srv.state
    created = state.create_payment_intent(id="pi_life", amount=1500, created=T0)
    processing = state.update_payment_intent("pi_life", status="processing", at=T0 + 1)
    failed = state.update_payment_intent(
        "pi_life", status="requires_payment_method", last_payment_error="expired_card", at=T0 + 2
    )
    action = state.update_payment_intent("pi_life", status="requires_action", at=T0 + 3)
    capture = state.update_payment_intent("pi_life", status="requires_capture", at=T0 + 4)
    succeeded = state.update_payment_intent("pi_life", status="succeeded", at=T0 + 5)
    refunded = state.update_payment_intent("pi_life", amount_refunded=500, at=T0 + 6)
    disputed = state.update_payment_intent("pi_life", disputed=True, at=T0 + 7)
    untouched = state.update_payment_intent("pi_life", metadata={"note": "x"}, at=T0 + 8)

    assert [e["type"] for e in created.events] == ["payment_intent.created"]
    assert processing.event["type"] == "payment_intent.processing"
    assert failed.event["type"] == "payment_intent.payment_failed"
    assert failed.event["data"]["object"]["last_payment_error"]["code"] == "expired_card"
    assert action.event["type"] == "payment_intent.requires_action"
    assert capture.event["type"] == "payment_intent.amount_capturable_updated"
    assert capture.event["data"]["object"]["amount_capturable"] == 1500
    assert succeeded.event["type"] == "payment_intent.succeeded"
    assert succeeded.event["data"]["object"]["amount_received"] == 1500
    assert refunded.event["type"] == "charge.refunded"
    assert refunded.event["data"]["object"]["amount_refunded"] == 500
    assert disputed.event["type"] == "charge.dispute.created"
    assert disputed.event["data"]["object"]["payment_intent"] == "pi_life"
    assert untouched.events == []
    # The stored snapshot is the object as it was then, not as it is now.
    first = state.event(processing.event["id"])
    assert first["data"]["object"]["status"] == "processing"
    assert first["created"] == T0 + 1


def test_cancellation_records_canceled_with_the_time_it_happened(srv):
    srv.state.create_payment_intent(id="pi_cancel", amount=100, created=T0)

    change = srv.state.update_payment_intent(
        "pi_cancel", status="canceled", cancellation_reason="abandoned", at=T0 + 60
    )

    assert change.event["type"] == "payment_intent.canceled"
    assert change.payment_intent["canceled_at"] == T0 + 60
    assert change.payment_intent["cancellation_reason"] == "abandoned"


def test_events_have_the_envelope_of_stripes_example_event(srv, client):
    srv.state.create_payment_intent(id="pi_env", amount=100, status="succeeded", created=T0)

    event = client.v1.events.list(params={"limit": 1}).data[0]

    assert isinstance(event, stripe.Event)
    assert set(event.to_dict()) == set(srv.state.templates.event)
    assert event.id.startswith("evt_")
    assert (event.object, event.type, event.created) == ("event", "payment_intent.succeeded", T0)
    assert event.data.object.id == "pi_env"
    assert isinstance(event.data.object, stripe.PaymentIntent)
    assert event.api_version == stripe.api_version


def test_events_are_filtered_by_types_and_paged_newest_first(srv, client):
    specs = []
    for i in range(120):
        status = "succeeded" if i % 3 else "canceled"
        specs.append({"id": f"pi_{i:04d}", "amount": 100, "status": status, "created": T0 + i})
    srv.state.seed_payment_intents(specs, record_events=True)
    srv.state.add_event("customer.created", {"id": "cus_1", "object": "customer"}, T0 + 500)

    listed = client.v1.events.list(
        params={"types": ["payment_intent.succeeded", "payment_intent.canceled"], "limit": 50}
    )
    events = list(listed.auto_paging_iter())

    assert len(events) == 120
    assert [e.data.object.id for e in events] == [f"pi_{i:04d}" for i in reversed(range(120))]
    assert srv.calls("events.list") == 3
    canceled = client.v1.events.list(params={"type": "payment_intent.cancel*", "limit": 100})
    assert {e.type for e in canceled.data} == {"payment_intent.canceled"}
    assert len(canceled.data) == 40


def test_events_are_filtered_by_created_and_retrievable_by_id(srv, client):
    for i in range(5):
        srv.state.add_event("payment_intent.created", {"id": f"pi_{i}"}, T0 + i)

    page = client.v1.events.list(params={"created": {"gte": T0 + 1, "lt": T0 + 4}})
    again = client.v1.events.retrieve(page.data[0].id)

    assert [e.created for e in page.data] == [T0 + 3, T0 + 2, T0 + 1]
    assert again.id == page.data[0].id


def test_events_past_the_retention_window_are_hidden_once_configured(srv, client):
    now = int(time.time())
    srv.state.add_event("payment_intent.created", {"id": "pi_old"}, now - 31 * 86_400)
    srv.state.add_event("payment_intent.created", {"id": "pi_new"}, now - 29 * 86_400)

    before = client.v1.events.list()
    srv.configure(event_retention_days=30)
    after = client.v1.events.list()

    assert len(before.data) == 2
    assert [e.data.object.id for e in after.data] == ["pi_new"]


# -- faults, auth, stats ----------------------------------------------------------------------


def test_requests_over_the_rate_limit_raise_rate_limit_error_until_tokens_refill(srv, client):
    seed_sequence(srv, 1)
    srv.configure(rate_limit=5, rate_burst=2)

    client.v1.payment_intents.retrieve("pi_00000")
    client.v1.payment_intents.retrieve("pi_00000")
    with pytest.raises(stripe.RateLimitError) as raised:
        client.v1.payment_intents.retrieve("pi_00000")
    time.sleep(0.25)
    client.v1.payment_intents.retrieve("pi_00000")

    assert raised.value.http_status == 429
    # stripe-python drops `code` on RateLimitError, so read it from the wire body.
    assert raised.value.json_body["error"]["code"] == "rate_limit"
    assert srv.calls(outcome="429") == 1
    assert srv.calls(outcome="200") == 3


def test_fail_next_injects_exactly_n_server_errors(srv, client):
    seed_sequence(srv, 1)
    srv.configure(fail_next=2)

    for _ in range(2):
        with pytest.raises(stripe.APIError) as raised:
            client.v1.payment_intents.retrieve("pi_00000")
        assert raised.value.http_status == 500
    client.v1.payment_intents.retrieve("pi_00000")

    assert srv.config.fail_next == 0
    assert srv.stats()["by_outcome"] == {"5xx": 2, "200": 1}


def test_a_client_with_retries_recovers_from_one_injected_503(srv):
    seed_sequence(srv, 1)
    srv.configure(fail_next=1, error_status=503)

    pi = srv.client(max_network_retries=1).v1.payment_intents.retrieve("pi_00000")

    assert pi.id == "pi_00000"
    assert srv.calls("payment_intents.retrieve", "5xx") == 1
    assert srv.calls("payment_intents.retrieve", "200") == 1


def test_an_error_rate_fails_about_that_share_of_requests(srv, client):
    seed_sequence(srv, 1)
    srv.configure(error_rate=0.5, random_seed=7)

    failures = 0
    for _ in range(60):
        try:
            client.v1.payment_intents.retrieve("pi_00000")
        except stripe.APIError:
            failures += 1

    assert 15 <= failures <= 45
    assert srv.calls(outcome="5xx") == failures


def test_a_storm_of_errors_mixes_the_status_codes_asked_for(srv, client):
    seed_sequence(srv, 1)
    srv.configure(error_rate=1.0, error_statuses=[429, 500], random_seed=3)

    seen = []
    for _ in range(40):
        try:
            client.v1.payment_intents.retrieve("pi_00000")
        except stripe.RateLimitError:
            seen.append(429)
        except stripe.APIError:
            seen.append(500)

    assert len(seen) == 40 and {429, 500} == set(seen)
    assert srv.calls(outcome="429") == seen.count(429)
    with pytest.raises(ValueError, match="error_statuses must be a 5xx code"):
        srv.configure(error_statuses=[404])


def test_injected_latency_delays_every_answer(srv, client):
    seed_sequence(srv, 1)
    srv.configure(latency_ms=150)

    started = time.perf_counter()
    client.v1.payment_intents.retrieve("pi_00000")
    elapsed = time.perf_counter() - started

    assert elapsed >= 0.15


def test_calls_are_counted_by_endpoint_and_outcome(srv, client):
    seed_sequence(srv, 2)
    client.v1.payment_intents.retrieve("pi_00000")
    client.v1.payment_intents.retrieve("pi_00001")
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.retrieve("pi_missing")
    client.v1.payment_intents.list()
    client.v1.events.list()

    stats = srv.stats()

    assert stats["total"] == 5
    assert stats["by_endpoint"]["payment_intents.retrieve"] == {"total": 3, "200": 2, "404": 1}
    assert stats["by_endpoint"]["payment_intents.list"] == {"total": 1, "200": 1}
    assert stats["by_endpoint"]["events.list"] == {"total": 1, "200": 1}
    assert stats["by_outcome"] == {"200": 4, "404": 1}


def test_a_wrong_api_key_raises_authentication_error_naming_only_its_last_four(srv):
    srv.configure(valid_keys=[srv.api_key])

    with pytest.raises(stripe.AuthenticationError) as raised:
        srv.client(api_key="sk_test_wrongkeyabcd").v1.payment_intents.list()

    assert raised.value.http_status == 401
    assert raised.value.user_message == "Invalid API Key provided: sk_test_****abcd"
    assert srv.calls(outcome="401") == 1


def test_a_live_mode_key_is_refused_even_without_a_key_list(srv):
    with pytest.raises(stripe.AuthenticationError):
        srv.client(api_key="sk_live_realmoney1234").v1.payment_intents.list()


def test_a_request_without_a_key_is_refused(srv):
    response = httpx.get(f"{srv.url}/v1/payment_intents")

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_an_unrecognized_url_answers_stripes_404(srv):
    response = httpx.post(
        f"{srv.url}/v1/payment_intents", headers={"Authorization": f"Bearer {srv.api_key}"}
    )

    assert response.status_code == 404
    assert "Unrecognized request URL (POST: /v1/payment_intents)" in response.text


# -- webhooks ------------------------------------------------------------------------------


def test_a_signed_webhook_verifies_with_the_official_library(srv):
    event = srv.state.create_payment_intent(id="pi_hook", amount=100, status="succeeded").event

    body, headers = signed_webhook(event, "whsec_test_secret")
    verified = stripe.Webhook.construct_event(
        body, headers["Stripe-Signature"], "whsec_test_secret"
    )

    assert verified.id == event["id"]
    assert verified.data.object.status == "succeeded"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, headers["Stripe-Signature"], "whsec_other")
    with pytest.raises(stripe.SignatureVerificationError):
        tampered = body.replace(b"succeeded", b"canceled")
        stripe.Webhook.construct_event(tampered, headers["Stripe-Signature"], "whsec_test_secret")


def test_a_webhook_signed_long_ago_is_rejected_by_the_tolerance(srv):
    body, headers = signed_webhook({"id": "evt_1", "object": "event"}, "whsec_a", time.time() - 600)

    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, headers["Stripe-Signature"], "whsec_a")


def test_a_webhook_signed_during_secret_rotation_verifies_with_either_secret(srv):
    body, headers = signed_webhook({"id": "evt_2", "object": "event"}, ["whsec_old", "whsec_new"])

    for secret in ("whsec_old", "whsec_new"):
        assert stripe.Webhook.construct_event(body, headers["Stripe-Signature"], secret).id == (
            "evt_2"
        )
    assert headers["Stripe-Signature"].count("v1=") == 2


# -- control plane over HTTP ---------------------------------------------------------------


def test_another_process_can_seed_change_configure_and_reset_over_http(srv, client):
    with httpx.Client(base_url=srv.url) as http:
        created = http.post(
            "/_test/payment_intents",
            json={"id": "pi_http", "amount": 4200, "status": "processing", "created": T0},
        )
        changed = http.post("/_test/payment_intents/pi_http", json={"status": "succeeded"})
        bad = http.post("/_test/payment_intents", json={"amount": 1, "colour": "red"})
        missing = http.post("/_test/payment_intents/pi_none", json={"status": "canceled"})
        config = http.post("/_test/config", json={"fail_next": 1})
        with pytest.raises(stripe.APIError):
            client.v1.payment_intents.retrieve("pi_http")
        retrieved = client.v1.payment_intents.retrieve("pi_http")
        stats = http.get("/_test/stats").json()
        reset = http.post("/_test/reset")
        after_reset = http.get("/_test/health").json()

    assert created.status_code == 200
    assert [e["type"] for e in created.json()["events"]] == [
        "payment_intent.created",
        "payment_intent.processing",
    ]
    assert changed.json()["event"]["type"] == "payment_intent.succeeded"
    assert changed.json()["payment_intent"]["amount_received"] == 4200
    assert bad.status_code == 400
    assert "colour" in bad.json()["error"]["message"]
    assert missing.status_code == 404
    assert config.json()["fail_next"] == 1
    assert retrieved.status == "succeeded"
    assert stats["by_endpoint"]["payment_intents.retrieve"] == {"total": 2, "5xx": 1, "200": 1}
    assert reset.status_code == 200
    assert after_reset["payment_intents"] == 0
    assert srv.stats()["total"] == 0


def test_a_bulk_seed_with_one_bad_item_adds_nothing(srv):
    response = httpx.post(
        f"{srv.url}/_test/payment_intents/bulk",
        json=[{"id": "pi_ok", "amount": 1}, {"id": "pi_bad", "amount": -5}],
    )

    assert response.status_code == 400
    assert "item 1" in response.json()["error"]["message"]
    assert srv.state.count_payment_intents() == 0


def test_ten_thousand_intents_seed_over_http_and_page_quickly(srv):
    specs = random_payment_intents(10_000, seed=3, created_from=T0, created_to=T0 + 86_400)
    auth = {"Authorization": f"Bearer {srv.api_key}"}

    with httpx.Client(base_url=srv.url, headers=auth, timeout=30) as http:
        started = time.perf_counter()
        seeded = http.post("/_test/payment_intents/bulk", json={"payment_intents": specs})
        seed_seconds = time.perf_counter() - started
        started = time.perf_counter()
        after, pages, ids = None, 0, []
        while True:
            params = {"limit": 100, **({"starting_after": after} if after else {})}
            page = http.get("/v1/payment_intents", params=params).json()
            pages += 1
            ids.extend(pi["id"] for pi in page["data"])
            if not page["has_more"]:
                break
            after = page["data"][-1]["id"]
        page_ms = (time.perf_counter() - started) / pages * 1000

    assert seeded.json()["count"] == 10_000
    assert pages == 100
    expected = [s["id"] for s in sorted(specs, key=lambda s: (s["created"], s["id"]))]
    assert ids == expected[::-1]
    assert seed_seconds < 5, f"bulk seed took {seed_seconds:.2f}s"
    assert page_ms < 50, f"{page_ms:.1f} ms per page of 100"


# -- fixtures and standalone process --------------------------------------------------------


def test_without_the_fixtures_file_the_embedded_template_keeps_the_server_working(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("RECON_STRIPE_FIXTURES", str(tmp_path / "absent.json"))
    templates = load_templates()

    with run_server(state=StripeState(templates)) as alone:
        alone.state.create_payment_intent(id="pi_embedded", amount=300, status="canceled")
        pi = alone.client().v1.payment_intents.retrieve("pi_embedded")

    assert templates.source == "embedded"
    assert (pi.status, pi.amount) == ("canceled", 300)


def test_the_fixtures_path_can_be_chosen_by_environment(tmp_path, monkeypatch):
    custom = embedded_templates().payment_intent | {"statement_descriptor": "FROM FIXTURE"}
    path = tmp_path / "fixtures.json"
    path.write_text(json.dumps({"resources": {"payment_intent": custom}}))
    monkeypatch.setenv("RECON_STRIPE_FIXTURES", str(path))

    state = StripeState(load_templates())
    pi = state.create_payment_intent(id="pi_custom", amount=1).payment_intent

    assert state.templates.source == str(path)
    assert pi["statement_descriptor"] == "FROM FIXTURE"


@pytest.mark.skipif(not DEFAULT_FIXTURES_PATH.is_file(), reason="shared fixtures not present")
def test_the_embedded_template_has_the_same_fields_as_stripes_fixture():
    real, embedded = load_templates(DEFAULT_FIXTURES_PATH), embedded_templates()

    for resource in ("payment_intent", "charge", "dispute", "event"):
        assert set(getattr(embedded, resource)) == set(getattr(real, resource)), resource


def test_the_module_runs_standalone_on_the_port_it_is_given():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "tests.stripe_server", "--port", str(port), "--seed", "30"]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                health = httpx.get(f"{url}/_test/health", timeout=1).json()
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read().decode()
                assert time.monotonic() < deadline, "standalone server did not start"
                time.sleep(0.1)
        client = stripe.StripeClient("sk_test_anything", base_addresses={"api": url})
        listed = list(client.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter())
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()

    assert health["payment_intents"] == 30
    assert len(listed) == 30
