"""Reconciliation end to end: the local Stripe-compatible server, the real PostgreSQL, and
the books either in SqlLedger or in Blnk (BlnkLedger over the Blnk stand-in).

A few hundred entries seeded across every row of the decision table (plus payments with no
entry), then sweep, catch-up and scan; every entry must end as the table says, each
discrepancy with exactly one open ticket, the ledger invariants intact, and a second run
must change nothing.  On Blnk the request log shows the commits, partial commits, voids and
creates going through Blnk's API.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, select

from ledger.blnk import BlnkClient, BlnkLedger
from ledger.protocol import Ledger
from ledger.sql import SqlLedger, transactions
from reconcile.guard import Guard
from reconcile.model import Policy
from reconcile.ports import Services
from reconcile.tables import audit, runs
from reconcile.usecases import reconcile_payment, run_catch_up, run_scan, run_sweep
from tests.blnk_server import RunningBlnk
from tests.blnk_server import run_server as run_blnk
from tests.stripe_server import run_server
from tests.support import ago, epoch, make_services, open_tickets, seed_blnk_entry, seed_entry

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

POLICY = Policy(failed_grace=timedelta(hours=1), processing_sla=timedelta(hours=6))
ROOMY = Guard(max_voids=10_000, max_new_tickets=10_000)

# kind -> (expected ledger status, committed, voided, expected open ticket kinds)
EXPECT: dict[str, tuple[str | None, int | None, int | None, set[str]]] = {
    "ok": ("APPLIED", 5000, 0, set()),
    "partial": ("APPLIED", 3000, 2000, {"amount_mismatch"}),
    "over": ("INFLIGHT", 0, 0, {"amount_mismatch"}),
    "currency": ("INFLIGHT", 0, 0, {"amount_mismatch"}),
    "canceled": ("VOID", 0, 5000, set()),
    "failed_old": ("VOID", 0, 5000, set()),
    "failed_young": ("INFLIGHT", 0, 0, set()),
    "processing_young": ("INFLIGHT", 0, 0, set()),
    "processing_old": ("INFLIGHT", 0, 0, {"stuck_payment"}),
    "requires_action_old": ("INFLIGHT", 0, 0, {"stuck_payment"}),
    "unknown": ("INFLIGHT", 0, 0, {"unknown_payment"}),
    "missing": (None, None, None, {"missing_record"}),
    "applied_ok": ("APPLIED", 5000, 0, set()),
    "applied_mismatch": ("APPLIED", 5000, 0, {"amount_mismatch"}),
    "credited_but_failed": ("APPLIED", 5000, 0, {"credited_but_failed"}),
    "paid_but_voided": ("VOID", 0, 5000, {"paid_but_voided"}),
    "refund_after_credit": ("APPLIED", 5000, 0, {"refund_after_credit"}),
    "dispute_opened": ("APPLIED", 5000, 0, {"dispute_opened"}),
    "not_succeeded_no_entry": (None, None, None, set()),
}


@dataclass
class Books:
    """Where the books are: SqlLedger in the service's PostgreSQL, or Blnk (the stand-in)
    with BlnkLedger's claims in that PostgreSQL."""

    engine: Engine
    ledger_for: Callable[[Connection], Ledger]
    blnk: RunningBlnk | None = None
    _balances: dict[str, str] = field(default_factory=dict)

    def dest(self, name: str, currency: str = "USD") -> str:
        """A customer's wallet: on Blnk a balance the application created, named by its id."""
        if self.blnk is None:
            return name
        if name not in self._balances:
            self._balances[name] = self.blnk.state.create_balance(currency).balance_id
        return self._balances[name]

    def seed(self, reference: str, amount: int, currency: str = "USD", **kw: Any) -> None:
        if self.blnk is None:
            seed_entry(self.engine, reference, amount, currency, **kw)
        else:
            seed_blnk_entry(self.blnk.state, reference, amount, currency, **kw)

    def services(self, stripe: Any, **kw: Any) -> Services:
        return make_services(
            self.engine, stripe.url, stripe.api_key, ledger_for=self.ledger_for, **kw
        )

    def snapshot(self) -> dict[str, tuple[str, int, int]]:
        if self.blnk is None:
            return snapshot(self.engine)
        with self.engine.begin() as conn:
            txns = self.ledger_for(conn).list_transactions(limit=100_000)  # type: ignore[attr-defined]
        return {t.reference: (t.status.value, t.committed_amount, t.voided_amount) for t in txns}

    def invariants(self) -> list[Any]:
        with self.engine.begin() as conn:
            return list(self.ledger_for(conn).check_invariants())


