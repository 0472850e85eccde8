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


def test_the_intake_table_shows_each_rate_beside_the_ceiling_around_it() -> None:
    from tests.bench import intake

    phase = {
        "per_second": 4000.0,
        "p50_ms": 2.0,
        "p99_ms": 9.0,
        "errors": 0,
        "ceiling": {"per_second": 5000.0, "p50_ms": 1.5, "p99_ms": 8.0},
        "ratio_to_ceiling": 0.8,
        "ratio_to_best_ceiling": 0.7,
        "server_cpu_us": 100,
        "server_kernel_cpu_us": 30,
        "postgres_cpu_us": 40,
        "loadgen_cpu_us": 20,
        "loadgen_cores": 0.1,
        "loadavg": [1.0, 1.0, 1.0],
    }
    results = {
        "concurrency": 16,
        "seconds": 4.0,
        "cpus": 2,
        "loadavg_before": [1.0, 1.0, 1.0],
        "loadavg_after": [1.0, 1.0, 1.0],
        "raw_psycopg_one_txn_per_row": {
            "per_second": 5700.0,
            "p50_ms": 1.5,
            "p99_ms": 8.0,
            "client_cpu_us": 80,
            "postgres_cpu_us": 100,
            "all_per_second": [5700.0, 4300.0],
        },
        "intake_1w_batched": phase,
        "target": {"ratio": 0.8, "p99_ms": 50.0, "met_by": ["intake_1w_batched"]},
    }
    text = intake.table(results)
    assert "4000/s" in text and "ceiling around it 5000/s" in text and "x0.8 " in text
    assert "load generator 20 us (0.1 of a core)" in text
    assert "met by intake_1w_batched" in text
    assert "intake_1w_batched" in bench.summary({"intake": results, "errors": {}})


def test_the_load_generator_signs_as_stripe_does_and_the_official_library_agrees() -> None:
    import json

    import stripe

    from tests.bench.loadgen import build_requests

    secret = "whsec_unit_test"
    (request,) = build_requests("127.0.0.1:1", 1, "unit", secret)
    head, body = request.split(b"\r\n\r\n", 1)
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    assert int(headers["Content-Length"]) == len(body)
    stripe.WebhookSignature.verify_header(body.decode(), headers["Stripe-Signature"], secret, 300)
    assert json.loads(body)["type"] == "payment_intent.succeeded"
