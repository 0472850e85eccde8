"""The local Stripe server playing real Stripe's variants (tests/stripe_server/FACTS.md),
read back through the official stripe library so the stand-in is held to its types."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import stripe

from tests.stripe_server import run_server, signed_webhook
from tests.stripe_server.app import Stats
from tests.stripe_server.state import StripeState
from tests.stripe_server.templates import DEFAULT_FIXTURES_PATH, embedded_templates, load_templates
from tests.stripe_server.versions import (
    FIRST_BASIL,
    LEGACY_2017,
    PRE_BASIL,
    PRE_REFUND_EVENTS,
    parse_version,
)

pytestmark = pytest.mark.e2e

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


def types(change_or_events) -> list[str]:
    events = getattr(change_or_events, "events", change_or_events)
    return [e["type"] for e in events]


def authorized(srv, pid="pi_auth", amount=5000):
    srv.state.create_payment_intent(id=pid, amount=amount, status="requires_capture", created=T0)
    return pid


# -- API versions: basil and the uncaptured remainder [V3] -------------------------------------


def test_a_partial_capture_before_basil_refunds_the_uncaptured_remainder(srv):
    srv.configure(api_version=PRE_BASIL)
    pid = authorized(srv)

    change = srv.state.capture(pid, 3000, at=T0 + 60)
    client = srv.client(stripe_version=PRE_BASIL)
    pi = client.v1.payment_intents.retrieve(pid, params={"expand": ["latest_charge"]})
    refunds = client.v1.refunds.list(params={"payment_intent": pid})

    assert types(change) == ["refund.created", "charge.refunded", "payment_intent.succeeded"]
    refunded_event = change.events[1]["data"]["object"]
    assert (refunded_event["amount_refunded"], refunded_event["refunded"]) == (2000, False)
    charge = pi.latest_charge
    assert isinstance(charge, stripe.Charge)
    assert (charge.amount, charge.amount_captured, charge.amount_refunded) == (5000, 3000, 2000)
    assert charge.refunded is False
    assert (pi.amount_received, pi.status) == (3000, "succeeded")
    (refund,) = refunds.data
    assert isinstance(refund, stripe.Refund)
    assert (refund.amount, refund.status, refund.charge) == (2000, "succeeded", charge.id)
    assert refund.payment_intent == pid


def test_from_basil_on_a_partial_capture_creates_no_refund_and_no_charge_refunded(srv, client):
    srv.configure(api_version=FIRST_BASIL)
    pid = authorized(srv)

    change = srv.state.capture(pid, 3000, at=T0 + 60)
    charge = client.v1.payment_intents.retrieve(
        pid, params={"expand": ["latest_charge"]}
    ).latest_charge

    assert types(change) == ["payment_intent.succeeded"]
    assert (charge.amount_captured, charge.amount_refunded, charge.refunded) == (3000, 0, False)
    assert client.v1.refunds.list(params={"payment_intent": pid}).data == []


def test_a_released_authorization_before_basil_is_refunded_whole_and_reads_by_version(srv):
    srv.configure(api_version=PRE_BASIL)
    pid = authorized(srv)

    change = srv.state.cancel(pid, reason="automatic", at=T0 + 7 * 86_400)
    old = srv.client(stripe_version=PRE_BASIL).v1.payment_intents.retrieve(
        pid, params={"expand": ["latest_charge"]}
    )
    new = srv.client().v1.payment_intents.retrieve(pid, params={"expand": ["latest_charge"]})
    (refund,) = srv.state.refunds(pid)

    assert types(change) == ["refund.created", "charge.refunded", "payment_intent.canceled"]
    assert (refund["amount"], refund["reason"]) == (5000, "expired_uncaptured_charge")
    # Before basil: amount_captured null, the charge refunded, reason "automatic".
    assert old.latest_charge.amount_captured is None
    assert (old.latest_charge.amount_refunded, old.latest_charge.refunded) == (5000, True)
    assert old.cancellation_reason == "automatic"
    # Read with a basil version the same objects show 0 and "expired"; the Refund, made
    # under the old version, still exists.
    assert new.latest_charge.amount_captured == 0
    assert new.cancellation_reason == "expired"
    assert new.latest_charge.amount_refunded == 5000


def test_a_cancel_from_basil_on_leaves_the_charge_unrefunded(srv, client):
    pid = authorized(srv)

    change = srv.state.cancel(pid, reason="requested_by_customer")
    charge = client.v1.payment_intents.retrieve(
        pid, params={"expand": ["latest_charge"]}
    ).latest_charge

    assert types(change) == ["payment_intent.canceled"]
    assert (charge.captured, charge.amount_captured, charge.amount_refunded) == (False, 0, 0)
    assert charge.refunded is False


def test_a_seed_of_partial_captures_follows_the_account_version(srv):
    srv.configure(api_version=PRE_BASIL)
    srv.state.seed_payment_intents(
        [
            {"id": "pi_seed_old", "amount": 5000, "status": "succeeded", "amount_received": 3000},
            {
                "id": "pi_seed_new",
                "amount": 5000,
                "status": "succeeded",
                "amount_received": 3000,
                "api_version": FIRST_BASIL,
            },
        ]
    )

    assert [r["amount"] for r in srv.state.refunds("pi_seed_old")] == [2000]
    assert srv.state.refunds("pi_seed_new") == []


def test_the_stripe_version_header_of_a_control_write_decides_like_a_request_would(srv):
    authorized(srv, "pi_hdr")
    authorized(srv, "pi_body")

    with httpx.Client(base_url=srv.url) as http:
        by_header = http.post(
            "/_test/payment_intents/pi_hdr/capture",
            json={"amount": 1000},
            headers={"Stripe-Version": PRE_BASIL},
        )
        by_default = http.post("/_test/payment_intents/pi_body/capture", json={"amount": 1000})

    assert by_header.status_code == 200, by_header.text
    assert [e["type"] for e in by_header.json()["events"]][-2:] == [
        "charge.refunded",
        "payment_intent.succeeded",
    ]
    assert [e["type"] for e in by_default.json()["events"]] == ["payment_intent.succeeded"]


def test_responses_carry_the_version_they_were_rendered_in_and_a_bad_one_is_refused(srv):
    srv.state.create_payment_intent(id="pi_v", amount=100)
    auth = {"Authorization": f"Bearer {srv.api_key}"}

    with httpx.Client(base_url=srv.url, headers=auth) as http:
        default = http.get("/v1/payment_intents/pi_v")
        pinned = http.get("/v1/payment_intents/pi_v", headers={"Stripe-Version": PRE_BASIL})
        bad = http.get("/v1/payment_intents/pi_v", headers={"Stripe-Version": "last-tuesday"})

    assert default.headers["Stripe-Version"] == srv.state.api_version == stripe.api_version
    assert pinned.headers["Stripe-Version"] == PRE_BASIL
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == "Invalid Stripe API version: last-tuesday"


def test_events_are_rendered_in_the_account_version_of_their_time_not_the_readers(srv):
    srv.configure(api_version="2022-08-01")
    srv.state.create_payment_intent(id="pi_2022", amount=700, status="succeeded", created=T0)
    srv.state.update_payment_intent("pi_2022", amount_refunded=200, at=T0 + 5)
    srv.configure(api_version=FIRST_BASIL)
    srv.state.create_payment_intent(id="pi_2025", amount=700, status="succeeded", created=T0 + 9)

    events = {
        (e.type, e.data.object.id): e
        for e in srv.client().v1.events.list(params={"limit": 100}).data
    }
    old_pi = events[("payment_intent.succeeded", "pi_2022")]
    old_charge = events[("charge.refunded", "ch_2022")]
    new_pi = events[("payment_intent.succeeded", "pi_2025")]

    assert (old_pi.api_version, new_pi.api_version) == ("2022-08-01", FIRST_BASIL)
    # [V5] Before 2022-11-15 a PaymentIntent lists its charges and a charge its refunds.
    assert [c.id for c in old_pi.data.object.charges.data] == ["ch_2022"]
    assert [r.amount for r in old_charge.data.object.refunds.data] == [200]
    assert "charges" not in new_pi.data.object.to_dict()
    # Event payloads are never expanded [E2].
    assert new_pi.data.object.latest_charge == "ch_2025"


def test_refunds_are_left_out_of_a_charge_unless_expanded(srv, client):
    srv.state.create_payment_intent(
        id="pi_exp", amount=900, status="succeeded", amount_refunded=400, created=T0
    )

    plain = client.v1.payment_intents.retrieve("pi_exp", params={"expand": ["latest_charge"]})
    deep = client.v1.payment_intents.retrieve(
        "pi_exp", params={"expand": ["latest_charge.refunds"]}
    )
    charge = client.v1.charges.retrieve("ch_exp", params={"expand": ["refunds"]})

    assert "refunds" not in plain.latest_charge.to_dict()
    assert [r.amount for r in deep.latest_charge.refunds.data] == [400]
    assert isinstance(charge.refunds.data[0], stripe.Refund)


def test_refund_events_exist_for_charge_refunds_only_from_2024_10_28(srv):
    srv.configure(api_version=PRE_REFUND_EVENTS)
    srv.state.create_payment_intent(id="pi_r1", amount=500, status="succeeded", created=T0)
    before = srv.state.refund("pi_r1", 100, at=T0 + 1)
    srv.configure(api_version=PRE_BASIL)
    after = srv.state.refund("pi_r1", 100, at=T0 + 2)

    assert types(before) == ["charge.refunded"]
    assert types(after) == ["refund.created", "charge.refunded"]


def test_version_names_parse_and_order_by_date():
    assert parse_version(PRE_BASIL).refunds_uncaptured_remainder
    assert not parse_version(FIRST_BASIL).refunds_uncaptured_remainder
    assert not parse_version(stripe.api_version).refunds_uncaptured_remainder
    assert parse_version("2017-08-15").charge_refunds_expanded
    with pytest.raises(ValueError, match="Invalid Stripe API version"):
        parse_version("basil")


# -- fields absent or null (older versions, emulators) [E1] ----------------------------------------


def test_an_emulator_shaped_account_leaves_amount_received_out_of_objects_and_events(srv):
    srv.configure(
        api_version=LEGACY_2017,
        omit_fields=["payment_intent.amount_received", "charge.amount_captured"],
    )
    change = srv.state.create_payment_intent(id="pi_emu", amount=2000, status="succeeded")

    pi = srv.client().v1.payment_intents.retrieve("pi_emu", params={"expand": ["latest_charge"]})
    (event,) = [e for e in change.events if e["type"] == "payment_intent.succeeded"]

    assert pi.status == "succeeded"
    assert "amount_received" not in pi.to_dict()
    assert "amount_captured" not in pi.latest_charge.to_dict()
    assert "amount_received" not in event["data"]["object"]
    assert event["api_version"] == LEGACY_2017
    # The server still knows the money arrived: nothing but the wire shape changed.
    assert srv.state.refund("pi_emu", 500).refund["amount"] == 500


def test_one_payment_can_lack_fields_or_carry_nulls_beside_normal_ones(srv, client):
    srv.state.create_payment_intent(
        id="pi_odd",
        amount=2000,
        status="succeeded",
        omit_fields=["amount_received"],
        null_fields=["currency", "charge.amount_captured"],
    )
    srv.state.create_payment_intent(id="pi_even", amount=2000, status="succeeded")

    odd = client.v1.payment_intents.retrieve("pi_odd", params={"expand": ["latest_charge"]})
    even = client.v1.payment_intents.retrieve("pi_even")

    assert "amount_received" not in odd.to_dict()
    assert odd.currency is None
    assert odd.latest_charge.amount_captured is None
    assert even.amount_received == 2000 and even.currency == "usd"


def test_field_paths_are_checked(srv):
    with pytest.raises(ValueError, match="kind.field"):
        srv.configure(omit_fields=["amount_received"])
    with pytest.raises(ValueError, match="kind.field"):
        srv.state.create_payment_intent(amount=1, omit_fields=["customer.email"])


# -- last_payment_error cleared, the failed charge kept [P3][P4] -----------------------------------


def test_an_update_clears_last_payment_error_while_the_charge_stays_failed(srv, client):
    srv.state.create_payment_intent(
        id="pi_fail",
        amount=900,
        status="requires_payment_method",
        last_payment_error="insufficient_funds",
        created=T0,
    )

    touched = srv.state.update_payment_intent("pi_fail", metadata={"note": "support looked"})
    pi = client.v1.payment_intents.retrieve("pi_fail", params={"expand": ["latest_charge"]})

    assert touched.events == []  # Stripe has no payment_intent.updated event
    assert pi.status == "requires_payment_method"
    assert pi.last_payment_error is None
    assert (pi.latest_charge.status, pi.latest_charge.failure_code) == (
        "failed",
        "insufficient_funds",
    )
    assert pi.latest_charge.paid is False


def test_touching_a_payment_intent_clears_the_error_without_changing_a_field(srv):
    srv.state.create_payment_intent(
        id="pi_touch", amount=900, status="requires_payment_method", last_payment_error=True
    )

    srv.state.touch_payment_intent("pi_touch")
    after = srv.state.payment_intent("pi_touch", expand_charge=True)

    assert after["last_payment_error"] is None
    assert after["latest_charge"]["failure_code"] == "card_declined"


def test_refund_and_dispute_changes_do_not_clear_the_error_of_the_payment_intent(srv):
    srv.state.create_payment_intent(
        id="pi_keep", amount=900, status="requires_payment_method", last_payment_error=True
    )

    srv.state.update_payment_intent("pi_keep", dispute_reason="general")

    assert srv.state.payment_intent("pi_keep")["last_payment_error"]["code"] == "card_declined"


def test_a_retry_makes_a_new_charge_and_the_failed_one_stays_retrievable(srv, client):
    srv.state.create_payment_intent(
        id="pi_retry", amount=900, status="requires_payment_method", last_payment_error=True
    )
    first = srv.state.payment_intent("pi_retry")["latest_charge"]

    srv.state.update_payment_intent("pi_retry", status="succeeded")
    pi = client.v1.payment_intents.retrieve("pi_retry", params={"expand": ["latest_charge"]})
    old = client.v1.charges.retrieve(first)

    assert pi.latest_charge.id != first
    assert (pi.latest_charge.status, pi.latest_charge.amount_captured) == ("succeeded", 900)
    assert (old.status, old.failure_code, old.payment_intent) == (
        "failed",
        "card_declined",
        "pi_retry",
    )


def test_a_processing_payment_that_fails_fails_its_pending_charge(srv):
    srv.state.create_payment_intent(id="pi_ach", amount=5000, status="processing")
    pending = srv.state.payment_intent("pi_ach", expand_charge=True)["latest_charge"]

    srv.state.update_payment_intent(
        "pi_ach", status="requires_payment_method", last_payment_error="account_closed"
    )
    failed = srv.state.payment_intent("pi_ach", expand_charge=True)["latest_charge"]

    assert pending["status"] == "pending"
    assert (failed["id"], failed["status"], failed["failure_code"]) == (
        pending["id"],
        "failed",
        "account_closed",
    )


# -- disputes [D1]-[D6] ------------------------------------------------------------------------


def paid(srv, pid="pi_paid", amount=5000):
    srv.state.create_payment_intent(id=pid, amount=amount, status="succeeded", created=T0)
    return pid


def test_a_chargeback_withdraws_funds_and_a_won_dispute_reinstates_them(srv, client):
    pid = paid(srv)

    opened = srv.state.open_dispute(pid, reason="product_not_received", at=T0 + 86_400)
    dispute_id = opened.dispute["id"]
    listed = client.v1.disputes.list(params={"payment_intent": pid})
    reviewed = srv.state.update_dispute(dispute_id, status="under_review", at=T0 + 2 * 86_400)
    won = srv.state.update_dispute(dispute_id, status="won", at=T0 + 30 * 86_400)
    dispute = client.v1.disputes.retrieve(dispute_id)
    charge = client.v1.payment_intents.retrieve(
        pid, params={"expand": ["latest_charge"]}
    ).latest_charge

    assert types(opened) == ["charge.dispute.created", "charge.dispute.funds_withdrawn"]
    assert types(reviewed) == ["charge.dispute.updated"]
    assert types(won) == ["charge.dispute.closed", "charge.dispute.funds_reinstated"]
    (first,) = listed.data
    assert isinstance(first, stripe.Dispute)
    assert (first.status, first.amount, first.reason) == (
        "needs_response",
        5000,
        "product_not_received",
    )
    assert first.evidence_details.due_by == T0 + 8 * 86_400 + (86_400 - T0 % 86_400) - 1
    assert first.is_charge_refundable is False
    assert first.payment_method_details.card.case_type == "chargeback"
    assert (dispute.status, dispute.evidence_details.submission_count) == ("won", 1)
    assert [t.amount for t in dispute.balance_transactions] == [-5000, 5000]
    assert charge.disputed is True


def test_an_inquiry_withdraws_nothing_and_closes_or_escalates(srv):
    closed_pid, escalated_pid = paid(srv, "pi_inq_a"), paid(srv, "pi_inq_b")

    inquiry = srv.state.open_dispute(closed_pid, status="warning_needs_response", due_by=T0 + 9)
    closed = srv.state.update_dispute(inquiry.dispute["id"], status="warning_closed")
    other = srv.state.open_dispute(escalated_pid, status="warning_needs_response")
    escalated = srv.state.update_dispute(other.dispute["id"], status="needs_response")

    assert types(inquiry) == ["charge.dispute.created"]
    assert inquiry.dispute["is_charge_refundable"] is True
    assert inquiry.dispute["evidence_details"]["due_by"] == T0 + 9
    assert inquiry.dispute["payment_method_details"]["card"]["case_type"] == "inquiry"
    assert inquiry.dispute["balance_transactions"] == []
    assert types(closed) == ["charge.dispute.closed"]
    assert types(escalated) == ["charge.dispute.updated", "charge.dispute.funds_withdrawn"]
    assert escalated.dispute["id"] == other.dispute["id"]


def test_a_lost_dispute_closes_without_reinstating(srv):
    opened = srv.state.open_dispute(paid(srv))

    lost = srv.state.update_dispute(opened.dispute["id"], status="lost")

    assert types(lost) == ["charge.dispute.closed"]
    assert [t["amount"] for t in lost.dispute["balance_transactions"]] == [-5000]


def test_disputes_move_only_the_ways_stripe_moves_them(srv):
    pid = paid(srv)
    opened = srv.state.open_dispute(pid)
    dispute_id = opened.dispute["id"]

    with pytest.raises(ValueError, match="cannot become an inquiry"):
        srv.state.update_dispute(dispute_id, status="warning_under_review")
    srv.state.update_dispute(dispute_id, status="lost")
    with pytest.raises(ValueError, match="closed"):
        srv.state.update_dispute(dispute_id, status="won")
    with pytest.raises(ValueError, match="reason"):
        srv.state.open_dispute(pid, reason="felt like it")
    srv.state.open_dispute(paid(srv, "pi_open"))
    with pytest.raises(ValueError, match="charge_disputed"):
        srv.state.refund("pi_open")


def test_the_legacy_disputed_flag_makes_a_dispute_object(srv, client):
    pid = paid(srv)

    change = srv.state.update_payment_intent(pid, disputed=True, dispute_reason="duplicate")
    (dispute,) = client.v1.disputes.list(params={"payment_intent": pid}).data

    assert types(change) == ["charge.dispute.created"]
    assert (dispute.id, dispute.status, dispute.reason) == (
        "dp_paid",
        "needs_response",
        "duplicate",
    )


def test_disputes_list_filters_by_charge_pages_and_expands(srv, client):
    for n in range(3):
        srv.state.open_dispute(paid(srv, f"pi_d{n}"), at=T0 + n)

    first = client.v1.disputes.list(params={"limit": 2})
    rest = client.v1.disputes.list(params={"limit": 2, "starting_after": first.data[-1].id})
    by_charge = client.v1.disputes.list(params={"charge": "ch_d1", "expand": ["data.charge"]})

    assert [d.payment_intent for d in first.data] == ["pi_d2", "pi_d1"]
    assert first.has_more is True
    assert [d.payment_intent for d in rest.data] == ["pi_d0"]
    assert isinstance(by_charge.data[0].charge, stripe.Charge)
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.disputes.list(params={"starting_after": "dp_gone"})
    assert raised.value.code == "resource_missing"


# -- refunds [R1]-[R5] ------------------------------------------------------------------------


def test_refunds_are_objects_that_move_and_fail(srv, client):
    pid = paid(srv)

    first = srv.state.refund(pid, 300, status="pending", at=T0 + 1)
    done = srv.state.update_refund(first.refund["id"], status="succeeded", at=T0 + 2)
    second = srv.state.refund(pid, 200, at=T0 + 3)
    failed = srv.state.update_refund(
        second.refund["id"], status="failed", failure_reason="expired_or_canceled_card"
    )
    listed = client.v1.refunds.list(params={"payment_intent": pid})
    one = client.v1.refunds.retrieve(second.refund["id"], params={"expand": ["payment_intent"]})
    charge = client.v1.charges.retrieve(f"ch_{pid[3:]}")

    assert types(first) == ["refund.created", "charge.refunded"]
    assert first.refund["pending_reason"] == "processing"
    assert types(done) == ["refund.updated", "charge.refund.updated"]
    assert types(failed) == ["refund.failed", "charge.refund.updated"]
    assert failed.events[-1]["data"]["object"]["object"] == "refund"
    assert [(r.amount, r.status) for r in listed.data] == [(200, "failed"), (300, "succeeded")]
    assert one.failure_reason == "expired_or_canceled_card"
    assert isinstance(one.payment_intent, stripe.PaymentIntent)
    assert (charge.amount_refunded, charge.refunded) == (300, False)


def test_refunds_are_checked_like_stripe_checks_them(srv):
    pid = paid(srv, amount=1000)
    srv.state.create_payment_intent(id="pi_open_auth", amount=1000, status="requires_capture")
    refund = srv.state.refund(pid, 1000).refund

    with pytest.raises(ValueError, match="left to refund"):
        srv.state.refund(pid, 1)
    with pytest.raises(ValueError, match="no captured charge"):
        srv.state.refund("pi_open_auth")
    with pytest.raises(ValueError, match="cannot become"):
        srv.state.update_refund(refund["id"], status="pending")
    with pytest.raises(ValueError, match="cannot go down"):
        srv.state.update_payment_intent(pid, amount_refunded=10)


def test_the_legacy_amount_refunded_field_makes_refund_objects(srv, client):
    pid = paid(srv)
    srv.state.update_payment_intent(pid, amount_refunded=1000, at=T0 + 1)
    srv.state.update_payment_intent(pid, amount_refunded=1500, at=T0 + 2)

    refunds = client.v1.refunds.list(params={"payment_intent": pid}).data

    assert [r.amount for r in refunds] == [500, 1000]
    assert client.v1.refunds.list(params={"charge": "ch_paid"}).data[0].id == refunds[0].id


# -- early fraud warnings [F1]-[F3] -------------------------------------------------------------


def test_an_early_fraud_warning_is_listed_by_payment_intent_until_refunded(srv, client):
    pid = paid(srv)

    warned = srv.state.add_early_fraud_warning(pid, fraud_type="made_with_stolen_card")
    (listed,) = client.v1.radar.early_fraud_warnings.list(params={"payment_intent": pid}).data
    refunded = srv.state.refund(pid)
    after = client.v1.radar.early_fraud_warnings.retrieve(listed.id)

    assert types(warned) == ["radar.early_fraud_warning.created"]
    assert isinstance(listed, stripe.radar.EarlyFraudWarning)
    assert (listed.actionable, listed.charge, listed.payment_intent) == (True, "ch_paid", pid)
    assert types(refunded)[-1] == "radar.early_fraud_warning.updated"
    assert after.actionable is False
    with pytest.raises(ValueError, match="fraud_type"):
        srv.state.add_early_fraud_warning(pid, fraud_type="bad vibes")


# -- charge.* beside payment_intent.* [C1] ------------------------------------------------------


def test_companion_events_follow_the_charge_of_each_move(srv):
    srv.configure(companion_events=True)
    state = srv.state
    state.create_payment_intent(id="pi_c", amount=800, status="processing", created=T0)
    failed = state.update_payment_intent(
        "pi_c", status="requires_payment_method", last_payment_error=True
    )
    paid_ = state.update_payment_intent("pi_c", status="succeeded")
    state.create_payment_intent(id="pi_m", amount=800, status="requires_capture")
    captured = state.capture("pi_m")
    state.create_payment_intent(id="pi_x", amount=800, status="requires_capture")
    expired = state.cancel("pi_x", reason="automatic")
    refunded = state.update_payment_intent("pi_c", amount_refunded=100)

    assert types(state.events())[:2] == ["payment_intent.created", "charge.pending"]
    assert types(failed) == ["charge.failed", "payment_intent.payment_failed"]
    assert types(paid_) == ["charge.succeeded", "payment_intent.succeeded"]
    assert types(captured) == ["charge.captured", "payment_intent.succeeded"]
    assert types(expired) == ["charge.expired", "payment_intent.canceled"]
    assert types(refunded) == ["refund.created", "charge.refunded"]
    event = stripe.convert_to_stripe_object(paid_.events[0])
    assert isinstance(event.data.object, stripe.Charge)
    assert event.data.object.payment_intent == "pi_c"


def test_without_companion_events_each_move_sends_what_it_always_sent(srv):
    srv.state.create_payment_intent(id="pi_plain", amount=800, status="processing")

    assert types(srv.state.update_payment_intent("pi_plain", status="succeeded")) == [
        "payment_intent.succeeded"
    ]


def test_events_refuse_expand_and_carry_ids(srv, client):
    srv.state.create_payment_intent(id="pi_ids", amount=100, status="succeeded")

    event = client.v1.events.list().data[0]

    assert event.data.object.latest_charge == "ch_ids"
    with pytest.raises(stripe.InvalidRequestError, match="cannot be expanded"):
        client.v1.events.list(params={"expand": ["data.object.latest_charge"]})


# -- livemode and Connect account [A1] ------------------------------------------------------


def test_an_event_can_say_live_mode_and_name_a_connected_account(srv, client):
    plain = srv.state.create_payment_intent(id="pi_plain", amount=100, status="succeeded")
    live = srv.state.create_payment_intent(
        id="pi_live",
        amount=100,
        status="succeeded",
        envelope={"livemode": True, "account": "acct_123"},
    )
    srv.configure(event_account="acct_999")
    connect = srv.state.add_event("customer.created", {"id": "cus_1", "object": "customer"})

    parsed = stripe.convert_to_stripe_object(live.event)

    assert "account" not in plain.event and plain.event["livemode"] is False
    assert (parsed.livemode, parsed.account) == (True, "acct_123")
    assert parsed.data.object.livemode is True
    assert connect["account"] == "acct_999"
    # The object itself, read over the API, is a test-mode object of this account.
    assert client.v1.payment_intents.retrieve("pi_live").livemode is False
    with pytest.raises(ValueError, match="acct_"):
        srv.state.add_event("x.y", {"id": "x"}, envelope={"account": "me"})


# -- thin events [T1]-[T4] -------------------------------------------------------------------------


def test_thin_events_verify_parse_and_fetch_with_the_official_library(srv):
    srv.configure(thin_events=True)
    change = srv.state.create_payment_intent(
        id="pi_thin", amount=2500, status="succeeded", envelope={"account": "acct_42"}
    )
    client = srv.client()

    thin = change.thin_events[-1]
    body, headers = signed_webhook(thin, "whsec_thin")
    notification = client.parse_event_notification(body, headers["Stripe-Signature"], "whsec_thin")
    related = notification.fetch_related_object()
    full = notification.fetch_event()

    assert len(change.thin_events) == len(change.events) == 2
    assert set(thin) == {"id", "object", "type", "created", "livemode", "context", "related_object"}
    assert (thin["object"], thin["type"]) == ("v2.core.event", "v1.payment_intent.succeeded")
    assert thin["related_object"] == {
        "id": "pi_thin",
        "type": "payment_intent",
        "url": "/v1/payment_intents/pi_thin",
    }
    assert type(notification).__name__ == "V1PaymentIntentSucceededEventNotification"
    assert str(notification.context) == "acct_42"
    assert isinstance(related, stripe.PaymentIntent) and related.amount_received == 2500
    assert full.snapshot_event == change.events[-1]["id"]
    assert srv.calls("v2.core.events.retrieve", "200") == 1
    with pytest.raises(ValueError, match="construct_event"):
        snap_body, snap_headers = signed_webhook(change.events[-1], "whsec_thin")
        client.parse_event_notification(snap_body, snap_headers["Stripe-Signature"], "whsec_thin")


def test_any_stored_event_has_a_thin_twin_and_unknown_ones_are_404(srv, client):
    opened = srv.state.open_dispute(paid(srv))

    thin = srv.state.thin_event(opened.events[0]["id"])
    again = srv.state.thin_event(opened.events[0]["id"])
    notification = client.parse_event_notification_without_verification(json.dumps(thin))

    assert thin == again
    assert thin["related_object"]["url"] == f"/v1/disputes/{opened.dispute['id']}"
    assert isinstance(notification.fetch_related_object(), stripe.Dispute)
    with pytest.raises(stripe.InvalidRequestError):
        client.raw_request("get", "/v2/core/events/evt_nope")


# -- rate limits, Stripe-Should-Retry, per-second counts [L1]-[L5] ------------------------------


def test_an_endpoint_limit_refuses_that_endpoint_while_others_still_answer(srv, client):
    paid(srv)
    srv.configure(endpoint_rate_limit=2)

    for _ in range(2):
        client.v1.payment_intents.retrieve("pi_paid")
    with pytest.raises(stripe.RateLimitError) as raised:
        client.v1.payment_intents.retrieve("pi_paid")
    client.v1.payment_intents.list()
    client.v1.payment_intents.list()

    assert raised.value.json_body["error"] == {
        "type": "invalid_request_error",
        "message": "Request rate limit exceeded. You can learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
        "code": "rate_limit",
        "doc_url": "https://stripe.com/docs/error-codes/rate-limit",
    }
    assert "Stripe-Should-Retry" not in raised.value.headers
    assert srv.calls("payment_intents.retrieve", "429") == 1
    assert srv.calls("payment_intents.list", "200") == 2


def test_an_endpoint_limit_also_counts_against_the_global_one(srv, client):
    paid(srv)
    srv.configure(rate_limit=3, endpoint_rate_limits={"payment_intents.retrieve": 2})

    client.v1.payment_intents.retrieve("pi_paid")
    client.v1.payment_intents.retrieve("pi_paid")
    client.v1.events.list()
    with pytest.raises(stripe.RateLimitError):
        client.v1.events.list()

    assert srv.calls(outcome="429") == 1


def test_stripe_should_retry_false_stops_the_librarys_retries_and_true_starts_them(srv):
    paid(srv)
    retrying = srv.client(max_network_retries=2)
    srv.configure(fail_next=1, error_status=503, error_should_retry=False)

    with pytest.raises(stripe.APIError) as raised:
        retrying.v1.payment_intents.retrieve("pi_paid")
    assert raised.value.headers["Stripe-Should-Retry"] == "false"
    assert srv.calls("payment_intents.retrieve") == 1

    srv.configure(rate_limit=1, rate_burst=1, rate_limit_should_retry=True)
    retrying.v1.payment_intents.retrieve("pi_paid")
    pi = retrying.v1.payment_intents.retrieve("pi_paid")  # 429 first, retried after backoff

    assert pi.id == "pi_paid"
    assert srv.calls("payment_intents.retrieve", "429") >= 1


def test_a_lock_timeout_can_be_injected_with_its_own_code(srv, client):
    paid(srv)
    srv.configure(fail_next=1, error_status=429, error_code="lock_timeout", error_should_retry=True)

    with pytest.raises(stripe.RateLimitError) as raised:
        client.v1.payment_intents.retrieve("pi_paid")

    assert raised.value.json_body["error"]["code"] == "lock_timeout"
    assert raised.value.headers["Stripe-Should-Retry"] == "true"


def test_calls_are_counted_per_second_and_the_busiest_second_is_reported(srv, client):
    paid(srv)
    srv.configure(endpoint_rate_limit=5)
    limited = 0
    for _ in range(8):
        try:
            client.v1.payment_intents.retrieve("pi_paid")
        except stripe.RateLimitError:
            limited += 1
    client.v1.events.list()

    per_second = srv.calls_per_second("payment_intents.retrieve")
    with httpx.Client(base_url=srv.url) as http:
        stats = http.get("/_test/stats", params={"per_second": "1"}).json()

    assert sum(per_second.values()) == 8
    assert all(isinstance(second, int) for second in per_second)
    assert srv.peak_calls("payment_intents.retrieve") >= 5
    # Eight calls in well under a second: the bucket of 5 admits 5 (6 if a refill slipped in).
    assert 5 <= srv.peak_calls("payment_intents.retrieve", admitted_only=True) <= 6
    assert limited >= 2
    assert stats["peak"] == srv.peak_calls()
    assert sum(stats["per_second"].values()) == 9


def test_the_busiest_window_slides_across_clock_seconds():
    stats = Stats()
    for at in (100.0, 100.5, 100.99, 101.2, 101.3, 103.0):
        stats.record("payment_intents.retrieve", 200, at)
    stats.record("payment_intents.retrieve", 429, 101.4)

    assert stats.per_second() == {100: 3, 101: 3, 103: 1}
    assert stats.peak() == 5  # 100.5 .. 101.4
    assert stats.peak(admitted_only=True) == 4
    assert stats.peak(window=0.25) == 3


# -- the control plane and templates --------------------------------------------------------------


def test_another_process_can_drive_every_variant_over_http(srv):
    with httpx.Client(base_url=srv.url) as http:
        config = http.post(
            "/_test/config", json={"api_version": PRE_BASIL, "companion_events": True}
        ).json()
        http.post(
            "/_test/payment_intents",
            json={"id": "pi_h", "amount": 4000, "status": "requires_capture", "created": T0},
        )
        capture = http.post("/_test/payment_intents/pi_h/capture", json={"amount": 2500}).json()
        refund = http.post("/_test/payment_intents/pi_h/refunds", json={"amount": 500}).json()
        failed = http.post(
            f"/_test/refunds/{refund['refund']['id']}",
            json={"status": "failed", "failure_reason": "declined"},
        ).json()
        dispute = http.post("/_test/payment_intents/pi_h/disputes", json={}).json()
        closed = http.post(
            f"/_test/disputes/{dispute['dispute']['id']}", json={"status": "lost"}
        ).json()
        efw = http.post("/_test/payment_intents/pi_h/early_fraud_warnings", json={}).json()
        thin = http.get(f"/_test/events/{closed['event']['id']}/thin").json()
        missing = http.post("/_test/refunds/re_nope", json={"status": "failed"})
        bad = http.post("/_test/config", json={"api_version": "soon"})

    assert config["api_version"] == PRE_BASIL and config["companion_events"] is True
    assert [e["type"] for e in capture["events"]] == [
        "charge.captured",
        "refund.created",
        "charge.refunded",
        "payment_intent.succeeded",
    ]
    assert failed["refund"]["status"] == "failed"
    assert closed["dispute"]["status"] == "lost"
    assert efw["early_fraud_warning"]["actionable"] is False  # already disputed
    assert thin["type"] == "v1.charge.dispute.closed"
    assert missing.status_code == 404
    assert bad.status_code == 400


def test_a_reset_restores_the_account_settings_the_server_started_with():
    with run_server(api_version=PRE_BASIL, companion_events=True) as alone:
        alone.configure(api_version=FIRST_BASIL, companion_events=False, thin_events=True)
        alone.reset()

        assert alone.state.api_version == PRE_BASIL
        assert alone.state.settings.companion_events is True
        assert alone.state.settings.thin_events is False


@pytest.mark.skipif(not DEFAULT_FIXTURES_PATH.is_file(), reason="shared fixtures not present")
def test_the_embedded_refund_and_warning_templates_have_the_fixtures_fields():
    real, embedded = load_templates(DEFAULT_FIXTURES_PATH), embedded_templates()

    for resource in ("refund", "early_fraud_warning"):
        assert set(getattr(embedded, resource)) == set(getattr(real, resource)), resource


def test_a_state_built_directly_takes_the_same_settings():
    state = StripeState(api_version=PRE_BASIL, omit_fields=["payment_intent.amount_received"])
    state.create_payment_intent(id="pi_s", amount=10, status="succeeded", created=T0)

    assert "amount_received" not in state.payment_intent("pi_s")
    assert state.version().refunds_uncaptured_remainder
    with pytest.raises(ValueError, match="unknown account settings"):
        state.configure(livemode=True)
    assert time.time() > T0