def _blnk(engine: Engine, **config: Any) -> Iterator[Books]:
    with run_blnk(**config) as blnk:
        client = BlnkClient(
            blnk.url, blnk.api_key, max_attempts=10, backoff_initial=0.001, backoff_max=0.01
        )
        yield Books(engine, lambda conn: BlnkLedger(conn, client), blnk)


@pytest.fixture(params=["sql", "blnk"])
def books(request: pytest.FixtureRequest, pg_engine: Engine) -> Iterator[Books]:
    if request.param == "sql":
        yield Books(pg_engine, SqlLedger)
    else:
        yield from _blnk(pg_engine)


def seed(books: Books, stripe, per_kind: int) -> dict[str, str]:
    """Returns payment id -> kind."""
    kinds: dict[str, str] = {}
    state = stripe.state
    for n in range(per_kind):
        for kind in EXPECT:
            pid = f"pi_{kind}_{n:03}"
            kinds[pid] = kind
            young = kind in ("failed_young", "processing_young")
            created = ago(minutes=30) if young else ago(hours=8, minutes=n)
            pi: dict[str, Any] = {
                "id": pid,
                "amount": 5000,
                "currency": "usd",
                "created": epoch(created),
                "customer": f"cus_{n}",
                "metadata": {"ledger_destination": books.dest(f"wallet:cus_{n}")},
            }
            entry: dict[str, Any] | None = {"amount": 5000, "status": "INFLIGHT"}
            events = False
            match kind:
                case "ok" | "missing":
                    pi["status"] = "succeeded"
                case "partial":
                    pi |= {"status": "succeeded", "amount_received": 3000}
                case "over":
                    pi["status"] = "succeeded"
                    entry["amount"] = 4000
                case "currency":
                    pi |= {"status": "succeeded", "currency": "eur"}
                case "canceled":
                    pi["status"] = "canceled"
                case "failed_old" | "failed_young":
                    pi |= {
                        "status": "requires_payment_method",
                        "last_payment_error": {"code": "card_declined", "message": "declined"},
                    }
                case "processing_young" | "processing_old":
                    pi["status"] = "processing"
                case "requires_action_old":
                    pi["status"] = "requires_action"
                case "unknown":
                    pi = {}
                case "applied_ok":
                    pi["status"] = "succeeded"
                    entry["status"] = "APPLIED"
                case "applied_mismatch":
                    pi |= {"status": "succeeded", "amount": 6000}
                    entry["status"] = "APPLIED"
                case "credited_but_failed":
                    pi["status"] = "processing"
                    entry["status"] = "APPLIED"
                    events = True
                case "paid_but_voided":
                    pi["status"] = "succeeded"
                    entry["status"] = "VOID"
                case "refund_after_credit" | "dispute_opened":
                    pi["status"] = "succeeded"
                    entry["status"] = "APPLIED"
                    events = True
                case "not_succeeded_no_entry":
                    pi["status"] = "canceled"
            if kind in ("missing", "not_succeeded_no_entry"):
                entry = None
            if pi:
                state.create_payment_intent(record_events=False, **pi)
            if entry is not None:
                books.seed(
                    pid,
                    entry["amount"],
                    "USD",
                    created=created,
                    destination=books.dest(f"wallet:cus_{n}"),
                    status=entry["status"],
                )
            if events:
                # What happens to these after they were credited, as Stripe reports it.
                if kind == "credited_but_failed":
                    state.update_payment_intent(pid, status="canceled")
                elif kind == "refund_after_credit":
                    state.update_payment_intent(pid, amount_refunded=5000)
                else:
                    state.update_payment_intent(pid, disputed=True)
    return kinds


def snapshot(engine: Engine) -> dict[str, tuple[str, int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                transactions.c.reference,
                transactions.c.status,
                transactions.c.committed_amount,
                transactions.c.voided_amount,
            )
        )
        return {r[0]: (r[1], r[2], r[3]) for r in rows}


