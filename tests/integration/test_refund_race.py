"""A refund (or dispute, or fraud warning) and a stale ``payment_intent.succeeded`` on two
workers at once.

The succeeded event's payload never carries refunds.  A worker that picks the payload while
the entry is still INFLIGHT, and locks it only after another worker has committed it and
opened the ``refund_after_credit`` ticket, decides MATCHED on what the lock shows: that
decision must leave the refund ticket open (``Decision.keeps``), because the payload cannot
see the refund.  Seen in the fault campaign of issue 14: 6 of 40 such tickets were resolved
as ``applied_amount_matches``.

Each pair runs on two threads with their own database connections, as two Celery workers
would; the interleaving that lost the tickets is forced for every payment (the payload
worker is held between choosing the payload and locking the entry until the refund worker
has finished), and a second round lets the two race freely.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from ledger.sql import SqlLedger, transactions
from reconcile import inbox
from reconcile.tables import audit, tickets
from reconcile.tables import inbox as inbox_table
from reconcile.usecases import events as events_usecase
from reconcile.usecases import process_event
from tests.stripe_server import run_server
from tests.support import ago, epoch, make_services, seed_entry

pytestmark = [pytest.mark.integration]

PAYMENTS = 40


# kind of ticket -> (how Stripe's side changes after the payment succeeded, the event it sends)
AFTERMATH = {
    "refund_after_credit": (lambda stripe, pid: stripe.state.refund(pid), "charge.refunded"),
    "dispute_opened": (
        lambda stripe, pid: stripe.state.open_dispute(pid),
        "charge.dispute.created",
    ),
    "fraud_warning": (
        lambda stripe, pid: stripe.state.add_early_fraud_warning(pid),
        "radar.early_fraud_warning.created",
    ),
}


def _payments(engine: Engine, stripe: Any, n: int, kind: str) -> list[tuple[str, str, str]]:
    """(payment id, succeeded event id, aftermath event id) for ``n`` payments that
    succeeded and were then refunded / disputed / fraud-warned, their entries still INFLIGHT."""
    change, event_type = AFTERMATH[kind]
    out = []
    for _ in range(n):
        pid = "pi_race_" + uuid.uuid4().hex[:12]
        created = ago(minutes=20)
        seed_entry(engine, pid, 5000, created=created)
        paid = stripe.state.create_payment_intent(
            id=pid, amount=5000, currency="usd", status="succeeded", created=epoch(created)
        )
        after = change(stripe, pid)
        succeeded = [e for e in paid.events if e["type"] == "payment_intent.succeeded"]
        aftermath = [e for e in after.events if e["type"] == event_type]
        assert len(succeeded) == 1 and len(aftermath) == 1
        with engine.begin() as conn:
            for event in (*succeeded, *aftermath):
                inbox.store_event(conn, event, source="webhook", now=ago(seconds=0))
        out.append((pid, succeeded[0]["id"], aftermath[0]["id"]))
    return out


def _check(engine: Engine, pids: list[str], kind: str) -> None:
    with engine.connect() as conn:
        entries = {
            r[0]: (r[1], r[2], r[3])
            for r in conn.execute(
                select(
                    transactions.c.reference,
                    transactions.c.status,
                    transactions.c.committed_amount,
                    transactions.c.voided_amount,
                ).where(transactions.c.reference.in_(pids))
            )
        }
        commits = Counter(
            r[0]
            for r in conn.execute(
                select(audit.c.payment_id).where(
                    audit.c.action == "commit", audit.c.payment_id.in_(pids)
                )
            )
        )
        rows = conn.execute(
            select(tickets.c.payment_id, tickets.c.kind, tickets.c.status, tickets.c.resolution)
            .where(tickets.c.payment_id.in_(pids))
            .order_by(tickets.c.id)
        ).all()
        statuses = Counter(
            r[0]
            for r in conn.execute(
                select(inbox_table.c.status).where(inbox_table.c.payment_id.in_(pids))
            )
        )
        assert SqlLedger(conn).check_invariants() == []
    assert entries == {pid: ("APPLIED", 5000, 0) for pid in pids}
    assert commits == {pid: 1 for pid in pids}, "each payment committed exactly once"
    resolved = [(r[0], r[3]) for r in rows if r[2] != "open"]
    assert resolved == [], f"{len(resolved)} {kind} tickets closed by a stale payload: {resolved}"
    still_open = Counter(r[0] for r in rows if r[1] == kind and r[2] == "open")
    assert still_open == {pid: 1 for pid in pids}, f"one open {kind} ticket per payment"
    assert statuses == {"processed": 2 * len(pids)}


def _pair(svc: Any, succeeded_id: str, other_id: str, *, forced: bool) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(event_id: str) -> None:
        try:
            start.wait(timeout=10)
            if forced and event_id == other_id:
                # Only once the payload worker has chosen the payload (entry INFLIGHT).
                assert _HOLD.chosen.wait(10), "the payload worker never chose the payload"
            process_event(svc, event_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    refund_worker = threading.Thread(target=run, args=(other_id,))
    payload_worker = threading.Thread(target=run, args=(succeeded_id,))
    if forced:
        _HOLD.refund_worker = refund_worker
        _HOLD.chosen = threading.Event()
    payload_worker.start()
    refund_worker.start()
    payload_worker.join(30)
    refund_worker.join(30)
    _HOLD.refund_worker = None
    return errors


class _Hold:
    """Holds the payload worker between choosing the payload and locking the entry."""

    refund_worker: threading.Thread | None = None
    chosen = threading.Event()
    held = 0


_HOLD = _Hold()


# The use case's step that chooses what to decide on: the payload or a fresh read.
CHOOSER = next(
    name for name in ("payment_for_event", "_payment_for_event") if hasattr(events_usecase, name)
)


def _event_type(row_or_payload: Any) -> Any:
    if isinstance(row_or_payload, dict):
        return row_or_payload.get("type")
    return getattr(row_or_payload, "type", None)


@pytest.fixture
def hold_payload_worker(monkeypatch: pytest.MonkeyPatch) -> _Hold:
    chosen = getattr(events_usecase, CHOOSER)

    def choose_then_wait(svc: Any, row: Any, pid: str, gateway: Any) -> Any:
        payment = chosen(svc, row, pid, gateway)
        other = _HOLD.refund_worker
        if (
            other is not None
            and _event_type(row) == "payment_intent.succeeded"
            and payment is not None
            and payment.amount_refunded is None  # the payload, not a re-read
        ):
            _HOLD.chosen.set()
            other.join(30)
            _HOLD.held += 1
        return payment

    monkeypatch.setattr(events_usecase, CHOOSER, choose_then_wait)
    _HOLD.held = 0
    return _HOLD


@pytest.mark.parametrize(
    ("kind", "n"),
    [("refund_after_credit", PAYMENTS), ("dispute_opened", 10), ("fraud_warning", 10)],
)
def test_a_stale_succeeded_payload_never_closes_the_ticket_another_worker_opened(
    pg_engine: Engine, hold_payload_worker: _Hold, kind: str, n: int
) -> None:
    with run_server() as stripe:
        svc = make_services(pg_engine, stripe.url, stripe.api_key)
        forced = _payments(pg_engine, stripe, n, kind)
        for _, succeeded_id, other_id in forced:
            assert _pair(svc, succeeded_id, other_id, forced=True) == []
        # Every payload worker really did wait for the other one with its payload in hand.
        assert hold_payload_worker.held == n
        _check(pg_engine, [pid for pid, _, _ in forced], kind)

        free = _payments(pg_engine, stripe, n, kind)
        for _, succeeded_id, other_id in free:
            assert _pair(svc, succeeded_id, other_id, forced=False) == []
        _check(pg_engine, [pid for pid, _, _ in free], kind)
    with pg_engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(tickets)).scalar_one()
    assert total == 2 * n
