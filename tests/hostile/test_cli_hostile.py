"""Hostile input against the real `recon` command line (issue 14, the CLI half).

Tried as an attacker and as a tired on-call engineer would: Rich markup, terminal escape
sequences, CR/newlines, BIDI overrides and NUL in every string a person or Stripe hands us;
ids with path characters; out-of-range amounts, ids and durations; junk settings; secrets.

For each kind: the exit code (2 for bad input, with one line on stderr and no traceback),
that nothing was stored or moved that should not be, and that every later listing still
works and shows the string literally with its control characters escaped.  Real PostgreSQL
(a throwaway schema) and the local Stripe stand-in (tests/stripe_server).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select
from typer.testing import Result

from ledger.sql import transactions
from reconcile.tables import audit, inbox, runs, tickets
from tests.integration.conftest import pg, stripe  # noqa: F401  (fixtures)
from tests.support import ago, epoch, seed_entry
from worker.cli import output
from worker.operators import operators

pytestmark = pytest.mark.integration

# -- helpers ----------------------------------------------------------------------------------

ESC = "\x1b"
# What a hostile string may carry: markup that crashes Rich when markup is on (an unmatched
# closing tag), a screen clear, an OSC 8 hyperlink, a title change, CR that rewrites the
# line, a newline that forges a second line, a right-to-left override.
MARKUP = "[bold red]boss[/] [/] [link=http://evil]x"
ESCAPES = "\x1b[2J\x1b]8;;http://evil.example\x07click\x1b]8;;\x07\x1b]0;pwned\x07"
CR_NL = "fine\rFORGED\nerror: forged second line"
BIDI = "abc\u202edcba\u2066x\u2069"
HOSTILE = MARKUP + " " + ESCAPES + " " + CR_NL + " " + BIDI
# Raw control characters that must never reach a terminal from our output.
RAW = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture(autouse=True)
def wide() -> Iterator[None]:
    before = output.console.width
    output.console.width = 250
    yield
    output.console.width = before


@pytest.fixture
def cli(pg: Any, stripe: Any) -> tuple[Engine, Any, Any]:  # noqa: F811
    engine, invoke = pg
    return engine, invoke, stripe


def dump(engine: Engine, table: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(table).order_by(table.c.id)).mappings()]


def snapshot(engine: Engine) -> dict[str, Any]:
    """Everything a command could store or move."""
    return {
        "transactions": dump(engine, transactions),
        "tickets": dump(engine, tickets),
        "runs": dump(engine, runs),
        "audit": dump(engine, audit),
        "inbox": _rows(engine, select(inbox).order_by(inbox.c.event_id)),
        "operators": _rows(engine, select(operators).order_by(operators.c.name)),
    }


def _rows(engine: Engine, query: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def crashed(result: Result) -> bool:
    """An exception other than the exit click raises: a traceback for the operator."""
    return result.exception is not None and not isinstance(result.exception, SystemExit)


def one_line_error(result: Result) -> str:
    assert not crashed(result), (result.exception, result.output)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not RAW.search(result.output), repr(result.output)
    return result.stderr


def literal(out: str) -> None:
    """No raw control character reached the screen."""
    assert not RAW.search(out), repr(out)


def pi(srv: Any, pid: str, status: str, **kw: Any) -> None:
    srv.state.create_payment_intent(
        id=pid,
        amount=kw.pop("amount", 5000),
        currency=kw.pop("currency", "usd"),
        status=status,
        created=epoch(ago(hours=3)),
        customer="cus_1",
        record_events=False,
        **kw,
    )


def as_json(result: Result) -> Any:
    assert result.stdout.strip(), result.output
    return json.loads(result.stdout)


LISTINGS: list[tuple[str, ...]] = [
    ("tickets", "--status", "all"),
    ("runs",),
    ("inbox",),
    ("report", "--since", "1d"),
    ("ledger", "list"),
    ("ledger", "balances"),
]


def every_listing_still_works(invoke: Any, *extra: tuple[str, ...]) -> str:
    """Every listing exits 0 (or 1 for attention) without a crash and shows no raw control
    character; returns what they printed."""
    seen = []
    for args in [*LISTINGS, *extra]:
        result = invoke(*args)
        assert not crashed(result), (args, result.exception)
        assert result.exit_code in (0, 1), (args, result.output)
        literal(result.output)
        seen.append(result.output)
    return "\n".join(seen)


# -- bad input: exit 2, one line, nothing stored ---------------------------------------------

BIG = str(2**63)  # one past PostgreSQL's bigint
HUGE = "9" * 40

REFUSED: list[tuple[str, tuple[str, ...], dict[str, str]]] = [
    # operator names
    ("blank --by", ("sweep", "--older-than", "1h", "--dry-run", "--by", "   "), {}),
    ("over-long --by", ("sweep", "--older-than", "1h", "--dry-run", "--by", "o" * 101), {}),
    ("huge --by", ("sweep", "--older-than", "1h", "--by", "o" * 100_000), {}),
    ("escape in --by", ("sweep", "--older-than", "1h", "--by", "ops" + ESCAPES), {}),
    ("newline in --by", ("sweep", "--older-than", "1h", "--by", "ops\nroot"), {}),
    ("BIDI in --by", ("sweep", "--older-than", "1h", "--by", "ops" + BIDI), {}),
    ("NUL in --by", ("sweep", "--older-than", "1h", "--by", "ops\x00root"), {}),
    # ids sent to Stripe
    ("path in replay id", ("replay", "../x"), {}),
    ("query in replay id", ("replay", "evt_x?limit=1"), {}),
    ("slash in replay id", ("replay", "evt_1/../../v1/charges"), {}),
    ("path in payment id", ("payment", "../../v1/customers"), {}),
    ("query in payment id", ("payment", "pi_x?expand[]=customer"), {}),
    ("fragment in payment id", ("payment", "pi_x#y"), {}),
    ("over-long payment id", ("payment", "pi_" + "a" * 300), {}),
    ("NUL in payment id", ("payment", "pi_\x00x"), {}),
    ("percent-encoded path in payment id", ("payment", "pi_x%2F..%2Fy"), {}),
    ("unicode payment id", ("payment", "pi_ẞ"), {}),
    ("path in ledger commit id", ("ledger", "commit", "pi_x/../y", "--note", "n"), {}),
    ("path in ledger void id", ("ledger", "void", "../pi_x", "--note", "n"), {}),
    # durations and times
    ("huge --since (catch-up)", ("catch-up", "--since", "99999999d"), {}),
    ("huge --since (scan)", ("scan", "--since", "99999999d", "--dry-run"), {}),
    ("huge --since (report)", ("report", "--since", "99999999d"), {}),
    ("huge --older-than", ("sweep", "--older-than", "99999999d", "--dry-run"), {}),
    ("beyond timedelta --older-than", ("sweep", "--older-than", HUGE + "d", "--dry-run"), {}),
    ("year 9999 --until", ("scan", "--since", "1d", "--until", "9999-12-31", "--dry-run"), {}),
    ("negative --since", ("catch-up", "--since", "-5d"), {}),
    # out-of-range ids and counts
    ("run id past bigint", ("runs", "show", BIG), {}),
    ("huge run id", ("runs", "show", HUGE), {}),
    ("negative run id", ("runs", "show", "--", "-1"), {}),
    ("ticket id past bigint", ("tickets", "show", BIG), {}),
    ("rerun id past bigint", ("rerun", BIG, "--dry-run"), {}),
    ("resolve id past bigint", ("tickets", "resolve", BIG, "--action", "none", "--note", "n"), {}),
    ("huge sweep --limit", ("sweep", "--older-than", "1h", "--limit", HUGE, "--dry-run"), {}),
    # amounts and currencies
    ("amount past bigint", ("ledger", "inflight", "pi_a", BIG, "USD", "@stripe", "w:1"), {}),
    ("huge amount", ("ledger", "inflight", "pi_a", HUGE, "USD", "@stripe", "w:1"), {}),
    ("zero amount", ("ledger", "inflight", "pi_a", "0", "USD", "@stripe", "w:1"), {}),
    ("negative amount", ("ledger", "inflight", "pi_a", "-5", "USD", "@stripe", "w:1"), {}),
    ("decimal amount", ("ledger", "inflight", "pi_a", "50.00", "USD", "@stripe", "w:1"), {}),
    ("float exponent amount", ("ledger", "inflight", "pi_a", "1e3", "USD", "@stripe", "w:1"), {}),
    ("unicode digits amount", ("ledger", "inflight", "pi_a", "٥٠٠٠", "USD", "@stripe", "w:1"), {}),
    ("unknown currency", ("ledger", "inflight", "pi_a", "500", "XYZ", "@stripe", "w:1"), {}),
    ("fullwidth currency", ("ledger", "inflight", "pi_a", "500", "ＵＳＤ", "@stripe", "w:1"), {}),
    ("over-long reference", ("ledger", "inflight", "p" * 5000, "500", "USD", "@stripe", "w:1"), {}),
    ("escape in reference", ("ledger", "inflight", "pi_\x1b[2J", "5", "USD", "@stripe", "w:1"), {}),
    ("NUL in reference", ("ledger", "inflight", "pi_\x00", "500", "USD", "@stripe", "w:1"), {}),
    (
        "NUL in metadata",
        ("ledger", "inflight", "pi_a", "5", "USD", "@s", "w", "--meta", "k=\x00"),
        {},
    ),
    (
        "over-long metadata",
        ("ledger", "inflight", "pi_a", "5", "USD", "@s", "w", "--meta", "k=" + "v" * 100_000),
        {},
    ),
    ("NUL in balance", ("ledger", "inflight", "pi_a", "500", "USD", "@stripe", "w:\x00"), {}),
    (
        "absurd expiry",
        (
            "ledger",
            "inflight",
            "pi_a",
            "5",
            "USD",
            "@s",
            "w",
            "--expires-at",
            "9999-12-31T23:59:59-14:00",
        ),
        {},
    ),
    # notes
    ("NUL in --note", ("ledger", "commit", "pi_x", "--note", "why\x00not"), {}),
    ("huge --note", ("ledger", "void", "pi_x", "--note", "n" * 1_000_000), {}),
    ("blank --note", ("ledger", "void", "pi_x", "--note", " \t "), {}),
    # SQL-ish strings
    ("SQL in --kind", ("tickets", "--kind", "x' OR '1'='1"), {}),
    ("SQL in --status", ("runs", "--status", "running'; DROP TABLE runs; --"), {}),
    ("SQL in customer query", ("customer", "' OR 1=1 --"), {}),
    ("SQL in ledger show", ("ledger", "show", "x'; DROP TABLE ledger_transactions; --"), {}),
    # customer lookups
    ("NUL in customer query", ("customer", "mallory\x00@example.com"), {}),
    ("huge customer query", ("customer", "m" * 100_000), {}),
    # console operators
    (
        "escape in operator name",
        ("operators", "add", "ops" + ESCAPES, "o@example.com", "--role", "viewer"),
        {},
    ),
    ("markup role", ("operators", "add", "ops", "o@example.com", "--role", "[red]admin[/]"), {}),
    (
        "NUL in operator email",
        ("operators", "add", "ops", "o@ex\x00ample.com", "--role", "viewer"),
        {},
    ),
    (
        "over-long operator name",
        ("operators", "add", "o" * 65, "o@example.com", "--role", "viewer"),
        {},
    ),
    (
        "junk --action",
        ("tickets", "resolve", "1", "--action", "refund-everything", "--note", "n"),
        {},
    ),
    # settings
    ("junk RECON_MAX_VOIDS", ("runs",), {"RECON_MAX_VOIDS": "lots"}),
    ("junk RECON_SWEEP_MIN_AGE", ("runs",), {"RECON_SWEEP_MIN_AGE": "soon"}),
    ("huge RECON_SWEEP_MIN_AGE", ("sweep", "--dry-run"), {"RECON_SWEEP_MIN_AGE": "99999999d"}),
    ("junk RECON_SWEEP_BATCH", ("runs",), {"RECON_SWEEP_BATCH": "-1"}),
    ("junk RECON_LEDGER", ("runs",), {"RECON_LEDGER": "excel"}),
    ("junk RECON_CREATE_MISSING", ("runs",), {"RECON_CREATE_MISSING": "perhaps"}),
    ("junk RECON_STRIPE_RATE_LIMIT", ("sweep", "--dry-run"), {"RECON_STRIPE_RATE_LIMIT": "nan"}),
    ("junk RECON_PROCESSING_SLA_BY_METHOD", ("runs",), {"RECON_PROCESSING_SLA_BY_METHOD": "x"}),
    ("junk RECON_DATABASE_URL", ("runs",), {"RECON_DATABASE_URL": "not a url"}),
    ("unknown RECON_DATABASE_URL driver", ("runs",), {"RECON_DATABASE_URL": "oracle+x://u:p@h/db"}),
]
KINDS_REFUSED = len(REFUSED)


@pytest.mark.parametrize(
    ("args", "env"), [(a, e) for _, a, e in REFUSED], ids=[n for n, _, _ in REFUSED]
)
def test_bad_input_is_one_line_exit_2_and_nothing_is_stored(cli, args, env):
    engine, invoke, srv = cli
    pi(srv, "pi_x", "succeeded")
    seed_entry(engine, "pi_x", 5000, created=ago(hours=3))
    before = snapshot(engine)

    result = invoke(*args, extra_env=env)

    one_line_error(result)
    assert snapshot(engine) == before


def test_a_junk_setting_names_the_variable_and_never_shows_a_secret_value(cli):
    _, invoke, _ = cli
    bad_url = "postgresql+psycopg://recon:S3cretDbPw@127.0.0.1:notaport/recon"
    for env, name in (
        ({"RECON_MAX_VOIDS": "lots"}, "RECON_MAX_VOIDS"),
        ({"RECON_DATABASE_URL": bad_url}, "RECON_DATABASE_URL"),
        ({"RECON_TICKET_WEBHOOK_URL": "http://u:S3cretDbPw@[::1"}, "RECON_TICKET_WEBHOOK_URL"),
        ({"RECON_SLACK_WEBHOOK_URL": "ftp://S3cretDbPw"}, "RECON_SLACK_WEBHOOK_URL"),
        ({"RECON_STRIPE_API_BASE": "http://u:S3cretDbPw@[::1"}, "RECON_STRIPE_API_BASE"),
    ):
        result = invoke("sweep", "--older-than", "1h", "--dry-run", extra_env=env)
        err = one_line_error(result)
        assert name in err, err
        assert "S3cretDbPw" not in result.output


# -- strings stored as data, shown literally and escaped -------------------------------------


def test_rich_markup_and_escapes_in_by_are_shown_literally_after_the_run(cli):
    engine, invoke, srv = cli
    pi(srv, "pi_ok", "succeeded")
    seed_entry(engine, "pi_ok", 5000, created=ago(hours=3))
    by = "[bold]ops[/] [/] [link=x]"

    done = invoke("sweep", "--older-than", "1h", "--by", by)

    assert not crashed(done) and done.exit_code == 0, done.output
    assert dump(engine, runs)[-1]["actor"] == by
    assert dump(engine, transactions)[0]["status"] == "APPLIED"
    shown = every_listing_still_works(invoke, ("runs", "show", "1"))
    assert by in shown


def test_a_hostile_note_is_stored_as_typed_and_shown_escaped_everywhere(cli):
    engine, invoke, srv = cli
    seed_entry(engine, "pi_gone", 5000, created=ago(hours=3))  # unknown on Stripe: a ticket
    invoke("sweep", "--older-than", "1h")
    (ticket,) = dump(engine, tickets)
    note = "checked " + HOSTILE

    done = invoke(
        "tickets", "resolve", str(ticket["id"]), "--action", "void", "--note", note,
        "--by", "[red]ops[/]",
    )  # fmt: skip

    assert not crashed(done) and done.exit_code == 0, done.output
    literal(done.output)
    (after,) = dump(engine, tickets)
    assert after["status"] == "resolved"
    assert note.strip() in after["resolution"]  # stored as data, not cleaned up
    shown = every_listing_still_works(invoke, ("tickets", "show", str(ticket["id"])))
    assert "[bold red]boss[/] [/]" in shown
    assert "\\x1b[2J" in shown and "\\r" in shown and "\\n" in shown and "\\u202e" in shown


def test_hostile_references_metadata_and_balances_are_listed_literally(cli):
    engine, invoke, _ = cli
    ref = "ref[/] [link=http://x]\u202e"
    created = invoke(
        "ledger", "inflight", ref, "5000", "USD", "@stripe", "wallet:[red]x[/]",
        "--meta", "customer_name=" + HOSTILE, "--meta", "[k]=" + ESCAPES,
    )  # fmt: skip
    assert not crashed(created) and created.exit_code == 0, created.output
    literal(created.output)
    (row,) = dump(engine, transactions)
    assert row["reference"] == ref

    shown = every_listing_still_works(invoke, ("ledger", "show", ref))
    assert "wallet:[red]x[/]" in shown and "ref[/]" in shown
    assert as_json(invoke("ledger", "show", ref, "--json"))["reference"] == ref


def test_markup_and_escapes_from_stripe_metadata_never_crash_a_listing(cli):
    engine, invoke, srv = cli
    pi(
        srv, "pi_evil", "processing", receipt_email="mallory@example.com",
        metadata={"customer_name": HOSTILE, "note": "[/]" + ESCAPES},
    )  # fmt: skip
    seed_entry(
        engine, "pi_evil", 1000, created=ago(hours=30),
        metadata={"customer_name": "[/] " + HOSTILE, "customer_email": "mallory@example.com"},
    )  # fmt: skip
    swept = invoke("sweep", "--older-than", "1h", extra_env={"RECON_PROCESSING_SLA": "1h"})
    assert not crashed(swept), swept.exception
    literal(swept.output)
    assert [t["kind"] for t in dump(engine, tickets)] == ["stuck_payment"]

    every_listing_still_works(
        invoke,
        ("tickets", "show", "1"),
        ("customer", "mallory@example.com"),
        ("payment", "pi_evil", "--dry-run"),
    )
    # Metric labels are our own words (actions, kinds, endpoints), never Stripe's strings.
    import prometheus_client

    metrics = prometheus_client.generate_latest().decode()
    assert "evil" not in metrics and "boss" not in metrics
    literal(metrics)


def test_a_nul_in_stripe_metadata_does_not_stop_the_sweep(cli):
    engine, invoke, srv = cli
    pi(srv, "pi_nul", "processing", metadata={"customer_name": "a\x00b"})
    pi(srv, "pi_ok", "succeeded")
    seed_entry(engine, "pi_nul", 1000, created=ago(hours=30))
    seed_entry(engine, "pi_ok", 5000, created=ago(hours=30))

    result = invoke("sweep", "--older-than", "1h", "--json")

    assert not crashed(result), result.exception
    assert as_json(result)["status"] in ("succeeded", "partial")
    by_ref = {t["reference"]: t["status"] for t in dump(engine, transactions)}
    assert by_ref["pi_ok"] == "APPLIED"
    assert [t["kind"] for t in dump(engine, tickets)] == ["stuck_payment"]
    every_listing_still_works(invoke, ("tickets", "show", "1"))


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "console"])
def test_logs_show_control_characters_escaped(as_json, capsys):
    import logging

    import structlog

    import worker.logs

    worker.logs._configured = False
    root = logging.getLogger()
    handlers = list(root.handlers)
    root.handlers = []
    try:
        worker.logs.configure_logging(json=as_json)
        worker.logs.get_logger("hostile").warning(HOSTILE, note=HOSTILE, meta={HOSTILE: [HOSTILE]})
        logging.getLogger("hostile.stdlib").warning("note: %s", HOSTILE)
        err = capsys.readouterr().err
    finally:
        root.handlers = handlers
        structlog.reset_defaults()
        worker.logs._configured = False
    literal(err)
    assert "[bold red]boss[/]" in err  # as typed, not interpreted
    # Two log lines, however many newlines the values held; escapes shown, not sent.
    assert err.count("\n") == 2, err
    assert "\\x1b[2J" in err or "\\u001b[2J" in err


# -- ids sent to Stripe ----------------------------------------------------------------------


def test_no_id_reaches_stripe_unvalidated(cli):
    engine, invoke, srv = cli
    for args in (
        ("replay", "../x"),
        ("replay", "evt_x?limit=1"),
        ("payment", "pi_x/../../v1/charges"),
        ("ledger", "commit", "pi_x?y=1", "--note", "n"),
    ):
        invoke(*args)
    # Every one of them was refused before any request: Stripe saw nothing at all.
    assert srv.calls() == 0, srv.stats()


# -- one bad reference must not stop a sweep --------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["pi_a/b", "../../v1/charges", "pi_x?limit=1", "order #7", "pi_" + "z" * 197, "[/]pi_x"],
)
def test_one_junk_reference_gets_a_ticket_and_the_rest_of_the_batch_proceeds(cli, bad):
    engine, invoke, srv = cli
    for n in range(3):
        pi(srv, f"pi_good{n}", "succeeded")
        seed_entry(engine, f"pi_good{n}", 5000, created=ago(hours=3, minutes=n))
    seed_entry(engine, bad, 5000, created=ago(hours=3, minutes=10))

    result = invoke("sweep", "--older-than", "1h", "--json")

    assert not crashed(result), result.exception
    out = as_json(result)
    assert out["status"] in ("succeeded", "partial"), out
    status = {t["reference"]: t["status"] for t in dump(engine, transactions)}
    assert all(status[f"pi_good{n}"] == "APPLIED" for n in range(3)), status
    assert status[bad] == "INFLIGHT"
    (t,) = dump(engine, tickets)
    assert t["payment_id"] == bad and t["status"] == "open"
    # The claims were given back: nothing waits out a lease, the run names none.
    assert all(r["claimed_until"] is None for r in dump(engine, transactions))
    last = dump(engine, runs)[-1]
    assert last["status"] != "failed" and not last["claimed"]
    every_listing_still_works(invoke, ("tickets", "show", str(t["id"])))


# -- two entries, one PaymentIntent ----------------------------------------------------------


def test_two_entries_linked_to_one_payment_intent_get_a_duplicate_entry_ticket(cli):
    engine, invoke, srv = cli
    pi(srv, "pi_dup", "succeeded")
    seed_entry(engine, "pi_dup", 5000, created=ago(hours=3))
    seed_entry(
        engine, "order-77", 5000, created=ago(hours=3),
        metadata={"stripe_payment_intent": "pi_dup"},
    )  # fmt: skip

    dry = as_json(invoke("sweep", "--older-than", "1h", "--dry-run", "--json"))
    assert {(p["reference"], p["action"]) for p in dry["plan"]} == {
        ("pi_dup", "commit"),
        ("order-77", "ticket"),
    }
    assert dump(engine, tickets) == []
    first = invoke("sweep", "--older-than", "1h", "--json")
    assert not crashed(first), first.exception
    assert as_json(first)["status"] == "succeeded"
    invoke("sweep", "--older-than", "1h")  # seen again: the same ticket, bumped

    status = {t["reference"]: t["status"] for t in dump(engine, transactions)}
    assert status == {"pi_dup": "APPLIED", "order-77": "INFLIGHT"}  # credited once, not twice
    (ticket,) = dump(engine, tickets)
    assert (ticket["kind"], ticket["reference"], ticket["occurrences"]) == (
        "duplicate_entry",
        "order-77",
        2,
    )
    shown = invoke("tickets", "show", str(ticket["id"]))
    assert "order-77" in shown.output and "--action void|none" in shown.output
    data = as_json(invoke("tickets", "show", str(ticket["id"]), "--json"))
    assert data["customer_message"] and data["actions"] == ["void", "none"]

    fixed = invoke(
        "tickets", "resolve", str(ticket["id"]), "--action", "void", "--note", "app bug #12"
    )
    assert fixed.exit_code == 0, fixed.output
    status = {t["reference"]: t["status"] for t in dump(engine, transactions)}
    assert status == {"pi_dup": "APPLIED", "order-77": "VOID"}  # the payment's own kept
    assert "counted once" in fixed.output
    again = as_json(invoke("sweep", "--older-than", "1h", "--json"))
    assert again["counts"].get("examined", 0) == 0


# -- money moves only after a dry run and a confirmation --------------------------------------


def test_dry_runs_move_no_money_and_live_runs_without_a_terminal_ask_for_yes(cli):
    engine, invoke, srv = cli
    for n in range(7):
        pi(srv, f"pi_{n}", "succeeded")
        seed_entry(engine, f"pi_{n}", 5000, created=ago(hours=3))
    pi(srv, "pi_gone", "canceled")
    seed_entry(engine, "pi_gone", 5000, created=ago(hours=3))
    before = snapshot(engine)

    for args in (
        ("ledger", "commit", "pi_0", "--note", "n", "--dry-run"),
        ("ledger", "void", "pi_gone", "--note", "n", "--dry-run"),
        ("payment", "pi_0", "--dry-run"),
    ):
        r = invoke(*args)
        assert not crashed(r) and r.exit_code in (0, 1), (args, r.output)
    moved = snapshot(engine)
    assert moved["transactions"] == before["transactions"]
    assert moved["tickets"] == before["tickets"] and moved["audit"] == before["audit"]

    for args in (("sweep", "--older-than", "1h"), ("scan", "--since", "1d")):
        refused = invoke(*args)
        err = one_line_error(refused)
        assert "--yes" in err
    assert snapshot(engine)["transactions"] == before["transactions"]


# -- customer lookups -------------------------------------------------------------------------


def test_customer_lookup_normalises_unicode_and_never_matches_a_look_alike(cli):
    engine, invoke, srv = cli
    pi(srv, "pi_j", "processing", receipt_email="josé@example.com")
    seed_entry(
        engine, "pi_j", 1000, created=ago(hours=3),
        metadata={"customer_name": "José", "customer_email": "jos\u00e9@example.com"},
    )  # fmt: skip
    invoke("sweep", "--older-than", "1h")

    for query in ("jos\u00e9@example.com", "jose\u0301@example.com", "JOS\u00c9@EXAMPLE.COM"):
        found = invoke("customer", query, "--json")
        assert found.exit_code == 0, (query, found.output)
        assert as_json(found)["customer"]["email"] == "jos\u00e9@example.com"
    fullwidth = invoke("customer", "ｊｏｓé@example.com", "--json")
    assert fullwidth.exit_code == 0, fullwidth.output
    for name in ("jos\u00e9", "JOSE\u0301"):
        by_name = invoke("customer", name, "--json")
        assert by_name.exit_code == 0, (name, by_name.output)
    # Cyrillic "о" looks like Latin "o": another person, never this one.
    one_line_error(invoke("customer", "j\u043es\u00e9@example.com"))


# -- secrets ----------------------------------------------------------------------------------

SECRETS = {
    "STRIPE_API_KEY": "sk_test_hostileKEY0123456789abcdef",
    "STRIPE_WEBHOOK_SECRET": "whsec_hostileWHSEC0123456789",
    "RECON_TICKET_WEBHOOK_SECRET": "tkt-hostile-SINK-secret-42",
    "RECON_CONSOLE_SECRET": "console-hostile-SESSION-secret-42",
}
DB_PASSWORD = "hostileDBpw-9f8e7d"


def test_secrets_never_appear_in_output_logs_tables_tickets_or_metrics(pg_schema, pg_admin):
    import prometheus_client
    from typer.testing import CliRunner

    import worker.db
    from tests.integration.conftest import _fresh_state
    from tests.stripe_server import run_server
    from worker.cli import app

    url = pg_schema.replace("postgres@", f"postgres:{DB_PASSWORD}@", 1)
    assert DB_PASSWORD in url
    worker.db.upgrade(url)
    engine = worker.db.engine_for(url)
    seen: list[str] = []
    try:
        with run_server(api_key=SECRETS["STRIPE_API_KEY"]) as srv:
            env = {
                **SECRETS,
                "RECON_DATABASE_URL": url,
                "RECON_STRIPE_API_BASE": srv.url,
                "RECON_PROCESSING_SLA": "1h",
                "RECON_TICKET_WEBHOOK_URL": "http://127.0.0.1:9/tickets",
            }

            def run(*args: str, **extra: str) -> Result:
                _fresh_state()
                result = CliRunner().invoke(app, list(args), env={**env, **extra})
                assert not crashed(result), (args, result.exception)
                seen.append(result.output)
                return result

            pi(srv, "pi_ok", "succeeded", receipt_email="a@example.com")
            pi(srv, "pi_slow", "processing")
            for ref in ("pi_ok", "pi_slow", "pi_unknown", "pi_bad/ref"):
                seed_entry(engine, ref, 5000, created=ago(hours=3))
            run("sweep", "--older-than", "1h", "--dry-run")
            run("sweep", "--older-than", "1h", "--by", "ops")
            run("catch-up", "--since", "1h")
            run("scan", "--since", "1d", "--yes")
            run("payment", "pi_slow")
            run("replay", "evt_nope")
            run("tickets", "resolve", "1", "--action", "none", "--note", "checked")
            for args in LISTINGS:
                run(*args)
            run("tickets", "show", "1", "--json")
            run("runs", "show", "1", "--json")
            run("customer", "a@example.com", "--refresh")
            run("db", "current")
            # Failures quote what they can: a refused key, a database that is down.
            run("payment", "pi_ok", STRIPE_API_KEY="sk_test_wrongKEYhostile0000")
            run("runs", RECON_DATABASE_URL=url.replace("5432", "1", 1))
            run("runs", RECON_MAX_VOIDS="lots")
        tables = [snapshot(engine)]
        from reconcile.tables import deliveries

        tables.append(dump(engine, deliveries))
    finally:
        engine.dispose()
        worker.db.engine_for.cache_clear()
        _fresh_state()
    everything = "\n".join(seen) + repr(tables) + prometheus_client.generate_latest().decode()
    for name, secret in [*SECRETS.items(), ("DB password", DB_PASSWORD)]:
        assert secret not in everything, name


# -- a stored event naming junk, and the real process -----------------------------------------


def test_replaying_a_stored_event_that_names_a_junk_payment_id_is_one_line(cli):
    engine, invoke, srv = cli
    from reconcile import inbox as inbox_rows

    event = {
        "id": "evt_junk",
        "type": "payment_intent.payment_failed",
        "created": epoch(ago(minutes=5)),
        "livemode": False,
        "data": {"object": {"id": "pi_x/../../v1/charges", "object": "payment_intent"}},
    }
    with engine.begin() as conn:
        inbox_rows.store_event(conn, event, source="webhook", now=ago(minutes=5))
    before = snapshot(engine)["transactions"]

    result = invoke("replay", "evt_junk")

    assert not crashed(result), result.exception
    assert result.exit_code in (1, 2), result.output
    literal(result.output)
    assert srv.calls() == 0
    assert snapshot(engine)["transactions"] == before
    every_listing_still_works(invoke)


def test_the_real_recon_process_answers_bad_input_in_one_line_and_never_asks_without_a_tty(
    cli, pg_schema
):
    import os
    import subprocess
    import sys
    from pathlib import Path

    engine, _, srv = cli
    for n in range(7):
        pi(srv, f"pi_{n}", "succeeded")
        seed_entry(engine, f"pi_{n}", 5000, created=ago(hours=3))
    recon = str(Path(sys.executable).parent / "recon")
    env = {
        **os.environ,
        "RECON_DATABASE_URL": pg_schema,
        "STRIPE_API_KEY": srv.api_key,
        "RECON_STRIPE_API_BASE": srv.url,
        "TERM": "xterm-256color",
    }
    before = snapshot(engine)
    for args in (
        ["runs", "show", HUGE],
        ["replay", "evt_x?limit=1"],
        ["catch-up", "--since", "99999999d"],
        ["ledger", "inflight", "pi_q", BIG, "USD", "@stripe", "w:1"],
        ["sweep", "--older-than", "1h"],  # 7 entries, no terminal, no --yes
        ["tickets", "--kind", "[red]" + ESCAPES],
    ):
        proc = subprocess.run(
            [recon, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, proc.stderr)
        literal(proc.stdout + proc.stderr)
    assert snapshot(engine) == before