def run_all_jobs(svc) -> list[Callable[[], Any]]:
    window = (ago(days=1), ago(seconds=0) + timedelta(minutes=1))
    return [
        lambda: run_sweep(svc, trigger="test", actor="system"),
        lambda: run_catch_up(svc, trigger="test", actor="system"),
        lambda: run_scan(svc, trigger="test", actor="system", since=window[0], until=window[1]),
    ]


def run_all(svc) -> list:
    return [job() for job in run_all_jobs(svc)]


def check_end_state(books: Books, kinds: dict[str, str]) -> None:
    snap = books.snapshot()
    open_by_payment: dict[str, list[str]] = {}
    for t in open_tickets(books.engine):
        open_by_payment.setdefault(t["payment_id"], []).append(t["kind"])
    wrong = []
    for pid, kind in kinds.items():
        status, committed, voided, ticket_kinds = EXPECT[kind]
        got = snap.get(pid)
        want = None if status is None else (status, committed, voided)
        if got != want:
            wrong.append(f"{pid}: ledger {got} != {want}")
        opened = open_by_payment.get(pid, [])
        if sorted(opened) != sorted(ticket_kinds):
            wrong.append(f"{pid}: open tickets {opened} != {sorted(ticket_kinds)}")
    assert not wrong, "\n".join(wrong[:20])
    assert books.invariants() == []


def test_every_row_of_the_table_ends_as_it_should_and_a_second_run_changes_nothing(books):
    with run_server() as stripe:
        kinds = seed(books, stripe, per_kind=12)  # 19 kinds x 12 = 228 payments
        svc = books.services(stripe, policy=POLICY, guard=ROOMY)
        first = run_all(svc)
        assert [r.status for r in first] == ["succeeded"] * 3, [r.errors for r in first]
        check_end_state(books, kinds)

        ledger_before = books.snapshot()
        tickets_before = {(t["id"], t["kind"], t["payment_id"]) for t in open_tickets(books.engine)}
        second = run_all(svc)
        assert [r.status for r in second] == ["succeeded"] * 3
        for r in second:
            for action in ("commit", "void", "create", "ticket_opened"):
                assert r.counts.get(action, 0) == 0, (r.run_id, r.counts)
        assert books.snapshot() == ledger_before
        assert {
            (t["id"], t["kind"], t["payment_id"]) for t in open_tickets(books.engine)
        } == tickets_before
        check_end_state(books, kinds)
    if books.blnk is not None:
        log = books.blnk.requests()
        assert log and all(r.header("X-Blnk-Key") == books.blnk.api_key for r in log)
        assert not [r for r in log if isinstance(r.body, dict) and "amount" in r.body]


def test_every_ledger_action_has_an_audit_row_with_its_run_and_evidence(books):
    with run_server() as stripe:
        stripe.state.create_payment_intent(
            id="pi_a", amount=700, currency="usd", status="succeeded", created=epoch(ago(hours=1))
        )
        books.seed("pi_a", 700, created=ago(hours=1), destination=books.dest("wallet:cus_1"))
        svc = books.services(stripe)
        result = run_sweep(svc, trigger="cli", actor="alice")
        with books.engine.connect() as conn:
            rows = conn.execute(select(audit)).mappings().all()
            run = conn.execute(select(runs).where(runs.c.id == result.run_id)).mappings().one()
    assert [(r["action"], r["amount"], r["actor"], r["run_id"]) for r in rows] == [
        ("commit", 700, "alice", result.run_id)
    ]
    assert rows[0]["evidence"]["stripe"]["status"] == "succeeded"
    assert rows[0]["reason"] == "succeeded_amount_matches"
    assert run["status"] == "succeeded" and run["trigger"] == "cli"
    assert run["counts"]["commit"] == 1 and run["stripe_calls"] >= 1


def test_dry_run_returns_the_plan_and_changes_nothing(books):
    with run_server() as stripe:
        kinds = seed(books, stripe, per_kind=2)
        svc = books.services(stripe, policy=POLICY, guard=ROOMY)
        before = books.snapshot()
        writes = len(books.blnk.requests("PUT")) if books.blnk else 0
        result = run_sweep(svc, trigger="cli", actor="bob", dry_run=True)
        assert books.snapshot() == before
        assert open_tickets(books.engine) == []
        if books.blnk is not None:
            assert len(books.blnk.requests("PUT")) == writes  # Blnk was sent no write
        planned = Counter(p["action"] for p in result.plan)
        assert planned["commit"] == 4  # ok + partial, two each
        assert planned["void"] == 4  # canceled + failed_old
        assert any(
            p["ticket"] == {"kind": "unknown_payment", "severity": "high"} for p in result.plan
        )
        live = run_sweep(svc, trigger="cli", actor="bob")
        assert Counter(p["action"] for p in live.plan)["commit"] == 4
        assert len(kinds) == 38


