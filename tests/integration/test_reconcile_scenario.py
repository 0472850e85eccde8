"""Reconciliation end to end: the local Stripe-compatible server, the real PostgreSQL.

A few hundred entries seeded across every row of the decision table (plus payments with no
entry), then sweep, catch-up and scan; every entry must end as the table says, each
discrepancy with exactly one open ticket, the ledger invariants intact, and a second run
must change nothing.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from ledger.sql import SqlLedger, transactions
from reconcile.guard import Guard
from reconcile.model import Policy
from reconcile.tables import audit, runs
from reconcile.usecases import reconcile_payment, run_catch_up, run_scan, run_sweep
from tests.stripe_server import run_server
from tests.support import ago, epoch, make_services, open_tickets, seed_entry

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


def seed(engine: Engine, stripe, per_kind: int) -> dict[str, str]:
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
                "metadata": {"ledger_destination": f"wallet:cus_{n}"},
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
                seed_entry(
                    engine,
                    pid,
                    entry["amount"],
                    "USD",
                    created=created,
                    destination=f"wallet:cus_{n}",
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


def run_all(svc) -> list:
    window = (ago(days=1), ago(seconds=0) + timedelta(minutes=1))
    return [
        run_sweep(svc, trigger="test", actor="system"),
        run_catch_up(svc, trigger="test", actor="system"),
        run_scan(svc, trigger="test", actor="system", since=window[0], until=window[1]),
    ]


def check_end_state(engine: Engine, kinds: dict[str, str]) -> None:
    snap = snapshot(engine)
    open_by_payment: dict[str, list[str]] = {}
    for t in open_tickets(engine):
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
    with engine.connect() as conn:
        assert SqlLedger(conn).check_invariants() == []


def test_every_row_of_the_table_ends_as_it_should_and_a_second_run_changes_nothing(pg_engine):
    with run_server() as stripe:
        kinds = seed(pg_engine, stripe, per_kind=12)  # 19 kinds x 12 = 228 payments
        svc = make_services(pg_engine, stripe.url, stripe.api_key, policy=POLICY, guard=ROOMY)
        first = run_all(svc)
        assert [r.status for r in first] == ["succeeded"] * 3, [r.errors for r in first]
        check_end_state(pg_engine, kinds)

        ledger_before = snapshot(pg_engine)
        tickets_before = {(t["id"], t["kind"], t["payment_id"]) for t in open_tickets(pg_engine)}
        second = run_all(svc)
        assert [r.status for r in second] == ["succeeded"] * 3
        for r in second:
            for action in ("commit", "void", "create", "ticket_opened"):
                assert r.counts.get(action, 0) == 0, (r.run_id, r.counts)
        assert snapshot(pg_engine) == ledger_before
        assert {
            (t["id"], t["kind"], t["payment_id"]) for t in open_tickets(pg_engine)
        } == tickets_before
        check_end_state(pg_engine, kinds)


def test_every_ledger_action_has_an_audit_row_with_its_run_and_evidence(pg_engine):
    with run_server() as stripe:
        stripe.state.create_payment_intent(
            id="pi_a", amount=700, currency="usd", status="succeeded", created=epoch(ago(hours=1))
        )
        seed_entry(pg_engine, "pi_a", 700, created=ago(hours=1))
        svc = make_services(pg_engine, stripe.url, stripe.api_key)
        result = run_sweep(svc, trigger="cli", actor="alice")
        with pg_engine.connect() as conn:
            rows = conn.execute(select(audit)).mappings().all()
            run = conn.execute(select(runs).where(runs.c.id == result.run_id)).mappings().one()
    assert [(r["action"], r["amount"], r["actor"], r["run_id"]) for r in rows] == [
        ("commit", 700, "alice", result.run_id)
    ]
    assert rows[0]["evidence"]["stripe"]["status"] == "succeeded"
    assert rows[0]["reason"] == "succeeded_amount_matches"
    assert run["status"] == "succeeded" and run["trigger"] == "cli"
    assert run["counts"]["commit"] == 1 and run["stripe_calls"] >= 1


def test_dry_run_returns_the_plan_and_changes_nothing(pg_engine):
    with run_server() as stripe:
        kinds = seed(pg_engine, stripe, per_kind=2)
        svc = make_services(pg_engine, stripe.url, stripe.api_key, policy=POLICY, guard=ROOMY)
        before = snapshot(pg_engine)
        result = run_sweep(svc, trigger="cli", actor="bob", dry_run=True)
        assert snapshot(pg_engine) == before
        assert open_tickets(pg_engine) == []
        planned = Counter(p["action"] for p in result.plan)
        assert planned["commit"] == 4  # ok + partial, two each
        assert planned["void"] == 4  # canceled + failed_old
        assert any(
            p["ticket"] == {"kind": "unknown_payment", "severity": "high"} for p in result.plan
        )
        live = run_sweep(svc, trigger="cli", actor="bob")
        assert Counter(p["action"] for p in live.plan)["commit"] == 4
        assert len(kinds) == 38


def test_a_second_concurrent_sweep_does_nothing_twice(pg_engine):
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
            seed_entry(pg_engine, f"pi_c{n}", 100, created=created)
        svc = make_services(pg_engine, stripe.url, stripe.api_key, sweep_batch=20)
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
    with pg_engine.connect() as conn:
        commits = conn.execute(select(audit.c.payment_id).where(audit.c.action == "commit")).all()
        assert len(commits) == 150 and len(set(commits)) == 150
        assert SqlLedger(conn).check_invariants() == []


def test_the_guard_stops_a_run_that_would_ticket_everything_and_opens_one_incident(pg_engine):
    with run_server() as stripe:
        # The wrong Stripe account: none of these payments exist there.
        for n in range(60):
            seed_entry(pg_engine, f"pi_x{n}", 100, created=ago(hours=2, seconds=n))
        svc = make_services(pg_engine, stripe.url, stripe.api_key, guard=Guard())
        first = run_sweep(svc, trigger="beat", actor="system")
        second = run_sweep(svc, trigger="beat", actor="system")
    assert first.status == "partial" and second.status == "partial"
    tickets = open_tickets(pg_engine)
    assert [t["kind"] for t in tickets] == ["incident"]
    assert tickets[0]["occurrences"] == 2
    assert "would open" in tickets[0]["summary"]
    assert {v[0] for v in snapshot(pg_engine).values()} == {"INFLIGHT"}


def test_half_the_requests_rate_limited_still_ends_correct(pg_engine):
    # Our budget is twice what the server admits, so about half the requests answer 429;
    # the retries carry every run through to a correct end.
    with run_server(rate_limit=10.0, rate_burst=1.0) as stripe:
        kinds = seed(pg_engine, stripe, per_kind=2)
        svc = make_services(
            pg_engine,
            stripe.url,
            stripe.api_key,
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
    check_end_state(pg_engine, kinds)


def test_a_run_cut_short_by_stripe_is_partial_and_the_next_run_finishes_the_work(pg_engine):
    with run_server() as stripe:
        kinds = seed(pg_engine, stripe, per_kind=3)
        svc = make_services(
            pg_engine,
            stripe.url,
            stripe.api_key,
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
    check_end_state(pg_engine, kinds)


def test_create_missing_policy_credits_a_paid_payment_with_no_record(pg_engine):
    with run_server() as stripe:
        stripe.state.create_payment_intent(
            id="pi_m",
            amount=1200,
            currency="jpy",
            status="succeeded",
            created=epoch(ago(hours=1)),
            metadata={"ledger_destination": "wallet:cus_jp"},
        )
        svc = make_services(
            pg_engine, stripe.url, stripe.api_key, policy=Policy(create_missing=True)
        )
        result = run_scan(
            svc, trigger="cli", actor="carol", since=ago(hours=2), until=ago(seconds=0)
        )
    assert result.counts["create"] == 1
    assert snapshot(pg_engine) == {"pi_m": ("APPLIED", 1200, 0)}
    assert open_tickets(pg_engine) == []


def test_reconciling_one_payment_resolves_its_stuck_ticket_once_it_succeeds(pg_engine):
    with run_server() as stripe:
        created = ago(hours=30)
        stripe.state.create_payment_intent(
            id="pi_s", amount=900, currency="usd", status="processing", created=epoch(created)
        )
        seed_entry(pg_engine, "pi_s", 900, created=created)
        svc = make_services(pg_engine, stripe.url, stripe.api_key)
        reconcile_payment(svc, "pi_s")
        assert [t["kind"] for t in open_tickets(pg_engine)] == ["stuck_payment"]
        stripe.state.update_payment_intent("pi_s", status="succeeded")
        _, outcome = reconcile_payment(svc, "pi_s")
    assert outcome.decision.action.value == "commit"
    assert open_tickets(pg_engine) == []
    assert snapshot(pg_engine)["pi_s"] == ("APPLIED", 900, 0)
