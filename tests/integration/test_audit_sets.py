"""Audit rows written as a set (the sweep's path on PostgreSQL) read back as the rows given,
and as the same rows the portable path writes on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, select

from reconcile.runs import record_audits
from reconcile.tables import audit

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

ROWS: list[dict[str, Any]] = [
    {
        "run_id": None,
        "payment_id": "pi_1",
        "reference": "ref-1",
        "action": "commit",
        "reason": "succeeded",
        "actor": "bench",
        "amount": 2_000,
        "currency": "USD",
        "evidence": {"stripe": {"status": "succeeded", "amount": 2000}, "note": 'é \u0000 "q"'},
        "now": NOW,
    },
    {
        "payment_id": None,
        "action": "void",
        "reason": "canceled",
        "actor": "system",
        "evidence": None,
        "now": NOW,
    },
]


@pytest.mark.parametrize("engine_name", ["pg_engine", "sqlite_engine"])
def test_audit_rows_written_together_read_back_as_given(
    engine_name: str, request: pytest.FixtureRequest
) -> None:
    engine: Engine = request.getfixturevalue(engine_name)
    with engine.begin() as conn:
        record_audits(conn, ROWS)
    with engine.connect() as conn:
        got = [dict(r) for r in conn.execute(select(audit).order_by(audit.c.id)).mappings()]
    assert [
        (r["payment_id"], r["reference"], r["action"], r["amount"], r["currency"], r["evidence"])
        for r in got
    ] == [
        ("pi_1", "ref-1", "commit", 2_000, "USD", ROWS[0]["evidence"]),
        (None, None, "void", None, None, {}),
    ]
    assert all(r["created_at"] == NOW and r["ticket_id"] is None for r in got)
