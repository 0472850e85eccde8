"""The CX console over ASGI (Starlette's TestClient): sign-in, sessions, CSRF, roles, the
trusted proxy, rate limits, escaping, headers, and the fix flow against the local Stripe
server.  SQLite unless a test says otherwise; the fix flow also runs on PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from starlette.testclient import TestClient

import worker.db
from ledger.sql import transactions
from reconcile.tables import audit, tickets
from tests.console_support import (
    PASSWORD,
    Clock,
    add_operator,
    console_settings,
    seed_ticket,
    session_cookie,
    snapshot,
    stuck_ticket_that_stripe_now_says_succeeded,
)
from tests.stripe_server import run_server
from tests.support import make_services
from worker import operators as ops
from worker.console import ConsoleConfigError, create_app
from worker.schema import all_metadata

pytestmark = pytest.mark.integration

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@dataclass
class Harness:
    url: str
    engine: Engine
    clock: Clock
    app: Any
    client: TestClient
    settings_kw: dict[str, Any]

    def sign_in_as(self, op: ops.Operator) -> None:
        value = session_cookie(self.app, self.engine, op, now=self.clock())
        self.client.cookies.set("recon_console", value)

    def csrf(self, path: str = "/tickets") -> str:
        page = self.client.get(path)
        assert page.status_code == 200, page.text
        return re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text).group(1)

    def nonce(self, client: TestClient | None = None) -> str:
        page = (client or self.client).get("/login")
        return re.search(r'name="nonce" value="([0-9a-f]+)"', page.text).group(1)

    def login(self, login: str, password: str, client: TestClient | None = None) -> Any:
        c = client or self.client
        return c.post(
            "/login",
            data={"login": login, "password": password, "nonce": self.nonce(c), "next": "/"},
        )

    def new_app(self, **kw: Any) -> Any:
        """A second app on the same database, as another process would be."""
        return create_app(
            console_settings(self.url, **{**self.settings_kw, **kw}), clock=self.clock
        )

    def client_for(self, app: Any, **kw: Any) -> TestClient:
        kw.setdefault("base_url", "http://localhost")
        return TestClient(app, follow_redirects=False, **kw)


def _tables(url: str) -> Engine:
    engine = worker.db.engine_for(url)
    for md in all_metadata():
        md.create_all(engine)
    return engine


def _harness(url: str, **kw: Any) -> Iterator[Harness]:
    engine = _tables(url)
    clock = Clock()
    stripe_services = kw.pop("services", None)
    app = create_app(console_settings(url, **kw), clock=clock, services=stripe_services)
    client = TestClient(app, base_url="http://localhost", follow_redirects=False)
    yield Harness(url, engine, clock, app, client, kw)
    client.close()
    engine.dispose()
    worker.db.engine_for.cache_clear()


@pytest.fixture
def h(tmp_path: Any) -> Iterator[Harness]:
    yield from _harness(f"sqlite:///{tmp_path / 'console.db'}")


@pytest.fixture
def stripe() -> Iterator[Any]:
    with run_server() as srv:
        yield srv


@pytest.fixture(params=["sqlite", "postgresql"])
def fixing(request: pytest.FixtureRequest, tmp_path: Any, stripe: Any) -> Iterator[Harness]:
    """A console whose fixes read the local Stripe server, on both dialects."""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_schema")
    else:
        url = f"sqlite:///{tmp_path / 'console.db'}"
    svc = make_services(_tables(url), stripe.url, stripe.api_key)
    yield from _harness(url, services=svc)


@pytest.fixture
def fixing_lite(tmp_path: Any, stripe: Any) -> Iterator[Harness]:
    url = f"sqlite:///{tmp_path / 'console.db'}"
    svc = make_services(_tables(url), stripe.url, stripe.api_key)
    yield from _harness(url, services=svc)


# -- signed out ---------------------------------------------------------------------------

SIGNED_OUT_GETS = [
    "/",
    "/tickets",
    "/tickets/1",
    "/search?q=pi_seeded",
    "/no/such/page",
    "/tickets?kind=x",
]
SIGNED_OUT_POSTS = ["/logout", "/tickets/1/plan", "/tickets/1/resolve", "/tickets", "/no/such"]


@pytest.mark.parametrize("path", SIGNED_OUT_GETS)
def test_a_signed_out_visitor_is_sent_to_the_sign_in_page_from_every_page(h, path):
    seed_ticket(h.engine, summary="secret summary of a customer")
    r = h.client.get(path)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login?next=")
    assert "secret summary" not in r.text


@pytest.mark.parametrize("path", SIGNED_OUT_POSTS)
def test_a_signed_out_post_is_refused_and_changes_nothing(h, path):
    tid = seed_ticket(h.engine)
    before = snapshot(h.engine)
    r = h.client.post(path.replace("/1/", f"/{tid}/"), data={"action": "none", "note": "x"})
    assert r.status_code in (401, 303, 405)
    assert r.status_code != 200
    assert snapshot(h.engine) == before


def test_the_sign_in_page_and_the_stylesheet_are_all_a_signed_out_visitor_gets(h):
    seed_ticket(h.engine, summary="secret summary of a customer")
    page = h.client.get("/login")
    assert page.status_code == 200
    assert 'name="password"' in page.text and "secret summary" not in page.text
    assert h.client.get("/static/console.css").status_code == 200
    assert h.client.get("/static/../templates/ticket.html").status_code != 200


def test_a_link_from_another_site_is_bounced_once_so_the_strict_cookie_comes_along(h):
    r = h.client.get("/tickets/7?x=1", headers={"sec-fetch-site": "cross-site"})
    assert r.status_code == 200
    assert 'content="0; url=/tickets/7?x=1"' in r.text
    assert "tickets" not in r.text.split("<body>")[1].replace("/tickets/7", "")


# -- signing in ---------------------------------------------------------------------------


def test_the_right_password_signs_in_with_a_strict_httponly_cookie_and_lands_on_next(h):
    add_operator(h.engine, "alice", password=PASSWORD)
    nonce = h.nonce()
    r = h.client.post(
        "/login", data={"login": "Alice", "password": PASSWORD, "nonce": nonce, "next": "/search"}
    )
    assert r.status_code == 303 and r.headers["location"] == "/search"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("recon_console=")
    for flag in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=43200"):
        assert flag in cookie
    assert "Secure" not in cookie  # plain http on localhost only
    page = h.client.get("/tickets")
    assert page.status_code == 200 and ">alice<" in page.text


def test_email_signs_in_as_well_as_the_name(h):
    add_operator(h.engine, "alice", email="Alice@Example.com", password=PASSWORD)
    assert h.login("ALICE@example.com", PASSWORD).status_code == 303


def test_the_session_cookie_is_secure_and_host_prefixed_outside_localhost(h):
    add_operator(h.engine, "alice", password=PASSWORD)
    client = h.client_for(h.app, base_url="https://console.example.com")
    r = h.login("alice", PASSWORD, client)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("__Host-recon_console=")
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/tickets").status_code == 200


def test_the_sign_in_page_says_when_plain_http_away_from_localhost_cannot_work(h):
    assert "needs-https" not in h.client.get("/login").text
    assert (
        "needs-https" in h.client_for(h.app, base_url="http://console.internal").get("/login").text
    )
    assert (
        "needs-https"
        not in h.client_for(h.app, base_url="https://console.internal").get("/login").text
    )


def test_a_next_pointing_at_another_site_is_ignored(h):
    add_operator(h.engine, "alice", password=PASSWORD)
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        client = h.client_for(h.app)
        r = client.post(
            "/login",
            data={"login": "alice", "password": PASSWORD, "nonce": h.nonce(client), "next": target},
        )
        assert r.headers["location"] == "/tickets"


def test_a_wrong_password_an_unknown_name_and_a_passwordless_operator_get_the_same_answer(h):
    add_operator(h.engine, "alice", password=PASSWORD)
    add_operator(h.engine, "sso-only")
    answers = {
        (r.status_code, re.search(r'role="alert">([^<]*)<', r.text).group(1))
        for r in (
            h.login("alice", "wrong password here"),
            h.login("nobody", PASSWORD),
            h.login("sso-only", PASSWORD),
        )
    }
    assert len(answers) == 1 and answers.pop()[0] == 401
    assert "recon_console=" not in h.client.cookies.get("recon_console", "")


def test_sign_in_without_the_form_nonce_is_refused(h):
    add_operator(h.engine, "alice", password=PASSWORD)
    r = h.client.post("/login", data={"login": "alice", "password": PASSWORD})
    assert r.status_code == 400
    r = h.client.post("/login", data={"login": "alice", "password": PASSWORD, "nonce": "0" * 32})
    assert r.status_code == 400
    assert h.client.get("/tickets").status_code == 303


def test_two_sign_in_tabs_do_not_invalidate_each_other(h):
    add_operator(h.engine, "alice", password=PASSWORD)
    first = h.nonce()
    second = h.nonce()  # another tab, or a favicon request bounced to the sign-in page
    assert h.client.get("/favicon.ico").status_code == 204
    r = h.client.post(
        "/login", data={"login": "alice", "password": PASSWORD, "nonce": first, "next": "/"}
    )
    assert first == second and r.status_code == 303


def test_failed_sign_ins_lock_the_name_across_processes_until_the_window_passes(h):
    add_operator(h.engine, "alice", password=PASSWORD)
    for _ in range(5):
        assert h.login("alice", "not the password").status_code == 401
    locked = h.login("alice", PASSWORD)
    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.text
    # Another process (a second app on the same database) sees the same count.
    other = h.client_for(h.new_app())
    assert h.login("alice", PASSWORD, other).status_code == 429
    h.clock.advance(minutes=16)
    assert h.login("alice", PASSWORD).status_code == 303


def test_failed_sign_ins_from_one_address_lock_that_address_for_every_name(h):
    for name in ("alice", "bob", "carol"):
        add_operator(h.engine, name, password=PASSWORD)
    app = h.new_app(console_login_max_failures_per_address=3)
    attacker = h.client_for(app, client=("198.51.100.7", 1234))
    for name in ("alice", "bob", "nobody"):
        assert h.login(name, "guess guess guess", attacker).status_code == 401
    assert h.login("carol", PASSWORD, attacker).status_code == 429
    elsewhere = h.client_for(app, client=("198.51.100.8", 1234))
    assert h.login("carol", PASSWORD, elsewhere).status_code == 303


def test_a_success_forgives_the_name_but_not_the_address(h):
    add_operator(h.engine, "alice", password=PASSWORD)
    for _ in range(4):
        h.login("alice", "wrong wrong wrong")
    assert h.login("alice", PASSWORD).status_code == 303
    with h.engine.connect() as conn:
        by_login, by_address = ops.recent_failures(
            conn, "alice", "testclient", since=h.clock() - timedelta(hours=1)
        )
    assert by_login == 0 and by_address == 0  # same address: its failures were alice's


def test_an_oversized_sign_in_form_is_refused_unread(h):
    r = h.client.post(
        "/login",
        content=b"login=" + b"a" * 70_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 413


def test_signing_in_clears_away_sessions_that_expired(h):
    op = add_operator(h.engine, "alice", password=PASSWORD)
    for _ in range(3):
        session_cookie(h.app, h.engine, op, now=h.clock())
    h.clock.advance(hours=1)
    assert h.login("alice", PASSWORD).status_code == 303
    with h.engine.connect() as conn:
        assert conn.execute(select(ops.sessions.c.token_hash)).all().__len__() == 1


def test_signing_out_ends_the_session_on_the_server(h):
    add_operator(h.engine, "alice", password=PASSWORD)
    h.login("alice", PASSWORD)
    stolen = h.client.cookies.get("recon_console")
    r = h.client.post("/logout", data={"csrf": h.csrf()})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    replay = h.client_for(h.app)
    replay.cookies.set("recon_console", stolen)
    assert replay.get("/tickets").status_code == 303


def test_sessions_end_after_the_idle_timeout_and_at_the_absolute_limit(h):
    op = add_operator(h.engine, "alice")
    h.sign_in_as(op)
    h.clock.advance(minutes=29)
    assert h.client.get("/tickets").status_code == 200
    h.clock.advance(minutes=29)
    assert h.client.get("/tickets").status_code == 200  # active: the idle clock restarted
    h.clock.advance(minutes=31)
    assert h.client.get("/tickets").status_code == 303  # idle too long
    h.sign_in_as(op)
    for _ in range(35):  # 11 h 40 min of steady use
        h.clock.advance(minutes=20)
        assert h.client.get("/tickets").status_code == 200
    h.clock.advance(minutes=20)
    assert h.client.get("/tickets").status_code == 303  # 12 h at most, however active


def test_a_disabled_operator_is_signed_out_at_once(h):
    op = add_operator(h.engine, "alice")
    h.sign_in_as(op)
    assert h.client.get("/tickets").status_code == 200
    with h.engine.begin() as conn:
        ops.disable_operator(conn, "alice", now=h.clock())
    assert h.client.get("/tickets").status_code == 303


def test_a_disabled_operator_cannot_sign_in_even_with_the_right_password(h):
    add_operator(h.engine, "alice", password=PASSWORD)
    with h.engine.begin() as conn:
        ops.disable_operator(conn, "alice", now=h.clock())
    assert h.login("alice", PASSWORD).status_code == 401


def test_a_tampered_or_unsigned_session_cookie_is_refused(h):
    op = add_operator(h.engine, "alice")
    h.sign_in_as(op)
    value = h.client.cookies.get("recon_console")
    token, _, sig = value.rpartition(".")
    for bad in (token, f"{token}.{'A' * len(sig)}", f"x{value}"):
        h.client.cookies.set("recon_console", bad)
        assert h.client.get("/tickets").status_code == 303


# -- CSRF and roles -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/tickets/{id}/plan", "/tickets/{id}/resolve", "/logout"])
@pytest.mark.parametrize("token", [None, "0" * 64, ""])
def test_a_post_without_its_csrf_token_or_with_a_wrong_one_is_refused(h, path, token):
    op = add_operator(h.engine, "alice")
    tid = seed_ticket(h.engine)
    h.sign_in_as(op)
    before = snapshot(h.engine)
    data = {"action": "none", "note": "close it", "confirm": "yes"}
    if token is not None:
        data["csrf"] = token
    r = h.client.post(path.format(id=tid), data=data)
    assert r.status_code == 403
    assert "CSRF" in r.text
    assert snapshot(h.engine) == before
    assert h.client.get("/tickets").status_code == 200  # still signed in


def test_a_cross_site_post_is_refused_even_with_the_right_token(h):
    op = add_operator(h.engine, "alice")
    tid = seed_ticket(h.engine)
    h.sign_in_as(op)
    csrf = h.csrf(f"/tickets/{tid}")
    before = snapshot(h.engine)
    r = h.client.post(
        f"/tickets/{tid}/resolve",
        data={"csrf": csrf, "action": "none", "note": "x", "confirm": "yes"},
        headers={"sec-fetch-site": "cross-site"},
    )
    assert r.status_code == 403
    assert snapshot(h.engine) == before


def test_a_viewer_sees_no_fix_and_a_crafted_post_gets_403_and_changes_nothing(h):
    viewer = add_operator(h.engine, "victor", "viewer")
    tid = seed_ticket(h.engine)
    h.sign_in_as(viewer)
    page = h.client.get(f"/tickets/{tid}")
    assert page.status_code == 200
    assert "/plan" not in page.text and "/resolve" not in page.text
    assert "can look but not act" in page.text
    csrf = h.csrf(f"/tickets/{tid}")  # the sign-out form carries it
    before = snapshot(h.engine)
    for path in (f"/tickets/{tid}/plan", f"/tickets/{tid}/resolve"):
        r = h.client.post(
            path, data={"csrf": csrf, "action": "none", "note": "x", "confirm": "yes"}
        )
        assert r.status_code == 403
        assert "Viewers can look but not act" in r.text
    assert snapshot(h.engine) == before


# -- the trusted proxy --------------------------------------------------------------------

PROXY = {"console_auth_header": "X-Forwarded-Email", "console_trusted_proxies": "10.0.0.0/24, ::1"}


def test_the_proxy_header_signs_in_only_when_it_comes_from_a_trusted_address(h):
    add_operator(h.engine, "alice", email="alice@example.com")
    app = h.new_app(**PROXY)
    via_proxy = h.client_for(app, client=("10.0.0.5", 5000))
    r = via_proxy.get("/tickets", headers={"X-Forwarded-Email": "Alice@Example.com"})
    assert r.status_code == 200 and ">alice<" in r.text
    assert "recon_console=" in r.headers["set-cookie"]
    direct = h.client_for(app, client=("203.0.113.9", 5000))
    r = direct.get("/tickets", headers={"X-Forwarded-Email": "alice@example.com"})
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    # X-Forwarded-For names the client, never whom to trust.
    r = direct.get(
        "/tickets",
        headers={"X-Forwarded-Email": "alice@example.com", "X-Forwarded-For": "10.0.0.5"},
    )
    assert r.status_code == 303


def test_the_proxy_naming_an_unknown_or_disabled_operator_is_refused(h):
    add_operator(h.engine, "alice", email="alice@example.com")
    app = h.new_app(**PROXY)
    via_proxy = h.client_for(app, client=("10.0.0.5", 5000))
    r = via_proxy.get("/tickets", headers={"X-Forwarded-Email": "mallory@example.com"})
    assert r.status_code == 403 and "not an operator" in r.text
    assert (
        via_proxy.get("/tickets", headers={"X-Forwarded-Email": "alice@example.com"}).status_code
        == 200
    )
    with h.engine.begin() as conn:
        ops.disable_operator(conn, "alice", now=h.clock())
    r = via_proxy.get("/tickets", headers={"X-Forwarded-Email": "alice@example.com"})
    assert r.status_code == 403


def test_a_session_follows_the_operator_the_proxy_names(h):
    add_operator(h.engine, "alice", email="alice@example.com")
    add_operator(h.engine, "bob", "viewer", email="bob@example.com")
    app = h.new_app(**PROXY)
    via_proxy = h.client_for(app, client=("10.0.0.5", 5000))
    assert (
        ">alice<"
        in via_proxy.get("/tickets", headers={"X-Forwarded-Email": "alice@example.com"}).text
    )
    assert (
        ">bob<" in via_proxy.get("/tickets", headers={"X-Forwarded-Email": "bob@example.com"}).text
    )


def test_behind_a_trusted_proxy_the_rate_limit_counts_the_forwarded_client(h):
    add_operator(h.engine, "alice", password=PASSWORD)
    app = h.new_app(**PROXY, console_login_max_failures_per_address=2)
    proxy = h.client_for(app, client=("10.0.0.5", 5000))
    proxy.headers["X-Forwarded-For"] = "198.51.100.1, 10.0.0.4"
    h.login("x", "wrong wrong wrong", proxy)
    h.login("y", "wrong wrong wrong", proxy)
    assert h.login("alice", PASSWORD, proxy).status_code == 429
    proxy.headers["X-Forwarded-For"] = "198.51.100.2"
    assert h.login("alice", PASSWORD, proxy).status_code == 303


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"console_secret": ""}, "RECON_CONSOLE_SECRET"),
        ({"console_secret": "short"}, "RECON_CONSOLE_SECRET"),
        ({"console_auth_header": "X-Forwarded-Email"}, "RECON_CONSOLE_TRUSTED_PROXIES"),
        (
            {"console_auth_header": "X-Email", "console_trusted_proxies": "10.0.0.0/33"},
            "not an IP address",
        ),
        ({"console_auth_header": "X Email", "console_trusted_proxies": "10.0.0.1"}, "header"),
        (
            {"console_session_idle": timedelta(hours=13)},
            "RECON_CONSOLE_SESSION_IDLE",
        ),
    ],
)
def test_a_console_that_cannot_be_safe_refuses_to_start(h, settings, message):
    with pytest.raises(ConsoleConfigError, match=message):
        h.new_app(**settings)


# -- pages --------------------------------------------------------------------------------


def test_the_queue_is_most_severe_first_then_oldest_and_says_how_long_each_waited(h):
    now = h.clock()
    low_old = seed_ticket(
        h.engine, severity=1, payment_id="pi_a", opened_at=now - timedelta(days=3)
    )
    crit_new = seed_ticket(
        h.engine,
        severity=4,
        kind="paid_but_voided",
        payment_id="pi_b",
        opened_at=now - timedelta(minutes=5),
    )
    high_old = seed_ticket(
        h.engine, severity=3, payment_id="pi_c", opened_at=now - timedelta(hours=30)
    )
    high_new = seed_ticket(
        h.engine, severity=3, payment_id="pi_d", opened_at=now - timedelta(hours=2)
    )
    seed_ticket(h.engine, status="resolved", payment_id="pi_e")
    h.sign_in_as(add_operator(h.engine, "alice"))
    page = h.client.get("/tickets")
    order = [int(x) for x in re.findall(r'<tr data-ticket="(\d+)"', page.text)]
    assert order == [crit_new, high_old, high_new, low_old]
    waited = re.findall(r'class="waited"[^>]*>([^<]*)<', page.text)
    assert waited == ["5m", "1d6h", "2h", "3d"]
    assert "4 open tickets" in page.text


def test_the_queue_filters_by_kind_severity_and_age_and_refuses_bad_filters(h):
    now = h.clock()
    a = seed_ticket(
        h.engine,
        kind="missing_record",
        severity=3,
        payment_id="pi_a",
        opened_at=now - timedelta(hours=5),
    )
    b = seed_ticket(
        h.engine,
        kind="stuck_payment",
        severity=1,
        payment_id="pi_b",
        opened_at=now - timedelta(hours=5),
    )
    c = seed_ticket(
        h.engine,
        kind="missing_record",
        severity=3,
        payment_id="pi_c",
        opened_at=now - timedelta(minutes=5),
    )
    h.sign_in_as(add_operator(h.engine, "alice"))

    def ids(query: str) -> list[int]:
        r = h.client.get(f"/tickets?{query}")
        assert r.status_code == 200
        return sorted(int(x) for x in re.findall(r'<tr data-ticket="(\d+)"', r.text))

    assert ids("kind=missing_record") == sorted([a, c])
    assert ids("severity=low") == [b]
    assert ids("age=4h") == sorted([a, b])
    assert ids("kind=missing_record&age=1h&severity=high") == [a]
    for bad in ("kind=stuck-payment", "severity=urgent", "age=5y"):
        r = h.client.get(f"/tickets?{bad}")
        assert r.status_code == 400 and "Bad filter" in r.text


def test_the_queue_chart_counts_tickets_per_kind_per_day_over_two_weeks(h):
    now = h.clock()
    for days, kind in (
        (0, "stuck_payment"),
        (0, "stuck_payment"),
        (3, "missing_record"),
        (13, "incident"),
        (14, "incident"),
    ):
        seed_ticket(
            h.engine,
            kind=kind,
            payment_id=f"pi_{days}_{kind}_{now.microsecond}{days}",
            opened_at=now - timedelta(days=days),
            status="resolved",
        )
    # Two stuck_payment tickets on one day need two payments.
    h.sign_in_as(add_operator(h.engine, "alice"))
    page = h.client.get("/tickets").text
    svg = page[page.index("<svg xmlns") : page.index("</svg>")]
    titles = re.findall(r"<title>([^<]*)</title>", svg)
    today, three, thirteen = ((now - timedelta(days=d)).date().isoformat() for d in (0, 3, 13))
    assert sorted(titles) == sorted(
        [
            f"{today}: 2 stuck_payment",
            f"{three}: 1 missing_record",
            f"{thirteen}: 1 incident",
        ]
    )
    assert "4 ticket(s) opened" in page  # the 15-day-old one is out of the window
    assert 'role="img"' in svg


def test_the_ticket_page_has_everything_tickets_show_has(h):
    tid = seed_ticket(
        h.engine,
        payment_id="pi_full",
        reference="pi_full",
        customer="cus_9",
        customer_email="praise@example.com",
        balance="wallet:praise",
        amount=5000,
        currency="JPY",
        stripe_state={"found": True, "status": "processing", "amount": 5000, "currency": "JPY"},
        ledger_state={"found": True, "status": "INFLIGHT", "amount": 5000, "currency": "JPY"},
        customer_message="Your top-up is being confirmed by your bank.",
        dashboard_url="https://dashboard.stripe.com/test/payments/pi_full",
        occurrences=3,
    )
    with h.engine.begin() as conn:
        conn.execute(
            audit.insert().values(
                payment_id="pi_full",
                action="ticket",
                reason="processing_past_sla",
                actor="system",
                evidence={},
                created_at=h.clock(),
                amount=5000,
                currency="JPY",
            )
        )
    h.sign_in_as(add_operator(h.engine, "alice"))
    page = h.client.get(f"/tickets/{tid}").text
    for text in (
        "pi_full",
        "cus_9",
        "praise@example.com",
        "wallet:praise",
        "5,000 JPY",
        "processing",
        "INFLIGHT",
        "Suggested fix",
        "Check the dashboard.",
        "being confirmed by your bank",
        'href="https://dashboard.stripe.com/test/payments/pi_full"',
        "3 times",
        "processing_past_sla",
        "Copy the message",
        "Commit the held amount",
        "Void the hold",
        "Close without a ledger change",
    ):
        assert text in page, text
    assert "Create the missing record" not in page  # not a fix for a stuck payment
    assert h.client.get("/tickets/99999").status_code == 404


def test_search_goes_to_a_ticket_by_number_and_lists_tickets_by_payment_email_customer_or_balance(
    h,
):
    a = seed_ticket(
        h.engine,
        payment_id="pi_x1",
        customer="cus_p",
        customer_email="Praise@Example.com",
        balance="wallet:praise",
    )
    b = seed_ticket(
        h.engine,
        kind="missing_record",
        payment_id="pi_x2",
        customer="cus_p",
        balance="wallet:praise",
    )
    seed_ticket(h.engine, payment_id="pi_other", customer="cus_q", balance="wallet:q")
    h.sign_in_as(add_operator(h.engine, "alice"))

    def found(q: str) -> list[int]:
        r = h.client.get("/search", params={"q": q})
        assert r.status_code == 200, r.text
        return sorted(int(x) for x in re.findall(r'<tr data-ticket="(\d+)"', r.text))

    r = h.client.get("/search", params={"q": f"#{a}"})
    assert r.status_code == 303 and r.headers["location"] == f"/tickets/{a}"
    assert found("pi_x2") == [b]
    assert found("praise@example.com") == [a]
    assert found("cus_p") == sorted([a, b])
    assert found("wallet:praise") == sorted([a, b])
    assert found("PRAISE") == sorted([a, b])
    assert found("99999") == []
    assert found("100%_") == []
    assert h.client.get("/search", params={"q": "x" * 201}).status_code == 400
    assert h.client.get("/search").status_code == 200


# -- escaping and what is never shown -----------------------------------------------------


def test_html_in_summaries_notes_metadata_messages_and_operator_names_is_escaped_everywhere(h):
    tid = seed_ticket(
        h.engine,
        payment_id="pi_xss",
        summary=f"summary {XSS}",
        customer=f"cus {XSS}",
        customer_email=f"e{XSS}@x.com",
        balance=f"wallet:{XSS}",
        customer_message=f"message {XSS}",
        suggested_fix=f"fix {XSS}",
        reason="r",
        stripe_state={"found": True, "status": XSS, "last_payment_error": XSS},
        ledger_state={"found": True, "status": "INFLIGHT", "destination": XSS},
        dashboard_url="javascript:alert(1)",
    )
    resolved = seed_ticket(
        h.engine,
        payment_id="pi_xss2",
        status="resolved",
        resolved_by=XSS,
        resolution=f"note {XSS}",
        resolved_at=h.clock(),
        customer=f"cus {XSS}",
    )
    with h.engine.begin() as conn:
        conn.execute(
            audit.insert().values(
                payment_id="pi_xss",
                action="commit",
                reason="manual:commit",
                actor=XSS,
                evidence={"note": f"note {XSS}"},
                created_at=h.clock(),
            )
        )
    op = add_operator(h.engine, '<img src=x onerror=alert(1)> "O\'Brien"')
    h.sign_in_as(op)
    pages = {
        "queue": h.client.get("/tickets").text,
        "ticket": h.client.get(f"/tickets/{tid}").text,
        "resolved": h.client.get(f"/tickets/{resolved}").text,
        "search": h.client.get("/search", params={"q": "cus"}).text,
        "search-echo": h.client.get("/search", params={"q": XSS[:60]}).text,
    }
    for name, text in pages.items():
        assert "<script>alert" not in text, name
        assert "<img src=x" not in text, name
        assert "javascript:" not in text, name
        assert "&lt;img src=x onerror=alert(1)&gt;" in text, name  # the operator's name
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in pages["ticket"]
    assert "note &lt;script&gt;" in pages["ticket"] and "note &lt;script&gt;" in pages["resolved"]


def test_secrets_card_numbers_and_control_characters_never_reach_a_page(h):
    tid = seed_ticket(
        h.engine,
        summary="key sk_live_51Habc123DEF and whsec_abcdef123 card 4242 4242 4242 4242 ok",
        customer_message="card 4000-0566-5566-5556 \x1b[31mred\u202egnp.exe",
        suggested_fix="order 1234567890123 is not a card",
    )
    h.sign_in_as(add_operator(h.engine, "alice"))
    page = h.client.get(f"/tickets/{tid}").text
    for leaked in (
        "sk_live_51Habc123DEF",
        "whsec_abcdef123",
        "4242 4242 4242 4242",
        "4000-0566-5566-5556",
        "\x1b",
        "\u202e",
    ):
        assert leaked not in page, leaked
    assert page.count("[card number hidden]") == 2
    assert "1234567890123" in page  # fails the Luhn check: not a card number
    assert "\\u001b[31mred\\u202egnp.exe" in page


def test_every_page_carries_the_security_headers_and_pages_are_not_stored(h):
    h.sign_in_as(add_operator(h.engine, "alice"))
    tid = seed_ticket(h.engine)
    for path in ("/tickets", f"/tickets/{tid}", "/search?q=x", "/login", "/nope"):
        r = h.client.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"
        assert "server" not in r.headers
    assert h.client.get("/static/console.js").headers["cache-control"].startswith("private")


def test_pages_hold_no_inline_script_or_style_that_the_policy_would_block(h):
    h.sign_in_as(add_operator(h.engine, "alice"))
    tid = seed_ticket(h.engine)
    seed_ticket(h.engine, payment_id="pi_2", kind="incident")
    for path in ("/tickets", f"/tickets/{tid}", "/search?q=pi", "/login"):
        text = h.client.get(path).text
        assert re.search(r"<script(?![^>]*\bsrc=)", text) is None, path
        assert " style=" not in text and "<style" not in text, path
        assert re.search(r"\bon[a-z]+=", text) is None, path


# -- fixing a ticket ----------------------------------------------------------------------


def _plan(h: Harness, tid: int, action: str) -> Any:
    return h.client.post(f"/tickets/{tid}/plan", data={"csrf": h.csrf(), "action": action})


def _do(h: Harness, tid: int, action: str, note: str | None, confirm: bool = True) -> Any:
    data = {"csrf": h.csrf(), "action": action}
    if note is not None:
        data["note"] = note
    if confirm:
        data["confirm"] = "yes"
    return h.client.post(f"/tickets/{tid}/resolve", data=data)


def test_commit_shows_its_dry_run_plan_then_commits_after_a_note_and_names_the_operator(
    fixing, stripe
):
    h = fixing
    tid = stuck_ticket_that_stripe_now_says_succeeded(h.engine, stripe)
    h.sign_in_as(add_operator(h.engine, "alice"))
    before = snapshot(h.engine)

    plan = _plan(h, tid, "commit")
    assert plan.status_code == 200, plan.text
    assert "a dry run: nothing has been written" in plan.text
    assert 'data-testid="plan-amount">2,000.00 USD<' in plan.text
    assert "succeeded" in plan.text and "INFLIGHT" in plan.text and "APPLIED" in plan.text
    assert snapshot(h.engine) == before  # the plan wrote nothing

    for note, confirm in ((None, True), ("   ", True), ("paid", False), ("x" * 2001, True)):
        refused = _do(h, tid, "commit", note, confirm)
        assert refused.status_code == 400
        assert snapshot(h.engine) == before

    done = _do(h, tid, "commit", "Stripe shows it paid; customer <Praise> waiting")
    assert done.status_code == 303 and done.headers["location"] == f"/tickets/{tid}?resolved=1"
    with h.engine.connect() as conn:
        txn = (
            conn.execute(select(transactions).where(transactions.c.reference == "pi_stuck_topup"))
            .mappings()
            .one()
        )
        ticket = conn.execute(select(tickets).where(tickets.c.id == tid)).mappings().one()
        manual = (
            conn.execute(select(audit).where(audit.c.reason == "manual:commit")).mappings().all()
        )
    assert (txn["status"], txn["committed_amount"]) == ("APPLIED", 200000)
    assert (ticket["status"], ticket["resolved_by"]) == ("resolved", "alice")
    assert [(a["actor"], a["amount"], a["ticket_id"]) for a in manual] == [("alice", 200000, tid)]
    assert manual[0]["evidence"]["note"] == "Stripe shows it paid; customer <Praise> waiting"
    page = h.client.get(done.headers["location"]).text
    assert "resolved by alice" in page and "customer &lt;Praise&gt; waiting" in page
    assert "/plan" not in page  # nothing left to fix

    again = _plan(h, tid, "commit")
    assert again.status_code == 303  # a resolved ticket offers no fix


def test_a_fix_that_stripe_contradicts_at_confirmation_is_refused_and_changes_nothing(
    fixing, stripe
):
    h = fixing
    tid = stuck_ticket_that_stripe_now_says_succeeded(h.engine, stripe)
    h.sign_in_as(add_operator(h.engine, "alice"))
    assert _plan(h, tid, "commit").status_code == 200
    stripe.state.update_payment_intent(
        "pi_stuck_topup",
        status="requires_payment_method",
        last_payment_error={"code": "card_declined", "message": "declined"},
        record_events=False,
    )
    before = snapshot(h.engine)
    r = _do(h, tid, "commit", "customer says paid")
    assert r.status_code == 409
    assert "Refused: nothing was changed" in r.text and "requires_payment_method" in r.text
    assert snapshot(h.engine) == before
    void_plan = _plan(h, tid, "void")
    assert void_plan.status_code == 200 and "2,000.00 USD" in void_plan.text


def test_a_fix_not_offered_for_the_ticket_kind_is_refused(fixing, stripe):
    h = fixing
    tid = stuck_ticket_that_stripe_now_says_succeeded(h.engine, stripe)
    h.sign_in_as(add_operator(h.engine, "alice"))
    before = snapshot(h.engine)
    for action in ("create-record", "refund", ""):
        r = _plan(h, tid, action)
        assert r.status_code == 400
        r = _do(h, tid, action, "note")
        assert r.status_code == 400
    assert snapshot(h.engine) == before


def test_when_stripe_cannot_be_read_the_fix_says_so_and_changes_nothing(fixing_lite, stripe):
    h = fixing_lite
    tid = stuck_ticket_that_stripe_now_says_succeeded(h.engine, stripe)
    h.sign_in_as(add_operator(h.engine, "alice"))
    stripe.stop()
    before = snapshot(h.engine)
    r = _plan(h, tid, "commit")
    assert r.status_code == 502 and "Stripe could not be read" in r.text
    assert stripe.api_key not in r.text
    assert snapshot(h.engine) == before
