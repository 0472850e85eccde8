"""The issue's "Done when", walked through on the demo data as a CX agent would: `make
demo-serve` in one terminal, `recon` in another (SQLite, the local Stripe server)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from reconcile.tables import audit, tickets
from tests.integration.conftest import _fresh_state
from tests.stripe_server import DEFAULT_API_KEY
from worker.cli import app

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
# The one fix that closes each kind of ticket the demo opens.
FIX = {
    "missing_record": "create-record",
    "paid_but_voided": "credit",
    "credited_but_failed": "reverse",
    "refund_after_credit": "reverse",
    "unknown_payment": "void",
    "amount_mismatch": "none",
    "dispute_opened": "none",
    "stuck_payment": "none",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    db = tmp_path_factory.mktemp("demo") / "recon.db"
    port = free_port()
    env = {**os.environ, "RECON_DEMO_DB": str(db), "RECON_DEMO_STRIPE_PORT": str(port)}
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "tests.demo", "--serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out: list[str] = []
    try:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if "recon tickets   #" in line:
                break
        text = "".join(out)
        assert "keeps answering" in text, text[-3000:]
        assert "recon customer praise@example.com" in text
        yield {
            "RECON_DATABASE_URL": f"sqlite:///{db}",
            "RECON_STRIPE_API_BASE": f"http://127.0.0.1:{port}",
            "STRIPE_API_KEY": DEFAULT_API_KEY,
            "RECON_PROCESSING_SLA": "6h",
            "RECON_FAILED_GRACE": "1h",
            "output": text,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def recon(env: dict[str, str], *args: str) -> Any:
    from typer.testing import CliRunner

    _fresh_state()
    clean = {k: v for k, v in env.items() if k != "output"}
    return CliRunner().invoke(app, list(args), env=clean)


def test_the_demo_prints_praise_and_how_to_keep_exploring(demo):
    out = demo["output"]
    assert "Praise Okafor" in out and "2,000.00 USD" in out
    assert "export RECON_STRIPE_API_BASE=" in out and "--refresh" in out


def test_praise_shows_all_three_payments_with_the_next_step_and_message(demo):
    found = recon(demo, "customer", "praise@example.com", "--json")
    assert found.exit_code == 0, found.output
    pending = {p["payment_id"]: p for p in json.loads(found.stdout)["customer"]["pending"]}
    assert set(pending) == {"pi_praise_stuck", "pi_praise_unrecorded", "pi_praise_failed"}
    stuck = pending["pi_praise_stuck"]
    assert (stuck["formatted"], stuck["ticket_kind"]) == ("2,000.00 USD", "stuck_payment")
    assert "confirmed by your bank" in stuck["message"]
    assert "create-record" in pending["pi_praise_unrecorded"]["next_step"]
    assert "recon ledger void pi_praise_failed" in pending["pi_praise_failed"]["next_step"]
    assert "did not go through" in pending["pi_praise_failed"]["message"]


def test_refresh_credits_the_stuck_top_up_once_stripe_says_succeeded(demo):
    base = demo["RECON_STRIPE_API_BASE"]
    httpx.post(f"{base}/_test/payment_intents/pi_praise_stuck", json={"status": "succeeded"})
    done = recon(demo, "customer", "praise@example.com", "--refresh", "--json", "--by", "cx")
    assert done.exit_code == 0, done.output
    view = json.loads(done.stdout)["customer"]
    assert "pi_praise_stuck" not in {p["payment_id"] for p in view["pending"]}
    assert view["balances"][0]["formatted"] == "2,000.00 USD"


def test_each_ticket_kind_in_the_demo_is_fixed_by_one_resolve_naming_the_operator(demo):
    engine = create_engine(demo["RECON_DATABASE_URL"])
    with engine.connect() as conn:
        open_ = list(conn.execute(select(tickets).where(tickets.c.status == "open")).mappings())
    kinds = {t["kind"] for t in open_}
    assert kinds >= {"missing_record", "paid_but_voided", "credited_but_failed",
                     "refund_after_credit", "unknown_payment", "dispute_opened"}  # fmt: skip
    for kind in sorted(kinds):
        ticket = [t for t in open_ if t["kind"] == kind][0]
        res = recon(
            demo, "tickets", "resolve", str(ticket["id"]), "--action", FIX[kind],
            "--note", f"demo walk-through: {kind}", "--by", "cx-walkthrough",
        )  # fmt: skip
        assert res.exit_code == 0, (kind, res.output)
        with engine.connect() as conn:
            rows = list(
                conn.execute(select(audit).where(audit.c.ticket_id == ticket["id"])).mappings()
            )
        manual = [r for r in rows if str(r["reason"]).startswith("manual:")]
        assert [r["actor"] for r in manual] == ["cx-walkthrough"], kind
        assert manual[0]["evidence"]["note"] == f"demo walk-through: {kind}"
        if FIX[kind] != "none":
            assert manual[0]["action"] == {"create-record": "create"}.get(FIX[kind], FIX[kind])
            assert manual[0]["amount"] > 0
    check = recon(demo, "ledger", "check")
    assert check.exit_code == 0, check.output
    engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["--blnk"]], ids=["sql", "blnk"])
def test_the_demo_runs_end_to_end_and_the_books_balance(tmp_path, flags):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECON_", "BLNK_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "tests.demo", *flags],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "ledger invariants: hold" in out
    assert out.count("succeeded {") == 3  # sweep, catch-up, scan
    if flags:
        assert "the books are in Blnk" in out
        assert "every call carried X-Blnk-Key: True; float amounts sent: 0" in out
        assert "PUT /transactions/inflight" in out
    assert "@stripe" in out and "JPY" in out