def test_a_second_concurrent_sweep_does_nothing_twice(books):
    import threading

    with run_server() as stripe:
        for n in range(150):
            created = ago(hours=2, seconds=n)
            stripe.state.create_payment_intent(
                id=f"pi_c{n}",
                amount=100,
                currency="usd",
                status="succeeded",
                created=epoch(created),
                record_events=False,
            )
            books.seed(f"pi_c{n}", 100, created=created, destination=books.dest("wallet:cus_1"))
        svc = books.services(stripe, sweep_batch=20)
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(run_sweep(svc, trigger="t", actor="s")))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(r.counts.get("commit", 0) for r in results) == 150
    with books.engine.connect() as conn:
        commits = conn.execute(select(audit.c.payment_id).where(audit.c.action == "commit")).all()
        assert len(commits) == 150 and len(set(commits)) == 150
    assert books.invariants() == []
    if books.blnk is not None:
        # Each hold was sent once, in a bulk call (batches of 20) or, where a batch held one
        # entry, alone.
        bulk = books.blnk.requests("POST", "/transactions/inflight/bulk/commit")
        singles = books.blnk.requests("PUT", "/transactions/inflight/")
        sent = [t["transaction_id"] for r in bulk for t in r.body["transactions"]]
        sent += [r.path.rsplit("/", 1)[-1] for r in singles]
        assert bulk and all(r.status == 201 or r.status == 200 for r in bulk)
        assert len(sent) == 150 and len(set(sent)) == 150


def test_the_guard_stops_a_run_that_would_ticket_everything_and_opens_one_incident(books):
    with run_server() as stripe:
        # The wrong Stripe account: none of these payments exist there.
        for n in range(60):
            books.seed(
                f"pi_x{n}",
                100,
                created=ago(hours=2, seconds=n),
                destination=books.dest("wallet:cus_1"),
            )
        svc = books.services(stripe, guard=Guard())
        first = run_sweep(svc, trigger="beat", actor="system")
        second = run_sweep(svc, trigger="beat", actor="system")
    assert first.status == "partial" and second.status == "partial"
    tickets = open_tickets(books.engine)
    assert [t["kind"] for t in tickets] == ["incident"]
    assert tickets[0]["occurrences"] == 2
    assert "would open" in tickets[0]["summary"]
    assert {v[0] for v in books.snapshot().values()} == {"INFLIGHT"}


def test_half_the_requests_rate_limited_still_ends_correct(pg_engine):
    # Our budget is twice what the server admits, so about half the requests answer 429;
    # the retries carry every run through to a correct end.
    books = Books(pg_engine, SqlLedger)
    with run_server(rate_limit=10.0, rate_burst=1.0) as stripe:
        kinds = seed(books, stripe, per_kind=2)
        svc = books.services(
            stripe,
            policy=POLICY,
            guard=ROOMY,
            rate=20.0,
            gateway_kw={"max_attempts": 4, "backoff_initial": 0.02, "backoff_max": 0.05},
        )
        statuses = []
        for _ in range(20):
            results = run_all(svc)
            statuses.extend(r.status for r in results)
            if all(r.status == "succeeded" for r in results):
                break
        limited, total = stripe.calls(outcome="429"), stripe.calls()
    print(f"429s: {limited} of {total} calls; run statuses: {statuses}")
    assert limited >= 0.3 * total, (limited, total)
    assert set(statuses) <= {"succeeded", "partial"}
    assert statuses[-3:] == ["succeeded"] * 3
    check_end_state(books, kinds)


