"""The issue's "Done when", in a real browser: `make demo-serve` as a new user runs it, the
console address and the sign-in it prints, Praise found by email, the stuck $2,000 top-up
committed from its ticket once Stripe says it succeeded, and every other kind of demo ticket
fixed from the browser, each audit row naming the operator.

One demo run for the module (about 15 s); the tests share it in file order: the viewer looks
first, then the operator fixes everything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, select

from ledger.sql import SqlLedger
from reconcile.tables import audit, tickets
from tests.console_support import PASSWORD, add_operator, snapshot
from tests.e2e.conftest import post_form, watch_console
from tests.e2e.test_demo import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PRAISE = "praise@example.com"
# The fix each kind of demo ticket gets from the browser.
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


@dataclass
class Demo:
    url: str  # the console, as the demo printed it
    login: str
    password: str
    stripe: str
    engine: Engine
    output: str

    def sign_in(self, page: Any, login: str | None = None, password: str | None = None) -> None:
        page.goto(self.url)
        assert "/login" in page.url
        page.fill("#login", login or self.login)
        page.fill("#password", password or self.password)
        page.click("button[type=submit]")
        page.wait_for_url("**/tickets")

    def open_tickets(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(tickets).where(tickets.c.status == "open").order_by(tickets.c.id)
            )
            return [dict(r) for r in rows.mappings()]

    def manual_audit(self, ticket_id: int | None = None, payment_id: str | None = None) -> list:
        q = select(audit).where(audit.c.reason.like("manual:%"))
        if ticket_id is not None:
            q = q.where(audit.c.ticket_id == ticket_id)
        if payment_id is not None:
            q = q.where(audit.c.payment_id == payment_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`make demo-serve` on a fresh database: the demo as a new user runs it."""
    db = tmp_path_factory.mktemp("console-demo") / "recon.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECON_", "BLNK_"))}
    env |= {
        "RECON_DEMO_DB": str(db),
        "RECON_DEMO_STRIPE_PORT": str(free_port()),
        "RECON_DEMO_CONSOLE_PORT": str(free_port()),
    }
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "tests.demo", "--serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out: list[str] = []
    engine = create_engine(f"sqlite:///{db}")
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
        address = re.search(r"^  open +(http://\S+)$", text, re.M)
        sign_in = re.search(r"^  sign in +(\S+) \(or \S+\), password (\S+)$", text, re.M)
        stripe = re.search(r"RECON_STRIPE_API_BASE=(\S+)", text)
        assert address and sign_in and stripe, text[-3000:]
        yield Demo(
            address.group(1), sign_in.group(1), sign_in.group(2), stripe.group(1), engine, text
        )
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        engine.dispose()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    yield ctx
    ctx.close()


def _fix_from_ticket(page: Any, demo: Demo, ticket_id: int, action: str, note: str) -> None:
    """Open the ticket, ask for the fix's plan, confirm it with a note; it must resolve."""
    page.goto(f"{demo.url.rstrip('/')}/tickets/{ticket_id}")
    page.click(f"button[data-action={action}]")
    assert page.locator("[data-testid=plan]").is_visible(), page.locator("main").inner_text()
    page.fill("#note", note)
    page.check("input[name=confirm]")
    page.click("[data-testid=confirm]")
    page.wait_for_url(f"**/tickets/{ticket_id}?resolved=1")
    assert page.locator("[data-testid=status]").inner_text() == "resolved"
    assert page.locator("[data-testid=resolved-by]").inner_text() == demo.login


def test_a_viewer_sees_praise_and_every_ticket_but_cannot_act(demo, context):
    add_operator(demo.engine, "vera", "viewer", password=PASSWORD)
    page = context.new_page()
    errors = watch_console(page)
    demo.sign_in(page, "vera", PASSWORD)
    page.goto(f"{demo.url}customers/praise%40example.com")
    assert page.locator("[data-testid=customer-name]").inner_text() == "Praise Okafor"
    assert page.locator("article.pending").count() == 3
    assert page.locator("[data-testid=refresh], button[data-action]").count() == 0
    ticket = demo.open_tickets()[0]["id"]
    page.goto(f"{demo.url}tickets/{ticket}")
    assert page.locator("button[data-action]").count() == 0
    assert page.locator("[data-testid=viewer-note]").is_visible()
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    before = snapshot(demo.engine)
    for action, fields in (
        ("/customers/praise%40example.com/refresh", {"csrf": csrf}),
        (
            "/payments/pi_praise_failed/resolve",
            {"csrf": csrf, "action": "void", "note": "x", "confirm": "yes"},
        ),
        (
            f"/tickets/{ticket}/resolve",
            {"csrf": csrf, "action": "none", "note": "x", "confirm": "yes"},
        ),
    ):
        response = post_form(page, action, fields)
        assert response.status == 403, action
        assert "Viewers can look but not act" in page.locator("main").inner_text()
    assert snapshot(demo.engine) == before
    # The browser logs each refused request; nothing else may have gone wrong.
    assert [e for e in errors if "status of 403" not in e] == []


