"""What the CLI shows people: dry runs that tell the truth, the guard's verdict, readable and
literal output at 80 columns, the inbox; on PostgreSQL and SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from reconcile import inbox as inbox_rows
from reconcile.tables import cursors, tickets
from tests.integration.test_cli import as_json, dump, pi, seed_sweepable, txn
from tests.support import ago, epoch, now_utc, seed_entry
from worker.cli import output

pytestmark = pytest.mark.integration

NO_NEW_TICKETS = {"RECON_MAX_NEW_TICKETS": "0", "RECON_MAX_TICKET_SHARE": "0"}


@pytest.fixture(autouse=True)
def wide() -> Iterator[None]:
    # Content checks read whole cells; the 80-column test narrows it again.
    before = output.console.width
    output.console.width = 200
    yield
    output.console.width = before


@pytest.fixture
def columns80(wide: None) -> None:
    output.console.width = 80


def test_a_dry_run_shows_no_ticket_number_that_will_not_exist(db, stripe):
    engine, invoke = db
    seed_sweepable(engine, stripe)

    dry = invoke("sweep", "--older-than", "1h", "--dry-run", "--json")
    (unknown,) = [p for p in as_json(dry)["plan"] if p["payment_id"] == "pi_unknown"]
    assert (unknown["ticket_id"], unknown["ticket_new"]) == (None, True)
    screen = invoke("sweep", "--older-than", "1h", "--dry-run").stdout
    assert "unknown_payment" in screen and " new" in screen and "#" not in screen
    assert dump(engine, tickets) == []

    invoke("sweep", "--older-than", "1h")
    (opened,) = dump(engine, tickets)
    # A dry run that would bump an open ticket names it: that one exists.
    again = as_json(invoke("sweep", "--older-than", "1h", "--dry-run", "--json"))
    (bump,) = [p for p in again["plan"] if p["payment_id"] == "pi_unknown"]
    assert (bump["ticket_id"], bump["ticket_new"]) == (opened["id"], False)


def test_a_dry_run_the_guard_would_stop_says_why_on_screen_and_in_json(db, stripe):
    engine, invoke = db
    seed_sweepable(engine, stripe)

    out = as_json(
        invoke("sweep", "--older-than", "1h", "--dry-run", "--json", extra_env=NO_NEW_TICKETS)
    )
    assert out["guard"]["tripped"] is True
    assert "would open 1 new tickets" in out["guard"]["why"]
    screen = invoke("sweep", "--older-than", "1h", "--dry-run", extra_env=NO_NEW_TICKETS)
    assert screen.exit_code == 1
    assert "blast-radius guard would stop this run" in screen.stdout
    assert dump(engine, tickets) == []  # not even the incident: it was a dry run


def test_the_catch_up_is_guarded_like_the_sweep(db, stripe):
    engine, invoke = db
    voids = {"RECON_MAX_VOIDS": "0", "RECON_MAX_VOID_SHARE": "0"}
    for n in range(3):
        stripe.state.create_payment_intent(
            id=f"pi_c{n}", amount=1000, currency="usd", status="requires_payment_method",
            created=epoch(ago(hours=3)),
        )  # fmt: skip
        seed_entry(engine, f"pi_c{n}", 1000, created=ago(hours=3))
        stripe.state.update_payment_intent(f"pi_c{n}", status="canceled")

    dry = as_json(invoke("catch-up", "--since", "4h", "--dry-run", "--json", extra_env=voids))
    assert dry["guard"]["tripped"] and "would void 3" in dry["guard"]["why"]

    live = invoke("catch-up", "--since", "4h", "--json", extra_env=voids)
    assert live.exit_code == 1
    out = as_json(live)
    assert out["status"] == "partial" and out["guard"]["tripped"]
    assert all(txn(engine, f"pi_c{n}")["status"] == "INFLIGHT" for n in range(3))
    assert [t["kind"] for t in dump(engine, tickets)] == ["incident"]
    with engine.connect() as conn:
        # Nothing stored of the page the guard stopped, so the next run meets it again.
        assert inbox_rows.known_ids(conn, [e["id"] for e in stripe.state.events()]) == set()
        cursor = conn.execute(select(cursors.c.value)).scalar()
    assert cursor is None or int(cursor) <= epoch(ago(hours=4)) + 5

    done = invoke("catch-up", "--since", "4h", "--json")
    assert as_json(done)["status"] == "succeeded"
    assert all(txn(engine, f"pi_c{n}")["status"] == "VOID" for n in range(3))


def test_a_catch_up_window_clamped_to_30_days_says_so(db, stripe):
    _, invoke = db
    out = as_json(invoke("catch-up", "--since", "40d", "--dry-run", "--json"))
    assert any("clamped to 30 days" in n for n in out["notes"])
    assert "clamped to 30 days" in invoke("catch-up", "--since", "40d", "--dry-run").stdout


def test_dry_runs_are_marked_in_runs_and_left_out_of_the_report(db, stripe):
    engine, invoke = db
    seed_sweepable(engine, stripe)
    invoke("sweep", "--older-than", "1h", "--dry-run")
    invoke("sweep", "--older-than", "1h")

    listed = invoke("runs").stdout
    assert "(dry run)" in listed
    assert "commit = holds committed" in listed  # the counts' legend
    rep = as_json(invoke("report", "--since", "1d", "--json"))
    assert sum(rep["runs_by_status"].values()) == 1
    assert rep["dry_runs_left_out"] == 1


def test_runs_show_is_a_readable_summary(db, stripe):
    engine, invoke = db
    seed_sweepable(engine, stripe)
    run_id = as_json(invoke("sweep", "--older-than", "1h", "--json"))["run_id"]

    shown = invoke("runs", "show", str(run_id))
    assert shown.exit_code == 0
    text = shown.stdout
    for expected in ("sweep", "started", "window", "Stripe calls", "holds committed", "50.00 USD"):
        assert expected in text, expected
    for python in ("{'", "datetime.", "None", "tzinfo"):
        assert python not in text, python


def test_ids_never_wrap_at_80_columns(db, stripe, columns80):
    engine, invoke = db
    long_ids = [f"pi_3Pz{n}AbCdEfGhIjKlMnOpQrStUv" for n in range(3)]
    for pid in long_ids:
        pi(stripe, pid, "processing", amount=200_000)
        seed_entry(engine, pid, 200_000, created=ago(hours=3), destination="wallet:cus_1")
    invoke("sweep", "--older-than", "1h")

    for args in (("tickets",), ("tickets", "--status", "all"), ("runs", "show", "1")):
        out = invoke(*args).stdout
        assert max(len(line) for line in out.splitlines()) <= 80, args
        for pid in long_ids:
            assert pid in out, (args, pid)
    assert as_json(invoke("tickets", "--json"))[0]["amount_formatted"] == "2,000.00 USD"


def test_strings_from_stripe_the_ledger_and_people_are_printed_literally(db, stripe):
    engine, invoke = db
    name = "[bold red]Mallory[/] \x1b[2J\x1b]8;;http://evil\x07"
    pi(stripe, "pi_evil", "processing", receipt_email="mallory@example.com")
    seed_entry(
        engine, "pi_evil", 1000, created=ago(hours=3), destination="wallet:[red]m[/red]",
        metadata={"customer_name": name, "customer_email": "mallory@example.com"},
    )  # fmt: skip
    invoke("sweep", "--older-than", "1h")

    for args in (("customer", "mallory@example.com"), ("tickets",), ("ledger", "balances")):
        out = invoke(*args).output
        assert "\x1b" not in out and "\x07" not in out, args
    shown = invoke("customer", "mallory@example.com").output
    assert "[bold red]Mallory[/]" in shown
    assert "wallet:[red]m[/red]" in invoke("ledger", "balances").output
    data = as_json(invoke("customer", "mallory@example.com", "--json"))
    assert data["customer"]["balances"][0]["name"] == "wallet:[red]m[/red]"


def test_progress_off_a_terminal_ends_with_an_accurate_total(db, stripe):
    engine, invoke = db
    seed_sweepable(engine, stripe)
    result = invoke("sweep", "--older-than", "1h", "--dry-run")
    assert "sweep: 3 entries in" in result.stderr


def test_inbox_lists_failing_events_first_with_their_error_and_attempts(db, stripe):
    engine, invoke = db
    now = now_utc()

    def event(n: int) -> dict[str, Any]:
        return {
            "id": f"evt_{n}",
            "type": "payment_intent.succeeded",
            "created": epoch(now),
            "livemode": False,
            "data": {"object": {"id": f"pi_{n}", "object": "payment_intent"}},
        }

    with engine.begin() as conn:
        for n in range(3):
            inbox_rows.store_event(conn, event(n), source="webhook", now=ago(minutes=10 - n))
        inbox_rows.mark_processed(conn, "evt_0", now)
        inbox_rows.mark_failed(conn, "evt_2", "StripeUnavailable: 503 [boom]", now)

    out = as_json(invoke("inbox", "--json"))
    assert [e["event_id"] for e in out["events"]] == ["evt_2", "evt_1", "evt_0"]
    failed = out["events"][0]
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert "503 [boom]" in failed["last_error"]
    assert out["totals"] == {"failed": 1, "pending": 1, "processed": 1}
    screen = invoke("inbox").stdout
    assert "503 [boom]" in screen and "recon replay" in screen
    only = as_json(invoke("inbox", "--status", "failed", "--json"))
    assert [e["event_id"] for e in only["events"]] == ["evt_2"]
    json.dumps(out)