def test_a_run_cut_short_by_stripe_is_partial_and_the_next_run_finishes_the_work(books):
    with run_server() as stripe:
        kinds = seed(books, stripe, per_kind=3)
        svc = books.services(
            stripe,
            policy=POLICY,
            guard=ROOMY,
            sweep_batch=10,
            gateway_kw={"max_attempts": 2, "backoff_initial": 0.01, "backoff_max": 0.02},
        )
        first = run_sweep(svc, trigger="beat", actor="system")
        stripe.configure(fail_next=1000, error_status=503)
        cut = run_sweep(svc, trigger="beat", actor="system")
        stripe.configure(fail_next=0)
        assert first.status == "succeeded"
        assert cut.status == "partial" and cut.errors
        rest = run_all(svc)
    assert [r.status for r in rest] == ["succeeded"] * 3
    check_end_state(books, kinds)


def test_create_missing_policy_credits_a_paid_payment_with_no_record(books):
    with run_server() as stripe:
        stripe.state.create_payment_intent(
            id="pi_m",
            amount=1200,
            currency="jpy",
            status="succeeded",
            created=epoch(ago(hours=1)),
            metadata={"ledger_destination": books.dest("wallet:cus_jp", "JPY")},
        )
        svc = books.services(stripe, policy=Policy(create_missing=True))
        result = run_scan(
            svc, trigger="cli", actor="carol", since=ago(hours=2), until=ago(seconds=0)
        )
    assert result.counts["create"] == 1
    assert books.snapshot() == {"pi_m": ("APPLIED", 1200, 0)}
    assert open_tickets(books.engine) == []


def test_reconciling_one_payment_resolves_its_stuck_ticket_once_it_succeeds(books):
    with run_server() as stripe:
        created = ago(hours=30)
        stripe.state.create_payment_intent(
            id="pi_s", amount=900, currency="usd", status="processing", created=epoch(created)
        )
        books.seed("pi_s", 900, created=created, destination=books.dest("wallet:cus_1"))
        svc = books.services(stripe)
        reconcile_payment(svc, "pi_s")
        assert [t["kind"] for t in open_tickets(books.engine)] == ["stuck_payment"]
        stripe.state.update_payment_intent("pi_s", status="succeeded")
        _, outcome = reconcile_payment(svc, "pi_s")
    assert outcome.decision.action.value == "commit"
    assert open_tickets(books.engine) == []
    assert books.snapshot()["pi_s"] == ("APPLIED", 900, 0)


# -- Blnk: the work goes through Blnk's API ---------------------------------------------------


@pytest.fixture
def blnk_books(pg_engine: Engine) -> Iterator[Books]:
    yield from _blnk(pg_engine)


def test_on_blnk_commits_partial_commits_voids_and_creates_go_through_its_api(blnk_books):
    books, blnk = blnk_books, blnk_books.blnk
    assert blnk is not None
    wallet = books.dest("wallet:cus_1")
    created = ago(hours=3)
    with run_server() as stripe:
        for pid, status, extra in (
            ("pi_ok", "succeeded", {}),
            ("pi_part", "succeeded", {"amount_received": 3000}),
            ("pi_cancel", "canceled", {}),
        ):
            stripe.state.create_payment_intent(
                id=pid,
                amount=5000,
                currency="usd",
                status=status,
                created=epoch(created),
                record_events=False,
                **extra,
            )
            books.seed(pid, 5000, created=created, destination=wallet)
        stripe.state.create_payment_intent(
            id="pi_missing",
            amount=4200,
            currency="usd",
            status="succeeded",
            created=epoch(created),
            record_events=False,
            metadata={"ledger_destination": wallet},
        )
        svc = books.services(stripe, policy=Policy(create_missing=True), guard=ROOMY)
        holds = {t.reference: t.transaction_id for t in blnk.state.all_transactions()}
        assert run_sweep(svc, trigger="test", actor="system").status == "succeeded"
        until = datetime.now(created.tzinfo) + timedelta(minutes=1)
        assert (
            run_scan(svc, trigger="test", actor="system", since=ago(days=1), until=until).status
            == "succeeded"
        )
    puts = {(r.path, json.dumps(r.body, sort_keys=True)) for r in blnk.requests("PUT")}
    on = "/transactions/inflight/"
    # The engine commits what Stripe received, the whole hold included: always an amount.
    # Plain settlements of a batch go in Blnk's bulk calls; a partial capture (it keeps a
    # ticket) goes the per-payment path with a PUT each.
    assert puts == {
        (on + holds["pi_part"], '{"precise_amount": 3000, "skip_queue": true, "status": "commit"}'),
        (on + holds["pi_part"], '{"skip_queue": true, "status": "void"}'),
    }
    bulk = {r.path: r.body for r in blnk.requests("POST", on + "bulk/")}
    assert bulk == {
        on + "bulk/commit": {
            "transactions": [{"transaction_id": holds["pi_ok"], "precise_amount": 5000}],
            "skip_queue": True,
        },
        on + "bulk/void": {"transaction_ids": [holds["pi_cancel"]], "skip_queue": True},
    }
    (create,) = [r for r in blnk.requests("POST") if r.path == "/transactions"]
    body = create.body
    assert (body["reference"], body["precise_amount"], body["precision"]) == (
        "pi_missing",
        4200,
        100,
    )
    assert (body["inflight"], body["skip_queue"], body["destination"]) == (False, True, wallet)
    assert body["meta_data"]["stripe_payment_intent"] == "pi_missing"
    assert "amount" not in body
    assert all(r.header("X-Blnk-Key") == blnk.api_key for r in blnk.requests())
    assert books.snapshot() == {
        "pi_ok": ("APPLIED", 5000, 0),
        "pi_part": ("APPLIED", 3000, 2000),
        "pi_cancel": ("VOID", 0, 5000),
        "pi_missing": ("APPLIED", 4200, 0),
    }
    assert [t["kind"] for t in open_tickets(books.engine)] == ["amount_mismatch"]
    assert books.invariants() == []


