"""The CX console in a real browser: Debian's Chromium driven by Playwright, against the
console served by uvicorn on a local port, a SQLite database and the local Stripe server.

Under CI=true a missing Chromium (or Playwright) fails these tests instead of skipping them.
Screenshots go to a temporary directory; set RECON_E2E_SCREENSHOTS=tests/e2e/screenshots to
refresh the committed ones.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import Engine, select

import worker.db
from ledger.sql import transactions
from reconcile.tables import audit, tickets
from reconcile.usecases import reconcile_payment
from tests.conftest import _unavailable
from tests.console_support import (
    PASSWORD,
    add_operator,
    console_settings,
    snapshot,
    stuck_ticket_that_stripe_now_says_succeeded,
)
from tests.stripe_server import run_server
from tests.support import ago, epoch, make_services
from worker.console import create_app
from worker.schema import all_metadata

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module scope, not session: Playwright's sync API keeps an event loop running on this
    # thread while it is open, and later tests that call asyncio.run() must not see it.
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _unavailable("Playwright (pip install -e '.[dev]')", exc)
    path = shutil.which("chromium")
    if path is None:
        _unavailable(
            "Chromium (apt-get install chromium)", FileNotFoundError("chromium is not on PATH")
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


class _Served:
    def __init__(self, app: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(
            uvicorn.Config(app, lifespan="off", log_level="warning", proxy_headers=False)
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "console did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@dataclass
class World:
    url: str
    engine: Engine
    stripe: Any
    shots: Path

    def sign_in(self, page: Any, name: str) -> None:
        page.goto(self.url + "/")
        assert "/login" in page.url
        page.fill("#login", name)
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/tickets")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    url = f"sqlite:///{tmp_path / 'console.db'}"
    engine = worker.db.engine_for(url)
    for md in all_metadata():
        md.create_all(engine)
    shots = Path(os.environ.get("RECON_E2E_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with run_server() as stripe:
        app = create_app(
            console_settings(url), services=make_services(engine, stripe.url, stripe.api_key)
        )
        served = _Served(app)
        try:
            yield World(served.url, engine, stripe, shots)
        finally:
            served.stop()
    engine.dispose()
    worker.db.engine_for.cache_clear()


@pytest.fixture
def context(browser: Any, world: World) -> Iterator[Any]:
    ctx = browser.new_context(base_url=world.url, viewport={"width": 1280, "height": 900})
    yield ctx
    ctx.close()


def _watch_console(page: Any) -> list[str]:
    """Errors the page logs: a blocked inline script or style (CSP) shows up here."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def _missing_record_ticket(world: World, pid: str = "pi_paid_unrecorded") -> int:
    world.stripe.state.create_payment_intent(
        id=pid,
        amount=150000,
        currency="usd",
        status="succeeded",
        created=epoch(ago(hours=2)),
        customer="cus_praise",
        metadata={"ledger_destination": "wallet:praise"},
        record_events=False,
    )
    svc = make_services(world.engine, world.stripe.url, world.stripe.api_key)
    reconcile_payment(svc, pid, actor="system")
    with world.engine.connect() as conn:
        return int(
            conn.execute(select(tickets.c.id).where(tickets.c.payment_id == pid)).scalar_one()
        )


def test_an_operator_signs_in_opens_a_ticket_and_commits_it_through_its_plan(world, context):
    tid = stuck_ticket_that_stripe_now_says_succeeded(world.engine, world.stripe)
    _missing_record_ticket(world)
    add_operator(world.engine, "alice", password=PASSWORD)
    page = context.new_page()
    errors = _watch_console(page)

    world.sign_in(page, "alice")
    assert page.locator("[data-testid=operator]").inner_text() == "alice"
    rows = page.locator("tr[data-ticket]")
    assert rows.count() == 2
    assert page.locator("figure.chart svg rect").count() >= 1
    page.screenshot(path=str(world.shots / "queue.png"), full_page=True)

    page.click(f"a[href='/tickets/{tid}']")
    page.wait_for_url(f"**/tickets/{tid}")
    assert page.locator("[data-testid=status]").inner_text() == "open"
    body = page.locator("main").inner_text()
    for text in ("Stripe says", "Ledger says", "processing", "INFLIGHT", "2,000.00 USD"):
        assert text in body
    assert page.locator("button.copy").is_visible()  # the script un-hid it
    page.screenshot(path=str(world.shots / "ticket.png"), full_page=True)

    before = snapshot(world.engine)
    page.click("button[data-action=commit]")
    assert page.locator("[data-testid=plan]").is_visible()
    assert page.locator("[data-testid=plan-amount]").inner_text() == "2,000.00 USD"
    assert "succeeded" in page.locator("main").inner_text()  # Stripe, read again
    assert snapshot(world.engine) == before  # the plan is a dry run
    page.screenshot(path=str(world.shots / "plan.png"), full_page=True)

    page.fill("#note", "Stripe says paid; crediting Praise")
    page.check("input[name=confirm]")
    page.click("[data-testid=confirm]")
    page.wait_for_url(f"**/tickets/{tid}?resolved=1")
    assert page.locator("[data-testid=status]").inner_text() == "resolved"
    assert page.locator("[data-testid=resolved-by]").inner_text() == "alice"
    assert page.locator("button[data-action]").count() == 0

    with world.engine.connect() as conn:
        txn = (
            conn.execute(select(transactions).where(transactions.c.reference == "pi_stuck_topup"))
            .mappings()
            .one()
        )
        actors = (
            conn.execute(select(audit.c.actor).where(audit.c.reason == "manual:commit"))
            .scalars()
            .all()
        )
    assert (txn["status"], txn["committed_amount"]) == ("APPLIED", 200000)
    assert actors == ["alice"]

    page.goto(world.url + "/tickets")
    assert page.locator("tr[data-ticket]").count() == 1
    assert errors == []


