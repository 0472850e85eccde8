"""The benchmark harness imports, parses its flags and formats results (no I/O)."""

from __future__ import annotations

import pytest

from tests.bench import __main__ as bench
from tests.bench import ledger, reconcile


def test_flags() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--only", "nonsense"])


def test_summary_formats_partial_results() -> None:
    case = {
        "case": "dense",
        "stripe_payments": 10,
        "ledger_entries": 10,
        "reconciled": 10,
        "all_applied": True,
        "invariants_ok": True,
        "stripe_calls": 1,
        "calls_per_payment": 0.1,
        "wall_seconds": 0.5,
        "floor_test_mode_s": 0.04,
        "floor_live_mode_s": 0.01,
    }
    text = bench.summary(
        {"reconcile": {"dense": case}, "intake": {"unavailable": "x"}, "errors": {}}
    )
    assert "0.1000" in text and "unavailable" in text
    assert "dense" in reconcile.table({"dense": case})


def test_statement_kinds() -> None:
    kind = ledger.StatementProfile._kind
    assert kind("SELECT x FROM ledger_transactions WHERE a FOR UPDATE").endswith("FOR UPDATE")
    assert kind("UPDATE ledger_balances SET balance=1") == "UPDATE ledger_balances"