def test_on_blnk_5xx_to_a_third_of_requests_ends_as_without(pg_engine):
    faulty = _blnk(pg_engine, error_rate=1 / 3, error_phase="either", random_seed=3)
    books = next(faulty)
    try:
        with run_server() as stripe:
            kinds = seed(books, stripe, per_kind=2)
            svc = books.services(stripe, policy=POLICY, guard=ROOMY)
            statuses = []
            for _ in range(10):
                results = []
                for job in run_all_jobs(svc):
                    try:
                        results.append(job())
                    except Exception as exc:  # a run that could not start or finish
                        results.append(exc)
                statuses.extend(getattr(r, "status", "raised") for r in results)
                if all(getattr(r, "status", None) == "succeeded" for r in results):
                    break
        log = books.blnk.requests() if books.blnk else []
        injected = sum(1 for r in log if r.injected)
        print(f"Blnk 5xx: {injected} of {len(log)} requests; run statuses: {statuses}")
        assert injected >= 0.2 * len(log)
        assert statuses[-3:] == ["succeeded"] * 3
        check_end_state(books, kinds)
    finally:
        next(faulty, None)


def test_when_blnk_is_down_nothing_is_lost_and_the_next_pass_does_the_work(blnk_books):
    from reconcile.tables import runs as runs_table

    books, blnk = blnk_books, blnk_books.blnk
    assert blnk is not None
    created = ago(hours=2)
    with run_server() as stripe:
        for pid in ("pi_1", "pi_2"):
            stripe.state.create_payment_intent(
                id=pid, amount=800, currency="usd", status="succeeded", created=epoch(created)
            )
            books.seed(pid, 800, created=created, destination=books.dest("wallet:cus_1"))
        svc = books.services(stripe)
        blnk.configure(fail_next=10_000, error_status=503)
        # Acting on one payment: the entry is left, the run ends partial.
        result, outcome = reconcile_payment(svc, "pi_1")
        assert result.status == "partial" and "LedgerUnavailable" in (outcome.error or "")
        # A sweep that cannot even list the holds ends partial, with the reason.
        cut = run_sweep(svc, trigger="beat", actor="system")
        assert cut.status == "partial"
        with books.engine.connect() as conn:
            last = (
                conn.execute(select(runs_table).order_by(runs_table.c.id.desc()).limit(1))
                .mappings()
                .one()
            )
        assert last["status"] == "partial" and "LedgerUnavailable" in str(last["errors"])
        assert last["params"]["cut_short"].startswith("ledger: ")
        assert [(t.reference, t.status) for t in blnk.state.all_transactions()] == [
            ("pi_1", "INFLIGHT"),
            ("pi_2", "INFLIGHT"),
        ]
        blnk.configure(fail_next=0)
        assert run_sweep(svc, trigger="beat", actor="system").status == "succeeded"
    assert books.snapshot() == {"pi_1": ("APPLIED", 800, 0), "pi_2": ("APPLIED", 800, 0)}
