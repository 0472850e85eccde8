"""The sweep's set-based apply on PostgreSQL: a batch locked, decided again, settled and
audited with a few statements, and every guarantee of the per-payment path kept.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from ledger.errors import StateError
from ledger.model import Settlement, TxnStatus
from ledger.sql import SqlLedger, postings, transactions
from reconcile import engine as engine_module
from reconcile.engine import Item, Pass
from reconcile.guard import Guard
from reconcile.tables import audit, runs, tickets
from reconcile.usecases import run_sweep, split_sweep
from tests.stripe_server import run_server
from tests.support import ago, epoch, make_services, seed_entry
from worker.schema import all_metadata


@pytest.fixture
def books(pg_engine: Engine) -> Engine:
    for md in all_metadata():
        md.create_all(pg_engine)
    return pg_engine


@pytest.fixture
def stripe() -> Iterator[Any]:
    with run_server() as srv:
        yield srv


def _seed(
    engine: Engine,
    srv: Any,
    n: int,
    *,
    amount: int = 1500,
    status: str = "succeeded",
    offset: int = 0,
) -> list[str]:
    """n payments, one second apart from an hour ago (plus ``offset`` seconds), and their
    INFLIGHT entries."""
    tag = uuid.uuid4().hex[:6]
    start = ago(hours=1) + timedelta(seconds=offset)
    ids = [f"pi_{tag}_{i:03}" for i in range(n)]
    srv.state.seed_payment_intents(
        [
            {
                "id": pid,
                "amount": amount,
                "currency": "usd",
                "status": status,
                "created": epoch(start + timedelta(seconds=i)),
                "customer": f"cus_{i}",
            }
            for i, pid in enumerate(ids)
        ]
    )
    for i, pid in enumerate(ids):
        seed_entry(
            engine, pid, amount, created=start + timedelta(seconds=i), destination=f"wallet:{i}"
        )
    return ids


def _items(engine: Engine, srv: Any, ids: list[str]) -> list[Item]:
    """What the sweep planned with: the entries as read before anyone acted."""
    svc = make_services(engine, srv.url, srv.api_key)
    gw = svc.new_gateway()
    with engine.connect() as conn:
        found = SqlLedger(conn).find_linked_many(ids)
    return [Item(pid, gw.retrieve(pid), found[pid]) for pid in ids]


def _postings(engine: Engine, kind: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(transactions.c.reference, func.count())
            .join(postings, postings.c.transaction_id == transactions.c.id)
            .where(postings.c.kind == kind)
            .group_by(transactions.c.reference)
        ).all()
    return {ref: int(n) for ref, n in rows}


def _status(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(transactions.c.reference, transactions.c.status)).all()
    return {ref: status for ref, status in rows}


def _invariants_hold(engine: Engine) -> None:
    with engine.connect() as conn:
        assert SqlLedger(conn).check_invariants() == []


def test_a_batch_is_settled_as_a_set_with_one_commit_and_one_audit_row_per_payment(
    books: Engine, stripe: Any
) -> None:
    ids = _seed(books, stripe, 12)
    svc = make_services(books, stripe.url, stripe.api_key)
    p = Pass(svc, run=None)
    p.handle(_items(books, stripe, ids))
    assert set(_status(books).values()) == {"APPLIED"}
    assert _postings(books, "commit") == dict.fromkeys(ids, 1)
    with books.connect() as conn:
        audited = conn.execute(
            select(audit.c.payment_id).where(audit.c.action == "commit")
        ).scalars()
        assert sorted(audited) == sorted(ids)
    assert p.counts.get("commit") == 12
    assert "set_fallbacks" not in p.counts
    _invariants_hold(books)


def test_an_entry_voided_by_another_worker_after_the_plan_is_decided_again_on_what_the_lock_shows(
    books: Engine, stripe: Any
) -> None:
    ids = _seed(books, stripe, 6)
    items = _items(books, stripe, ids)  # planned while every entry was INFLIGHT
    with books.begin() as conn:
        SqlLedger(conn).void(ids[2])  # another worker, between plan and act
    svc = make_services(books, stripe.url, stripe.api_key)
    Pass(svc, run=None).handle(items)
    status = _status(books)
    assert status[ids[2]] == "VOID"  # not committed on the stale plan
    assert all(status[pid] == "APPLIED" for pid in ids if pid != ids[2])
    assert ids[2] not in _postings(books, "commit")
    with books.connect() as conn:
        kinds = conn.execute(select(tickets.c.kind).where(tickets.c.payment_id == ids[2])).scalars()
        assert list(kinds) == ["paid_but_voided"]
    _invariants_hold(books)


def test_a_worker_holding_an_entry_makes_the_set_wait_and_the_entry_is_committed_once(
    books: Engine, stripe: Any
) -> None:
    ids = _seed(books, stripe, 5)
    items = _items(books, stripe, ids)
    locked = threading.Event()

    def other_worker() -> None:
        with books.begin() as conn:
            SqlLedger(conn).commit(ids[0])
            locked.set()
            time.sleep(0.5)  # the set's lock waits for this transaction to end

    t = threading.Thread(target=other_worker)
    t.start()
    assert locked.wait(5)
    svc = make_services(books, stripe.url, stripe.api_key)
    Pass(svc, run=None).handle(items)
    t.join()
    assert set(_status(books).values()) == {"APPLIED"}
    assert _postings(books, "commit") == dict.fromkeys(ids, 1)
    _invariants_hold(books)


def test_a_failure_inside_the_set_leaves_no_payment_half_applied_and_each_is_retried_alone(
    books: Engine, stripe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _seed(books, stripe, 8)
    calls = {"n": 0}

    def audits_fail(*_: Any, **__: Any) -> None:
        # after the set's ledger writes, before its commit
        calls["n"] += 1
        raise RuntimeError("audit table unavailable")

    monkeypatch.setattr(engine_module, "record_audits", audits_fail)
    svc = make_services(books, stripe.url, stripe.api_key)
    p = Pass(svc, run=None)
    p.handle(_items(books, stripe, ids))
    assert calls["n"] == 1
    assert p.counts["set_fallbacks"] == 1
    assert set(_status(books).values()) == {"APPLIED"}
    # the set's writes were rolled back whole: one commit each, by the per-payment path
    assert _postings(books, "commit") == dict.fromkeys(ids, 1)
    with books.connect() as conn:
        n_audit = conn.execute(
            select(func.count()).select_from(audit).where(audit.c.action == "commit")
        ).scalar_one()
    assert n_audit == len(ids)
    _invariants_hold(books)


def test_locking_with_earlier_reads_answers_them_where_unchanged_and_the_new_state_where_not(
    books: Engine, stripe: Any
) -> None:
    ids = _seed(books, stripe, 3)
    with books.connect() as conn:
        stale = SqlLedger(conn).find_linked_many(ids)
    with books.begin() as conn:
        SqlLedger(conn).commit(ids[1], 400)
    known = {t.id: t for t in stale.values()}
    with books.connect() as conn, conn.begin():
        locked = SqlLedger(conn).lock_many(list(known), known)
        with books.connect() as other:
            fresh = {t.id: t for t in SqlLedger(other).find_linked_many(ids).values()}
        conn.rollback()
    assert locked == fresh
    assert locked[stale[ids[0]].id] is stale[ids[0]]
    moved = locked[stale[ids[1]].id]
    assert (moved.status, moved.committed_amount) == (TxnStatus.INFLIGHT, 400)
    assert moved.updated_at != stale[ids[1]].updated_at


def test_settling_an_entry_whose_state_moved_on_refuses_and_writes_nothing(
    books: Engine, stripe: Any
) -> None:
    ids = _seed(books, stripe, 3)
    with books.connect() as conn:
        stale = SqlLedger(conn).find_linked_many(ids)
    with books.begin() as conn:
        SqlLedger(conn).commit(ids[1])
    with books.connect() as conn, conn.begin():
        ledger = SqlLedger(conn)
        ledger.lock_many([t.id for t in stale.values()])
        with pytest.raises(StateError):
            ledger.settle_locked([Settlement(stale[pid], commit=stale[pid].amount) for pid in ids])
        conn.rollback()
    status = _status(books)
    assert status == {ids[0]: "INFLIGHT", ids[1]: "APPLIED", ids[2]: "INFLIGHT"}
    _invariants_hold(books)


def test_sweeping_twice_is_idempotent_by_reference(books: Engine, stripe: Any) -> None:
    ids = _seed(books, stripe, 10)
    svc = make_services(books, stripe.url, stripe.api_key)
    items = _items(books, stripe, ids)
    Pass(svc, run=None).handle(items)
    # the same stale plan again (a retried task): every entry is APPLIED under the lock
    p = Pass(svc, run=None)
    p.handle(items)
    assert "commit" not in p.counts
    assert _postings(books, "commit") == dict.fromkeys(ids, 1)
    result = run_sweep(svc, trigger="test", actor="test", older_than=timedelta(0))
    assert result.counts.get("commit", 0) == 0
    assert _postings(books, "commit") == dict.fromkeys(ids, 1)
    _invariants_hold(books)


def test_a_poisoned_entry_gets_a_ticket_while_the_rest_of_its_batch_is_committed(
    books: Engine, stripe: Any
) -> None:
    ids = _seed(books, stripe, 20)
    # A reference Stripe would refuse (not a PaymentIntent id) in the middle of the batch.
    seed_entry(books, "order/../42", 900, created=ago(hours=1) + timedelta(seconds=7))
    svc = make_services(books, stripe.url, stripe.api_key)
    result = run_sweep(svc, trigger="test", actor="test", older_than=timedelta(0))
    status = _status(books)
    assert all(status[pid] == "APPLIED" for pid in ids)
    assert status["order/../42"] == TxnStatus.INFLIGHT.value
    with books.connect() as conn:
        kinds = conn.execute(
            select(tickets.c.kind).where(tickets.c.payment_id == "order/../42")
        ).scalars()
        assert list(kinds) == ["unknown_payment"]
    assert result.counts["commit"] == 20
    _invariants_hold(books)


def test_a_backlog_split_into_parts_is_swept_once_whole_by_sweeps_of_each_part(
    books: Engine, stripe: Any
) -> None:
    ids = _seed(books, stripe, 30)
    svc = make_services(books, stripe.url, stripe.api_key)
    parts = split_sweep(svc, parts=3, older_than=timedelta(0))
    assert len(parts) == 3
    assert parts[0][0] is None and parts[-1][1] is None
    assert parts[0][1] == parts[1][0] and parts[1][1] == parts[2][0]
    examined = []
    for lo, hi in parts:
        result = run_sweep(
            svc,
            trigger="test",
            actor="test",
            older_than=timedelta(0),
            newer_than=lo,
            created_before=hi,
        )
        examined.append(result.counts["examined"])
    assert examined == [10, 10, 10]
    assert set(_status(books).values()) == {"APPLIED"}
    assert _postings(books, "commit") == dict.fromkeys(ids, 1)
    _invariants_hold(books)


def test_on_blnk_a_set_goes_in_bulk_calls_and_a_hold_voided_after_the_plan_is_decided_again(
    books: Engine, stripe: Any
) -> None:
    from ledger.blnk import BlnkClient, BlnkLedger
    from tests.blnk_server import run_server as run_blnk
    from tests.support import seed_blnk_entry

    with run_blnk() as blnk:
        wallet = blnk.state.create_balance("USD").balance_id
        tag = uuid.uuid4().hex[:6]
        start = ago(hours=1)
        ids = [f"pi_{tag}_{i:03}" for i in range(6)]
        stripe.state.seed_payment_intents(
            [
                {
                    "id": pid,
                    "amount": 1500,
                    "currency": "usd",
                    "status": "succeeded",
                    "created": epoch(start + timedelta(seconds=i)),
                }
                for i, pid in enumerate(ids)
            ]
        )
        for i, pid in enumerate(ids):
            seed_blnk_entry(
                blnk.state, pid, 1500, created=start + timedelta(seconds=i), destination=wallet
            )
        client = BlnkClient(blnk.url, blnk.api_key, max_attempts=3, backoff_initial=0.001)
        svc = make_services(
            books, stripe.url, stripe.api_key, ledger_for=lambda c: BlnkLedger(c, client)
        )
        gw = svc.new_gateway()
        with books.connect() as conn:
            found = BlnkLedger(conn, client).find_linked_many(ids)
        items = [Item(pid, gw.retrieve(pid), found[pid]) for pid in ids]  # all INFLIGHT
        hold = found[ids[2]].id
        blnk.state.update_inflight(hold, "void", None, skip_queue=True)  # another hand
        Pass(svc, run=None).handle(items)
        with books.connect() as conn:
            now = BlnkLedger(conn, client).find_linked_many(ids)
        assert now[ids[2]].status is TxnStatus.VOID and now[ids[2]].committed_amount == 0
        assert all(now[p].status is TxnStatus.APPLIED for p in ids if p != ids[2])
        (bulk,) = blnk.requests("POST", "/transactions/inflight/bulk/commit")
        assert sorted(t["transaction_id"] for t in bulk.body["transactions"]) == sorted(
            found[p].id for p in ids if p != ids[2]
        )
        assert not blnk.requests("PUT", f"/transactions/inflight/{hold}")
        with books.connect() as conn:
            rows = conn.execute(select(audit.c.payment_id, audit.c.action)).all()
            kinds = conn.execute(
                select(tickets.c.kind).where(tickets.c.payment_id == ids[2])
            ).scalars()
            assert list(kinds) == ["paid_but_voided"]
        assert sorted(rows) == sorted(
            [(p, "commit") for p in ids if p != ids[2]] + [(ids[2], "ticket_opened")]
        )


def _claims(engine: Engine, run_id: int | None = None) -> tuple[set[str], list[str] | None]:
    """References whose claim is still on, and what the run says it holds."""
    with engine.connect() as conn:
        held = set(
            conn.execute(
                select(transactions.c.reference).where(transactions.c.claimed_until.is_not(None))
            ).scalars()
        )
        named = None
        if run_id is not None:
            named = conn.execute(select(runs.c.claimed).where(runs.c.id == run_id)).scalar()
    return held, named


def test_the_next_batch_is_claimed_while_one_is_applied_and_every_claim_is_given_back(
    books: Engine, stripe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _seed(books, stripe, 30)
    svc = make_services(books, stripe.url, stripe.api_key, sweep_batch=10)
    seen: list[tuple[int, int]] = []
    handle = Pass.handle

    def watching(self: Pass, items: list[Item], *rest: Any) -> None:
        # While a batch is applied the one after it gets claimed and named on the run.
        want = 20 if len(seen) < 2 else 10
        deadline = time.monotonic() + 10
        while True:
            held, named = _claims(books, self.run.id if self.run else None)
            if (len(held), len(named or [])) == (want, want) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        seen.append((len(held), len(named or [])))
        handle(self, items, *rest)

    monkeypatch.setattr(Pass, "handle", watching)
    result = run_sweep(svc, trigger="test", actor="test", older_than=timedelta(0))
    assert result.status == "succeeded"
    assert seen == [(20, 20), (20, 20), (10, 10)]
    assert _claims(books, result.run_id) == (set(), None)
    assert _postings(books, "commit") == dict.fromkeys(ids, 1)
    _invariants_hold(books)


def test_a_sweep_the_guard_stops_gives_back_the_batch_it_held_and_the_one_claimed_ahead(
    books: Engine, stripe: Any
) -> None:
    ok = _seed(books, stripe, 10)
    canceled = _seed(books, stripe, 20, amount=700, status="canceled", offset=10)
    # The second batch would void 10 of 20 examined: over a cap of 5 and of 10%.
    svc = make_services(
        books,
        stripe.url,
        stripe.api_key,
        sweep_batch=10,
        guard=Guard(max_voids=5, max_void_share=0.1),
    )
    result = run_sweep(svc, trigger="test", actor="test", older_than=timedelta(0))
    assert result.status == "partial"
    status = _status(books)
    assert all(status[pid] == "APPLIED" for pid in ok)
    assert all(status[pid] == "INFLIGHT" for pid in canceled)
    assert _claims(books, result.run_id) == (set(), None)
    # Nothing held back: the next sweep (with room under the cap) takes them all at once.
    again = run_sweep(
        make_services(books, stripe.url, stripe.api_key, sweep_batch=10),
        trigger="test",
        actor="test",
        older_than=timedelta(0),
    )
    assert again.counts["void"] == 20
    _invariants_hold(books)
