"""The console's pure parts: what every value goes through before a page shows it, the
chart's geometry, where a sign-in may send you, whom the proxy check believes, and the
view helpers that format states and classify a search."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from markupsafe import Markup
from starlette.requests import Request

from reconcile import views
from worker.console import chart, text
from worker.console.security import ConsoleConfigError, Trust, parse_networks, safe_next


@pytest.mark.parametrize(
    "card",
    [
        "4242424242424242",
        "4242 4242 4242 4242",
        "4000-0566-5566-5556",
        "378282246310005",  # Amex, 15 digits
        "6011111111111117",
    ],
)
def test_card_numbers_are_hidden(card):
    assert text.clean(f"paid with {card}.") == f"paid with {text.CARD_HIDDEN}."


@pytest.mark.parametrize(
    "number", ["1234567890123", "4242424242424241", "1700000000", "pi_3MtwBwLkdIwHu7ix28a3tqPa"]
)
def test_numbers_that_are_not_card_numbers_are_left_alone(number):
    assert text.clean(number) == number


def test_stripe_keys_webhook_secrets_and_url_passwords_are_redacted():
    cleaned = text.clean("sk_live_abc123 rk_test_x9 whsec_Zz9= postgresql://u:hunter2@db/x")
    assert "abc123" not in cleaned and "x9" not in cleaned and "Zz9" not in cleaned
    assert "hunter2" not in cleaned


def test_control_and_bidi_characters_are_made_visible_but_newlines_kept():
    assert text.clean("a\x1b[31mb\u202ec\nd\te\x00") == "a\\u001b[31mb\\u202ec\nd\te\\u0000"


def test_finalize_formats_times_and_durations_and_passes_markup_through():
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert text.finalize(when) == "2026-01-02 03:04 UTC"
    assert text.finalize(timedelta(days=1, hours=6, minutes=7, seconds=8)) == "1d6h"
    assert text.finalize(timedelta(hours=2, minutes=5, seconds=9)) == "2h5m"
    assert text.finalize(timedelta(seconds=42)) == "42s"
    assert text.finalize(None) == ""
    m = Markup("<b>ok</b>")
    assert text.finalize(m) is m


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://dashboard.stripe.com/test/payments/pi_1", True),
        ("javascript:alert(1)", False),
        (" JavaScript:alert(1)", False),
        ("data:text/html,x", False),
        ("https://x y", False),
        (None, False),
    ],
)
def test_only_plain_http_links_are_linked(url, ok):
    assert (text.safe_url(url) is not None) is ok


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/tickets/3?kind=x", "/tickets/3?kind=x"),
        ("//evil.example", "/tickets"),
        ("/\\evil.example", "/tickets"),
        ("https://evil.example", "/tickets"),
        ("/a\r\nSet-Cookie: x", "/tickets"),
        (None, "/tickets"),
        ("", "/tickets"),
    ],
)
def test_after_sign_in_only_a_path_on_this_site_is_followed(target, expected):
    assert safe_next(target) == expected


def _request(peer: str, headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request(
        {"type": "http", "method": "GET", "path": "/", "headers": raw, "client": (peer, 1)}
    )


def test_the_proxy_header_is_believed_only_from_the_configured_networks():
    trust = Trust("x-forwarded-email", parse_networks("10.0.0.0/8, 192.0.2.7, ::1"))
    claim = {"X-Forwarded-Email": "a@example.com"}
    assert trust.proxy_email(_request("10.1.2.3", claim)) == "a@example.com"
    assert trust.proxy_email(_request("::1", claim)) == "a@example.com"
    assert trust.proxy_email(_request("192.0.2.7", claim)) == "a@example.com"
    assert trust.proxy_email(_request("192.0.2.8", claim)) is None
    assert trust.proxy_email(_request("not-an-ip", claim)) is None
    assert trust.untrusted_claim(_request("192.0.2.8", claim))
    assert trust.proxy_email(_request("10.1.2.3")) is None


def test_the_client_address_is_the_peer_unless_a_trusted_proxy_forwarded_it():
    trust = Trust(None, parse_networks("10.0.0.0/8"))
    fwd = {"X-Forwarded-For": "203.0.113.5, 198.51.100.9, 10.0.0.2"}
    assert trust.client_address(_request("10.0.0.1", fwd)) == "198.51.100.9"
    assert trust.client_address(_request("203.0.113.77", fwd)) == "203.0.113.77"
    assert trust.client_address(_request("10.0.0.1", {"X-Forwarded-For": "junk"})) == "10.0.0.1"


def test_a_bad_proxy_network_is_a_configuration_error():
    with pytest.raises(ConsoleConfigError, match="not an IP address or CIDR"):
        parse_networks("10.0.0.0/8, localhost")


def test_the_chart_stacks_kinds_per_day_scaled_to_the_busiest_day():
    days = [date(2026, 1, 1) + timedelta(days=i) for i in range(3)]
    daily = views.DailyCounts(days, {"stuck_payment": [1, 0, 2], "missing_record": [1, 0, 2]})
    c = chart.build(daily)
    assert daily.peak_day == 4 and daily.total == 6
    assert len(c.segments) == 4
    tallest = [s for s in c.segments if s.title.startswith("2026-01-03")]
    assert sum(s.height for s in tallest) == pytest.approx(c.plot_bottom - 10, abs=0.2)
    assert min(s.y for s in tallest) == pytest.approx(10, abs=0.2)
    assert {s.colour for s in c.segments} == {
        chart.COLOURS["stuck_payment"],
        chart.COLOURS["missing_record"],
    }
    assert [t.label for t in c.ticks] == ["01 Jan", "03 Jan"]
    assert "6 ticket(s)" in c.summary


def test_an_empty_chart_says_so():
    days = [date(2026, 1, 1) + timedelta(days=i) for i in range(14)]
    c = chart.build(views.DailyCounts(days, {}))
    assert c.segments == [] and "no tickets opened" in c.summary


@pytest.mark.parametrize(
    ("query", "kind"),
    [
        ("12", "ticket"),
        ("#12", "ticket"),
        ("pi_3Mtw", "payment"),
        ("cus_9", "customer"),
        ("praise@example.com", "email"),
        ("wallet:praise", "balance"),
        ("@stripe", "balance"),
        ("Praise Okoro", "text"),
        ("   ", "empty"),
    ],
)
def test_a_search_is_classified_by_what_it_looks_like(query, kind):
    assert views.classify(query) == kind


def test_money_is_shown_in_major_units_and_absent_money_as_unknown():
    assert views.money_text(200000, "USD") == "2,000.00 USD"
    assert views.money_text(5000, "JPY") == "5,000 JPY"
    assert views.money_text(None, "USD") is None
    assert views.money_text(100, None) is None
    assert views.money_text(100, "XXQ") == "100 XXQ (minor units, unknown currency)"


def test_a_recorded_state_shows_amounts_in_major_units_and_not_found_as_none():
    pairs = views.state_pairs(
        {
            "found": True,
            "status": "succeeded",
            "amount": 200000,
            "currency": "USD",
            "x": None,
            "created": "2026-01-02T03:04:05+00:00",
        }
    )
    assert pairs == [
        ("status", "succeeded"),
        ("amount", "2,000.00 USD"),
        ("currency", "USD"),
        ("created", "2026-01-02 03:04:05 UTC"),
    ]
    assert views.state_pairs({"found": False}) is None
    assert views.state_pairs(None) is None


def test_fixes_are_offered_per_kind_and_none_for_a_closed_ticket():
    assert views.fix_actions("stuck_payment", "open") == ("commit", "void", "none")
    assert views.fix_actions("missing_record", "open") == ("create-record", "none")
    assert views.fix_actions("incident", "open") == ("none",)
    assert views.fix_actions("stuck_payment", "resolved") == ()
    assert set(views.FIX_ACTIONS) == set(views.KINDS)
