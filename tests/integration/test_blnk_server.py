"""The Blnk stand-in behaves as Blnk's source says (each test names the file it follows)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests

from tests.blnk_server import MASTER_KEY, RECON_KEY, RunningBlnk, run_server
from tests.blnk_server.state import rfc3339

pytestmark = pytest.mark.integration


@pytest.fixture
def blnk() -> Iterator[RunningBlnk]:
    with run_server() as srv:
        yield srv


class Api:
    def __init__(self, srv: RunningBlnk, key: str | None = RECON_KEY) -> None:
        self.srv = srv
        self.headers = {"X-Blnk-Key": key} if key else {}

    def post(self, path: str, body: Any) -> requests.Response:
        return requests.post(self.srv.url + path, json=body, headers=self.headers, timeout=5)

    def put(self, path: str, body: Any) -> requests.Response:
        return requests.put(self.srv.url + path, json=body, headers=self.headers, timeout=5)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.srv.url + path, headers=self.headers, timeout=5)

    def hold(self, ref: str = "pi_1", amount: int = 5000, **kw: Any) -> dict[str, Any]:
        body = {
            "reference": ref,
            "precise_amount": amount,
            "precision": 100,
            "currency": kw.pop("currency", "USD"),
            "source": kw.pop("source", "@stripe"),
            "destination": kw.pop("destination"),
            "description": "top-up",
            "inflight": kw.pop("inflight", True),
            "skip_queue": kw.pop("skip_queue", True),
            "allow_overdraft": True,
            **kw,
        }
        resp = self.post("/transactions", body)
        assert resp.status_code == 201, resp.text
        return resp.json()

    def settle(self, tid: str, status: str, **kw: Any) -> requests.Response:
        return self.put(
            f"/transactions/inflight/{tid}", {"status": status, "skip_queue": True, **kw}
        )


def code(resp: requests.Response) -> tuple[int, str]:
    return resp.status_code, resp.json()["error_detail"]["code"]


def test_auth_takes_the_x_blnk_key_header_and_checks_the_key_scopes(blnk):
    # api/middleware/auth.go Authenticate, api/middleware/scope.go HasPermission
    assert code(Api(blnk, None).get("/transactions/reference/x")) == (401, "AUTH_MISSING_API_KEY")
    assert code(Api(blnk, "wrong").get("/transactions/reference/x")) == (
        401,
        "AUTH_INVALID_API_KEY",
    )
    scoped = Api(blnk)
    assert code(
        scoped.post("/balances", {"currency": "USD", "ledger_id": "general_ledger_id"})
    ) == (
        403,
        "AUTH_INSUFFICIENT_PERMISSIONS",
    )
    assert code(scoped.get("/transactions/reference/x")) == (404, "TXN_NOT_FOUND")
    master = Api(blnk, MASTER_KEY)
    assert master.post("/balances", {"currency": "USD", "ledger_id": "general_ledger_id"}).ok


def test_an_indicator_is_one_balance_per_currency_and_transactions_store_balance_ids(blnk):
    api = Api(blnk)
    usd = blnk.state.create_balance("USD").balance_id
    jpy = blnk.state.create_balance("JPY").balance_id
    first = api.hold("pi_usd", 5000, destination=usd)
    second = api.hold("pi_jpy", 700, currency="JPY", precision=1, destination=jpy)
    assert first["source"].startswith("bln_") and first["source"] != second["source"]
    stripe_usd = api.get("/balances/indicator/@stripe/currency/USD").json()
    stripe_jpy = api.get("/balances/indicator/@stripe/currency/JPY").json()
    assert (stripe_usd["balance_id"], stripe_jpy["balance_id"]) == (
        first["source"],
        second["source"],
    )
    assert stripe_jpy["inflight_debit_balance"] == 700


def test_money_is_precise_amount_with_precision_and_amount_is_a_derived_float(blnk):
    api = Api(blnk)
    wallet = blnk.state.create_balance("USD").balance_id
    txn = api.hold("pi_1", 1999, destination=wallet)
    assert (txn["precise_amount"], txn["precision"], txn["amount"]) == (1999, 100, 19.99)
    # api/model/model.go ValidateRecordTransaction: one of amount / precise_amount, not both
    both = api.post(
        "/transactions",
        {
            "reference": "pi_2",
            "amount": 19.99,
            "precise_amount": 1999,
            "currency": "USD",
            "source": "@stripe",
            "destination": wallet,
            "description": "x",
        },
    )
    assert code(both) == (400, "TXN_VALIDATION_ERROR") and "errors" in both.json()


def test_a_duplicate_reference_answers_409_txn_duplicate_reference(blnk):
    api = Api(blnk)
    wallet = blnk.state.create_balance("USD").balance_id
    api.hold("pi_1", destination=wallet)
    again = api.post(
        "/transactions",
        {
            "reference": "pi_1",
            "precise_amount": 1,
            "precision": 100,
            "currency": "USD",
            "source": "@stripe",
            "destination": wallet,
            "description": "x",
            "skip_queue": True,
        },
    )
    assert code(again) == (409, "TXN_DUPLICATE_REFERENCE")


def test_commits_and_voids_are_children_of_the_hold_which_stays_inflight(blnk):
    # transaction_inflight.go finalizeCommitment / finalizeVoidTransaction
    api = Api(blnk)
    wallet = blnk.state.create_balance("USD").balance_id
    hold = api.hold("pi_1", 5000, destination=wallet)
    part = api.settle(hold["transaction_id"], "commit", precise_amount=2000).json()
    assert (part["status"], part["precise_amount"], part["parent_transaction"]) == (
        "APPLIED",
        2000,
        hold["transaction_id"],
    )
    rest = api.settle(hold["transaction_id"], "void").json()
    assert (rest["status"], rest["precise_amount"]) == ("VOID", 3000)
    assert api.get("/transactions/reference/pi_1").json()["status"] == "INFLIGHT"
    assert code(api.settle(hold["transaction_id"], "commit")) == (409, "TXN_ALREADY_VOIDED")
    assert code(api.settle(hold["transaction_id"], "void")) == (409, "TXN_ALREADY_VOIDED")
    bal = api.get(f"/balances/{wallet}").json()
    assert (bal["balance"], bal["inflight_credit_balance"]) == (2000, 0)


def test_the_error_codes_of_a_settled_or_unknown_hold(blnk):
    api = Api(blnk)
    wallet = blnk.state.create_balance("USD").balance_id
    hold = api.hold("pi_1", 5000, destination=wallet)["transaction_id"]
    assert code(api.settle(hold, "commit", precise_amount=6000)) == (
        400,
        "TXN_COMMIT_AMOUNT_EXCEEDED",
    )
    assert api.settle(hold, "commit").json()["precise_amount"] == 5000
    assert code(api.settle(hold, "commit")) == (409, "TXN_ALREADY_COMMITTED")
    assert code(api.settle(hold, "void")) == (409, "TXN_ALREADY_COMMITTED")
    applied = api.hold("pi_2", 100, destination=wallet, inflight=False)["transaction_id"]
    # GetInflightTransactionsByParentID finds no INFLIGHT leg: 400, not 404.
    assert code(api.settle(applied, "commit")) == (400, "TXN_NOT_INFLIGHT")
    assert code(api.settle("txn_nope", "void")) == (400, "TXN_NOT_INFLIGHT")
    assert code(api.settle(hold, "cancel")) == (400, "TXN_INVALID_STATUS_ACTION")
    assert code(api.settle(hold, "commit", precise_amount=-1)) == (400, "TXN_INVALID_AMOUNT")


def test_without_skip_queue_a_create_is_queued_and_a_second_action_conflicts(blnk):
    # transaction_queue.go QueueTransaction / createQueueCopy; queue.go EnqueueInflightAction
    api = Api(blnk)
    blnk.configure(queue_delay_ms=60_000)
    wallet = blnk.state.create_balance("USD").balance_id
    queued = api.hold("pi_q", 800, destination=wallet, skip_queue=False)
    assert queued["status"] == "QUEUED"
    blnk.state.drain()
    copy = api.get("/transactions/reference/pi_q_q").json()
    assert (copy["status"], copy["parent_transaction"]) == ("INFLIGHT", queued["transaction_id"])
    first = api.put(f"/transactions/inflight/{copy['transaction_id']}", {"status": "commit"})
    assert first.json()["queued"] is True
    second = api.put(f"/transactions/inflight/{copy['transaction_id']}", {"status": "void"})
    assert code(second) == (409, "GEN_CONFLICT")
    blnk.state.drain()
    children = api.post(
        "/transactions/filter",
        {
            "filters": [
                {"field": "parent_transaction", "operator": "eq", "value": copy["transaction_id"]}
            ]
        },
    ).json()
    assert [(c["status"], c["precise_amount"]) for c in children] == [("APPLIED", 800)]


def test_a_hold_is_voided_when_its_expiry_falls_due(blnk):
    # queue.go queueInflightExpiry, cmd/workers.go processInflightExpiry
    api = Api(blnk)
    wallet = blnk.state.create_balance("USD").balance_id
    when = blnk.state.clock() + timedelta(seconds=1)
    hold = api.hold("pi_x", 300, destination=wallet, inflight_expiry_date=rfc3339(when))
    assert hold["inflight_expiry_date"] == rfc3339(when)
    # Not a stored column: reads show Go's zero time.
    assert api.get("/transactions/reference/pi_x").json()["inflight_expiry_date"].startswith("0001")
    blnk.state.tick(when + timedelta(seconds=1))
    kids = blnk.state.children(hold["transaction_id"])
    assert [(k.status, k.precise_amount) for k in kids] == [("VOID", 300)]


def test_filter_pages_cap_at_100_sort_newest_first_by_default_and_can_count(blnk):
    # api/filter_helper.go ParseFiltersFromBody
    api = Api(blnk)
    wallet = blnk.state.create_balance("USD").balance_id
    for n in range(25):
        api.hold(f"pi_{n:02}", 100 + n, destination=wallet)
    status_inflight = [{"field": "status", "operator": "eq", "value": "INFLIGHT"}]
    page = api.post("/transactions/filter", {"filters": status_inflight, "limit": 500}).json()
    assert len(page) == 20  # out of range: the default, not an error
    assert page[0]["reference"] == "pi_24"
    counted = api.post(
        "/transactions/filter",
        {
            "filters": status_inflight,
            "limit": 10,
            "offset": 20,
            "sort_by": "created_at",
            "sort_order": "asc",
            "include_count": True,
        },
    ).json()
    assert counted["total_count"] == 25
    assert [t["reference"] for t in counted["data"]] == [f"pi_{n}" for n in range(20, 25)]
    by_meta = api.post(
        "/transactions/filter",
        {"filters": [{"field": "meta_data.nope-key", "operator": "eq", "value": "x"}]},
    )
    assert code(by_meta) == (400, "GEN_VALIDATION_ERROR")


def test_injected_failures_before_or_after_the_work_and_the_request_log(blnk):
    api = Api(blnk)
    wallet = blnk.state.create_balance("USD").balance_id
    blnk.configure(fail_next=1, error_phase="before", error_status=503)
    assert api.post("/transactions", {"reference": "pi_a"}).status_code == 503
    assert blnk.state.all_transactions() == []
    blnk.configure(fail_next=1, error_phase="after", error_status=500)
    lost = api.post(
        "/transactions",
        {
            "reference": "pi_b",
            "precise_amount": 10,
            "precision": 100,
            "currency": "USD",
            "source": "@stripe",
            "destination": wallet,
            "description": "x",
            "skip_queue": True,
            "allow_overdraft": True,
        },
    )
    assert code(lost) == (500, "GEN_INTERNAL")
    assert [t.reference for t in blnk.state.all_transactions()] == ["pi_b"]  # done, answer lost
    log = blnk.requests("POST", "/transactions")
    assert [(r.status, r.injected) for r in log] == [(503, "5xx-before"), (500, "5xx-after")]
    assert all(r.header("X-Blnk-Key") == RECON_KEY for r in log)
    assert log[1].body["precise_amount"] == 10