def test_a_cx_agent_finds_praise_commits_the_stuck_top_up_and_fixes_every_demo_ticket(
    demo, context, shots
):
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    errors = watch_console(page)
    demo.sign_in(page)
    assert page.locator("[data-testid=operator]").inner_text() == demo.login

    # Find Praise by email: the search opens his page.
    page.fill("#q", PRAISE)
    page.press("#q", "Enter")
    page.wait_for_url("**/customers/praise%40example.com")
    assert page.locator("[data-testid=customer-name]").inner_text() == "Praise Okafor"
    assert page.locator("[data-testid=available]").inner_text() == "0.00 USD"
    stuck = page.locator('article[data-payment="pi_praise_stuck"]')
    assert "2,000.00 USD" in stuck.locator("h3").inner_text()
    assert stuck.locator("[data-testid=ledger-state]").inner_text() == "INFLIGHT"
    assert stuck.locator("[data-testid=stripe-state]").inner_text().startswith("processing")
    said_before = stuck.locator("[data-testid=message]").inner_text()
    assert "confirmed by your bank" in said_before
    stuck.locator("button.copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == said_before
    page.screenshot(path=str(shots / "customer.png"), full_page=True)

    # Stripe settles the top-up; the agent commits it from its ticket, through the plan.
    httpx.post(
        f"{demo.stripe}/_test/payment_intents/pi_praise_stuck", json={"status": "succeeded"}
    ).raise_for_status()
    stuck.locator("[data-testid=ticket-link]").click()
    page.wait_for_url("**/tickets/*")
    stuck_ticket = int(page.url.rsplit("/", 1)[1])
    body = page.locator("main").inner_text()
    for text in ("Stripe says", "Ledger says", "processing", "INFLIGHT", "2,000.00 USD"):
        assert text in body, text
    page.click("button[data-action=commit]")
    assert page.locator("[data-testid=plan-amount]").inner_text() == "2,000.00 USD"
    assert "succeeded" in page.locator("main").inner_text()  # Stripe, read again
    page.fill("#note", "Stripe says paid; crediting Praise")
    page.check("input[name=confirm]")
    page.click("[data-testid=confirm]")
    page.wait_for_url(f"**/tickets/{stuck_ticket}?resolved=1")
    assert page.locator("[data-testid=status]").inner_text() == "resolved"
    assert page.locator("[data-testid=resolved-by]").inner_text() == demo.login

    # Back on his page: settled, credited, and the message says so.
    page.click("[data-testid=customer-link]")
    page.wait_for_url("**/customers/**")
    assert page.locator('article[data-payment="pi_praise_stuck"]').count() == 0
    assert page.locator("[data-testid=available]").inner_text() == "2,000.00 USD"
    row = page.locator(f'tr[data-ticket="{stuck_ticket}"]')
    assert row.locator("[data-testid=ticket-status]").inner_text() == "resolved"
    said_after = row.locator("[data-testid=ticket-message]").inner_text()
    assert said_after != said_before and "credited with your top-up of 2,000.00 USD" in said_after

    # His failed top-up, within the grace period: the early void, from his page.
    page.goto(f"{demo.url}customers/praise%40example.com")
    page.click('article[data-payment="pi_praise_failed"] button[data-action=void]')
    assert page.locator("[data-testid=plan-amount]").inner_text() == "75.00 USD"
    page.fill("#note", "customer gave up; release the hold")
    page.check("input[name=confirm]")
    page.click("[data-testid=confirm]")
    page.wait_for_url("**/customers/**fixed=pi_praise_failed**")
    assert page.locator("[data-testid=fixed]").is_visible()
    assert page.locator('article[data-payment="pi_praise_failed"]').count() == 0

    # Another customer's stuck top-up settles: Refresh from Stripe credits it and says so.
    (processing,) = [
        t for t in demo.open_tickets() if t["payment_id"] == "pi_demo025"
    ]  # processing for 9h, past the demo's 6h SLA
    httpx.post(
        f"{demo.stripe}/_test/payment_intents/pi_demo025", json={"status": "succeeded"}
    ).raise_for_status()
    page.goto(f"{demo.url}search?q={processing['customer']}")
    page.wait_for_url("**/customers/**")
    page.click("[data-testid=refresh]")
    change = page.locator('tr[data-change="pi_demo025"]').inner_text()
    assert "INFLIGHT → APPLIED" in change and "processing → succeeded" in change
    assert "open → resolved" in change

    # Every other ticket, each kind with its fix.
    fixed_kinds = set()
    for t in demo.open_tickets():
        action = FIX[t["kind"]]
        _fix_from_ticket(page, demo, t["id"], action, f"browser walk-through: {t['kind']}")
        fixed_kinds.add(t["kind"])
    assert fixed_kinds >= {
        "missing_record",
        "paid_but_voided",
        "credited_but_failed",
        "refund_after_credit",
        "unknown_payment",
        "dispute_opened",
        "amount_mismatch",
        "stuck_payment",
    }
    assert demo.open_tickets() == []
    page.goto(f"{demo.url}tickets")
    assert "Nothing waiting" in page.locator("main").inner_text()

    # Each fix's audit row names the operator; the books still balance.
    manual = demo.manual_audit()
    assert manual and {a["actor"] for a in manual} == {demo.login}
    by_reason = {a["reason"] for a in manual}
    for action in ("commit", "void", "create-record", "credit", "reverse", "none"):
        assert f"manual:{action}" in by_reason, action
    with demo.engine.connect() as conn:
        refreshed = conn.execute(
            select(audit.c.actor).where(
                audit.c.payment_id == "pi_demo025", audit.c.action == "commit"
            )
        ).scalars()
        assert list(refreshed) == [demo.login]
        assert SqlLedger(conn).check_invariants() == []
    assert errors == []
