"""BlnkLedger one call at a time, against ``responses`` (Blnk's JSON as its source writes it).

The claims table lives in an in-memory SQLite database: nothing leaves the process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import responses
from sqlalchemy import Connection, create_engine

from ledger.blnk import BlnkClient, BlnkLedger
from ledger.blnk import metadata as blnk_metadata
from ledger.errors import (
    AlreadyVoided,
    LedgerAccessDenied,
    LedgerBusy,
    LedgerUnavailable,
    UnknownBalance,
    UnreadableRecord,
)
from ledger.model import NewTransaction, TxnStatus

URL = "http://blnk.test"
KEY = "blnk_unit_secret"
WALLET = "bln_wallet"
STRIPE = "bln_stripe_usd"


@pytest.fixture
def conn() -> Iterator[Connection]:
    engine = create_engine("sqlite://")
    blnk_metadata.create_all(engine)
    with engine.begin() as c:
        yield c
    engine.dispose()


@pytest.fixture
def ledger(conn: Connection) -> BlnkLedger:
    client = BlnkClient(URL, KEY, max_attempts=3, backoff_initial=0.001, backoff_max=0.002)
    client.remember(STRIPE, "@stripe", "USD")
    client.remember(WALLET, None, "USD")
    return BlnkLedger(conn, client)


def record(**kw: Any) -> dict[str, Any]:
    """A transaction as api/transactions.go answers it (model/transaction.go fields)."""
    base: dict[str, Any] = {
        "precise_amount": 5000,
        "amount": 50.0,
        "amount_string": "50",
        "precision": 100,
        "transaction_id": "txn_hold",
        "parent_transaction": "",
        "source": STRIPE,
        "destination": WALLET,
        "reference": "pi_1",
        "currency": "USD",
        "description": "top-up",
        "status": "INFLIGHT",
        "inflight": True,
        "created_at": "2026-11-20T10:00:00.123456789Z",
        "inflight_expiry_date": "0001-01-01T00:00:00Z",
        "meta_data": {"customer": "cus_1", "allow_overdraft": True},
    }
    return {**base, **kw}


def child(status: str, amount: int, tid: str = "txn_child") -> dict[str, Any]:
    return record(
        transaction_id=tid,
        parent_transaction="txn_hold",
        status=status,
        precise_amount=amount,
        reference="ref_" + tid,
    )


def by_ref(rec: dict[str, Any] | None, ref: str = "pi_1") -> None:
    if rec is None:
        responses.get(
            f"{URL}/transactions/reference/{ref}",
            status=404,
            json={
                "error": f"Transaction with reference '{ref}' not found",
                "error_detail": {"code": "TXN_NOT_FOUND", "message": "not found"},
            },
        )
    else:
        responses.get(f"{URL}/transactions/reference/{ref}", json=rec)


def children(*recs: dict[str, Any]) -> None:
    responses.post(f"{URL}/transactions/filter", json=list(recs))


def error(code: str, status: int, message: str = "refused") -> dict[str, Any]:
    return {"error": message, "error_detail": {"code": code, "message": message}}


@responses.activate
def test_money_is_read_from_precise_amount_and_never_from_the_float_amount(ledger):
    by_ref(record(amount=12.34, amount_string="12.34"))
    children(child("APPLIED", 2000))
    txn = ledger.get("pi_1")
    assert (txn.amount, txn.committed_amount, txn.status) == (5000, 2000, TxnStatus.INFLIGHT)
    assert txn.source == "@stripe" and txn.metadata == {"customer": "cus_1"}
    assert txn.created_at.microsecond == 123456


@responses.activate
def test_a_record_without_precise_amount_is_unreadable_not_zero(ledger):
    rec = record()
    del rec["precise_amount"]
    by_ref(rec)
    children()
    with pytest.raises(UnreadableRecord, match="precise_amount is None"):
        ledger.get("pi_1")


@responses.activate
def test_another_precision_converts_exactly_or_not_at_all(ledger):
    by_ref(record(precise_amount=500_000, precision=10_000))
    children()
    assert ledger.get("pi_1").amount == 5000
    responses.reset()
    by_ref(record(precise_amount=500_001, precision=10_000))
    children()
    with pytest.raises(UnreadableRecord, match="not a whole number"):
        ledger.get("pi_1")


@pytest.mark.parametrize(
    ("status", "expected"),
    [("APPLIED", TxnStatus.APPLIED), ("REJECTED", TxnStatus.VOID)],
)
@responses.activate
def test_blnk_statuses_map_onto_ours(ledger, status, expected):
    by_ref(record(status=status, inflight=False))
    txn = ledger.get("pi_1")
    assert txn.status is expected
    assert (txn.committed_amount, txn.voided_amount) == (
        (5000, 0) if expected is TxnStatus.APPLIED else (0, 5000)
    )


@responses.activate
def test_a_scheduled_or_queued_non_inflight_record_is_retry_later_and_unknown_is_unreadable(
    ledger,
):
    by_ref(record(status="SCHEDULED", inflight=False))
    with pytest.raises(LedgerBusy):
        ledger.get("pi_1")
    responses.reset()
    by_ref(record(status="LOST"))
    with pytest.raises(UnreadableRecord, match="status is 'LOST'"):
        ledger.get("pi_1")


@responses.activate
def test_references_are_url_encoded_into_the_path(ledger):
    responses.get(f"{URL}/transactions/reference/order%2F7%20a", status=404, json={})
    assert ledger.get("order/7 a") is None


@responses.activate
def test_reads_are_retried_through_5xx_and_carry_the_key(ledger):
    responses.get(f"{URL}/transactions/reference/pi_1", status=503, body="<html>busy</html>")
    responses.get(f"{URL}/transactions/reference/pi_1", status=500, json=error("GEN_INTERNAL", 500))
    by_ref(record())
    children()
    assert ledger.get("pi_1").amount == 5000
    assert all(c.request.headers["X-Blnk-Key"] == KEY for c in responses.calls)
    assert len(responses.calls) == 4


@responses.activate
def test_5xx_beyond_the_attempts_is_ledger_unavailable(ledger):
    for _ in range(3):
        responses.get(f"{URL}/transactions/reference/pi_1", status=502)
    with pytest.raises(LedgerUnavailable, match="after 3 attempts"):
        ledger.get("pi_1")


@responses.activate
def test_a_refused_key_is_access_denied_and_the_key_is_not_in_the_message(ledger):
    responses.get(
        f"{URL}/transactions/reference/pi_1",
        status=401,
        json=error("AUTH_INVALID_API_KEY", 401, "Invalid API key"),
    )
    with pytest.raises(LedgerAccessDenied) as caught:
        ledger.get("pi_1")
    assert KEY not in str(caught.value) and "AUTH_INVALID_API_KEY" in str(caught.value)
    assert len(responses.calls) == 1  # not retried


@responses.activate
def test_a_partial_commit_sends_precise_amount_and_skip_queue_and_no_float(ledger):
    by_ref(record())
    children()
    responses.put(f"{URL}/transactions/inflight/txn_hold", json=child("APPLIED", 1500))
    txn = ledger.commit("pi_1", 1500)
    put = next(c for c in responses.calls if c.request.method == "PUT")
    assert json.loads(put.request.body) == {
        "status": "commit",
        "skip_queue": True,
        "precise_amount": 1500,
    }
    assert (txn.committed_amount, txn.status) == (1500, TxnStatus.INFLIGHT)


@responses.activate
def test_a_partial_commit_whose_answer_was_lost_is_not_sent_twice(ledger):
    by_ref(record())
    children()  # before: no children
    responses.put(f"{URL}/transactions/inflight/txn_hold", status=502)
    children(child("APPLIED", 1500, "txn_new"))  # after the lost answer: it landed
    txn = ledger.commit("pi_1", 1500)
    assert txn.committed_amount == 1500
    assert [c.request.method for c in responses.calls].count("PUT") == 1


@responses.activate
def test_already_committed_is_success_for_a_full_commit_and_already_voided_is_typed(ledger):
    by_ref(record())
    children()
    responses.put(
        f"{URL}/transactions/inflight/txn_hold",
        status=409,
        json=error("TXN_ALREADY_COMMITTED", 409, "cannot commit. Transaction already committed"),
    )
    by_ref(record())
    children(child("APPLIED", 5000))
    assert ledger.commit("pi_1").status is TxnStatus.APPLIED
    responses.reset()
    by_ref(record())
    children()
    responses.put(
        f"{URL}/transactions/inflight/txn_hold",
        status=409,
        json=error("TXN_ALREADY_VOIDED", 409, "transaction has already been voided"),
    )
    with pytest.raises(AlreadyVoided, match="TXN_ALREADY_VOIDED"):
        ledger.commit("pi_1")


@responses.activate
def test_a_void_met_by_already_voided_is_the_wanted_outcome(ledger):
    by_ref(record())
    children()
    responses.put(
        f"{URL}/transactions/inflight/txn_hold",
        status=409,
        json=error("TXN_ALREADY_VOIDED", 409, "transaction has already been voided"),
    )
    by_ref(record())
    children(child("VOID", 5000))
    assert ledger.void("pi_1").status is TxnStatus.VOID


@responses.activate
def test_a_named_balance_blnk_does_not_know_is_an_unknown_balance(ledger):
    by_ref(None, "pi_9")
    responses.get(
        f"{URL}/balances/wallet%3Aalice",
        status=404,
        json=error("BAL_NOT_FOUND", 404, "Balance with ID 'wallet:alice' not found"),
    )
    with pytest.raises(UnknownBalance, match="by its id"):
        ledger.create(NewTransaction("pi_9", "@stripe", "wallet:alice", 100, "USD"))
    assert not [c for c in responses.calls if c.request.method == "POST"]


@responses.activate
def test_a_create_sends_the_minor_units_as_precise_amount_with_the_currency_precision(ledger):
    by_ref(None, "pi_j")
    responses.get(f"{URL}/balances/bln_jp", json={"balance_id": "bln_jp", "currency": "JPY"})
    responses.post(
        f"{URL}/transactions",
        status=201,
        json=record(
            reference="pi_j",
            currency="JPY",
            precise_amount=700,
            precision=1,
            source="bln_stripe_jpy",
            destination="bln_jp",
        ),
    )
    txn = ledger.create(NewTransaction("pi_j", "@stripe", "bln_jp", 700, "JPY"))
    post = next(c for c in responses.calls if c.request.method == "POST")
    body = json.loads(post.request.body)
    assert (body["precise_amount"], body["precision"], body["skip_queue"]) == (700, 1, True)
    assert "amount" not in body and body["allow_overdraft"] is True
    assert (txn.amount, txn.currency, txn.source) == (700, "JPY", "@stripe")
