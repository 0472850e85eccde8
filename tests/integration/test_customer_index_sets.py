"""The customer index written as sets on PostgreSQL (the sweep's path) leaves the same rows
as the portable per-row path, batch after batch, whatever the mix of known and new people."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, select

from reconcile import customers
from reconcile.customers import Sighting
from reconcile.model import Payment, PaymentStatus
from reconcile.tables import customer_keys, customer_payments
from reconcile.tables import customers as customers_table
from tests.support import throwaway_schema
from worker.db import make_engine
from worker.schema import all_metadata

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _payment(rng: random.Random, pid: str) -> Payment:
    return Payment(
        id=pid,
        status=rng.choice([PaymentStatus.SUCCEEDED, PaymentStatus.PROCESSING, None]),
        amount=rng.randrange(100, 10_000),
        currency="usd",
        created=T0,
        amount_received=rng.choice([None, 0, 500]),
        amount_refunded=rng.choice([None, 0, 100]),
        last_payment_error=rng.choice([None, "", "card_declined" * 30]),
        livemode=rng.choice([True, False]),
    )


def _batches(seed: int) -> list[list[Sighting]]:
    rng = random.Random(seed)
    out = []
    for b in range(6):
        batch = []
        for i in range(rng.randrange(1, 60)):
            pid = f"pi_{rng.randrange(80)}"
            who = rng.randrange(25)
            read = rng.random() < 0.6
            batch.append(
                Sighting(
                    payment_id=pid,
                    stripe_customer=rng.choice([None, f"cus_{who}", f"cus_{who + 1}"]),
                    email=rng.choice([None, f"p{who}@example.com"]),
                    name=rng.choice([None, None, f"Person {who}", "Praise Okafor"]),
                    balance=rng.choice([None, f"wallet:{who % 7}"]),
                    amount=rng.choice([None, 100 * who]),
                    currency=rng.choice([None, "usd"]),
                    created=T0 + timedelta(minutes=b * 100 + i),
                    payment=_payment(rng, pid) if read else None,
                    stripe_read=read,
                )
            )
        out.append([s for s in batch if s.primary is not None])
    return out


def _snapshot(conn: Connection) -> dict[str, Any]:
    c, k, p = customers_table.c, customer_keys.c, customer_payments.c
    people = conn.execute(
        select(c.id, c.key, c.name, c.email, c.stripe_customer, c.created_at, c.updated_at)
    ).all()
    by_id = {row.id: row.key for row in people}
    return {
        "customers": sorted(tuple(r)[1:] for r in people),
        "keys": sorted((r.kind, r.value, by_id[r.customer_id]) for r in conn.execute(select(k))),
        "payments": sorted(
            tuple(by_id[v] if f == "customer_id" else v for f, v in r._mapping.items())
            for r in conn.execute(select(customer_payments).order_by(p.payment_id))
        ),
    }


def _run(
    write: Callable[[Connection, Sequence[Sighting], datetime], None], seed: int
) -> dict[str, Any]:
    with throwaway_schema("t_cidx_") as url:
        engine: Engine = make_engine(url)
        try:
            for md in all_metadata():
                md.create_all(engine)
            for n, batch in enumerate(_batches(seed)):
                with engine.begin() as conn:
                    write(conn, batch, T0 + timedelta(hours=n))
            with engine.connect() as conn:
                return _snapshot(conn)
        finally:
            engine.dispose()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_set_based_index_write_leaves_the_rows_the_per_row_write_leaves(seed: int) -> None:
    sets = _run(customers.record, seed)
    rows = _run(customers._record_rows, seed)
    assert sets["customers"], "the batches identified nobody: the test proves nothing"
    assert sets == rows