def test_the_whole_fix_works_without_javascript(browser, world):
    tid = _missing_record_ticket(world)
    add_operator(world.engine, "bob", password=PASSWORD)
    ctx = browser.new_context(base_url=world.url, java_script_enabled=False)
    try:
        page = ctx.new_page()
        world.sign_in(page, "bob")
        page.goto(f"{world.url}/search?q=cus_praise")
        page.click(f"a[href='/tickets/{tid}']")
        assert not page.locator("button.copy").is_visible()  # enhancement only
        page.click("button[data-action=create-record]")
        assert page.locator("[data-testid=plan-amount]").inner_text() == "1,500.00 USD"
        page.fill("#note", "paid on Stripe, never recorded")
        page.check("input[name=confirm]")
        page.click("[data-testid=confirm]")
        page.wait_for_url(f"**/tickets/{tid}?resolved=1")
        assert page.locator("[data-testid=status]").inner_text() == "resolved"
    finally:
        ctx.close()
    with world.engine.connect() as conn:
        txn = (
            conn.execute(
                select(transactions).where(transactions.c.reference == "pi_paid_unrecorded")
            )
            .mappings()
            .one()
        )
    assert (txn["status"], txn["destination"], txn["amount"]) == (
        "APPLIED",
        "wallet:praise",
        150000,
    )


def _post_form(page: Any, action: str, fields: dict[str, str]) -> Any:
    """What a crafted request looks like from a signed-in browser: a form the page never
    offered, submitted as a top-level navigation."""
    with page.expect_navigation() as nav:
        page.evaluate(
            """([action, fields]) => {
                const f = document.createElement("form");
                f.method = "post";
                f.action = action;
                for (const [k, v] of Object.entries(fields)) {
                    const i = document.createElement("input");
                    i.type = "hidden"; i.name = k; i.value = v;
                    f.appendChild(i);
                }
                document.body.appendChild(f);
                f.submit();
            }""",
            [action, fields],
        )
    return nav.value


def test_a_viewer_sees_no_fix_and_a_crafted_post_is_refused(world, context):
    tid = stuck_ticket_that_stripe_now_says_succeeded(world.engine, world.stripe)
    add_operator(world.engine, "vera", "viewer", password=PASSWORD)
    page = context.new_page()
    world.sign_in(page, "vera")
    page.goto(f"{world.url}/tickets/{tid}")
    assert page.locator("button[data-action]").count() == 0
    assert page.locator("[data-testid=viewer-note]").is_visible()
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    before = snapshot(world.engine)
    response = _post_form(
        page,
        f"/tickets/{tid}/resolve",
        {"csrf": csrf, "action": "commit", "note": "sneaky", "confirm": "yes"},
    )
    assert response.status == 403
    assert "Viewers can look but not act" in page.locator("main").inner_text()
    assert snapshot(world.engine) == before


def test_a_post_without_its_csrf_token_is_refused_in_the_browser(world, context):
    tid = stuck_ticket_that_stripe_now_says_succeeded(world.engine, world.stripe)
    add_operator(world.engine, "alice", password=PASSWORD)
    page = context.new_page()
    world.sign_in(page, "alice")
    page.goto(f"{world.url}/tickets/{tid}")
    before = snapshot(world.engine)
    response = _post_form(
        page, f"/tickets/{tid}/resolve", {"action": "commit", "note": "x", "confirm": "yes"}
    )
    assert response.status == 403
    assert "CSRF" in page.locator("main").inner_text()
    assert snapshot(world.engine) == before


def test_a_signed_out_visitor_sees_only_the_sign_in_page(world, context):
    tid = stuck_ticket_that_stripe_now_says_succeeded(world.engine, world.stripe)
    page = context.new_page()
    for path in ("/", "/tickets", f"/tickets/{tid}", "/search?q=pi_stuck_topup"):
        page.goto(world.url + path)
        assert "/login?next=" in page.url, path
        assert page.locator("#password").is_visible()
        main = page.locator("main").inner_text()
        assert "2,000.00" not in main and "wallet:praise" not in main and "Stripe" not in main
    page.screenshot(path=str(world.shots / "sign-in.png"))
