"""The `recon` command line against the real PostgreSQL (and a SQLite file) and the local
Stripe-compatible server: what on-call and CX type, and what it does to the books."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine, select
from typer.testing import Result

from ledger.sql import transactions
from reconcile.tables import audit, runs, tickets
from tests.support import ago, epoch, seed_entry

pytestmark = pytest.mark.integration


def dump(engine: Engine, table: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(table).order_by(table.c.id)).mappings()]


def txn(engine: Engine, reference: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            select(transactions).where(transactions.c.reference == reference)
        ).mappings()
        return dict(row.one())


def as_json(result: Result) -> Any:
    assert result.stdout.strip(), result.output
    return json.loads(result.stdout)


def pi(srv: Any, pid: str, status: str, **kw: Any) -> None:
    srv.state.create_payment_intent(
        id=pid,
        amount=kw.pop("amount", 5000),
        currency="usd",
        status=status,
        created=epoch(ago(hours=3)),
        customer="cus_1",
        record_events=False,
        **kw,
    )


def seed_sweepable(engine: Engine, srv: Any) -> None:
    pi(srv, "pi_ok", "succeeded")
    pi(srv, "pi_gone", "canceled")
    for ref in ("pi_ok", "pi_gone", "pi_unknown"):
        seed_entry(engine, ref, 5000, created=ago(hours=3))


def test_a_dry_run_sweep_changes_nothing_and_the_live_sweep_commits_and_voids(pg, stripe):
    engine, invoke = pg
    seed_sweepable(engine, stripe)
    before = (dump(engine, transactions), dump(engine, tickets))

    dry = invoke("sweep", "--older-than", "1h", "--dry-run", "--json")

    assert (dump(engine, transactions), dump(engine, tickets)) == before
    out = as_json(dry)
    assert out["dry_run"] is True
    assert {p["payment_id"]: p["action"] for p in out["plan"]} == {
        "pi_ok": "commit",
        "pi_gone": "void",
        "pi_unknown": "ticket",
    }
    assert dry.exit_code == 1  # the plan holds a discrepancy a person must look at

    live = invoke("sweep", "--older-than", "1h", "--by", "alice")

    assert live.exit_code == 1, live.output  # the unknown payment opened a ticket
    assert "run id:" in live.stdout
    assert txn(engine, "pi_ok")["status"] == "APPLIED"
    assert txn(engine, "pi_gone")["status"] == "VOID"
    assert txn(engine, "pi_unknown")["status"] == "INFLIGHT"
    assert [t["kind"] for t in dump(engine, tickets)] == ["unknown_payment"]
    last = dump(engine, runs)[-1]
    assert (last["trigger"], last["actor"], last["dry_run"]) == ("cli", "alice", False)


def test_a_clean_sweep_exits_zero(pg, stripe):
    engine, invoke = pg
    pi(stripe, "pi_ok", "succeeded")
    seed_entry(engine, "pi_ok", 5000, created=ago(hours=3))

    result = invoke("sweep", "--older-than", "1h")

    assert result.exit_code == 0, result.output
    assert txn(engine, "pi_ok")["status"] == "APPLIED"


def test_a_live_sweep_of_many_entries_without_a_terminal_refuses_unless_yes(pg, stripe):
    engine, invoke = pg
    for n in range(7):
        pi(stripe, f"pi_{n}", "succeeded")
        seed_entry(engine, f"pi_{n}", 5000, created=ago(hours=3))

    refused = invoke("sweep", "--older-than", "1h")
    assert refused.exit_code == 2
    assert "--yes" in refused.stderr
    assert all(t["status"] == "INFLIGHT" for t in dump(engine, transactions))

    done = invoke("sweep", "--older-than", "1h", "--yes")
    assert done.exit_code == 0, done.output
    assert all(t["status"] == "APPLIED" for t in dump(engine, transactions))


def test_runs_list_and_show_and_a_rerun_links_the_run_it_repeats(pg, stripe):
    engine, invoke = pg
    seed_sweepable(engine, stripe)
    first = as_json(invoke("sweep", "--older-than", "1h", "--json"))

    listed = as_json(invoke("runs", "--json"))
    keys = {"id", "job", "status", "trigger", "dry_run", "counts", "started_at", "finished_at"}
    keys |= {"actor", "window", "stripe_calls", "stripe_rate_limited", "errors", "rerun_of"}
    assert keys <= set(listed[0])
    assert listed[0]["id"] == first["run_id"]
    assert listed[0]["stripe_calls"] >= 1

    shown = as_json(invoke("runs", "show", str(first["run_id"]), "--json"))
    assert {a["action"] for a in shown["audit"]} >= {"commit", "void", "ticket_opened"}
    assert invoke("runs", "show", str(first["run_id"])).exit_code == 0

    again = invoke("rerun", str(first["run_id"]), "--json")
    rerun = as_json(again)
    row = [r for r in dump(engine, runs) if r["id"] == rerun["run_id"]][0]
    assert (row["rerun_of"], row["trigger"], row["job"]) == (first["run_id"], "rerun", "sweep")
    assert row["params"]["older_than_seconds"] == 3600
    assert again.exit_code == 1  # the unknown payment is still there: its ticket is bumped
    assert dump(engine, tickets)[0]["occurrences"] == 2

    assert invoke("rerun", "9999").exit_code == 2  # an id that does not exist is bad input
    assert invoke("runs", "--job", "sweep").exit_code == 0


def test_tickets_resolve_commit_is_refused_while_stripe_says_failed_and_done_once_it_succeeds(
    pg, stripe
):
    engine, invoke = pg
    pi(stripe, "pi_slow", "processing")
    seed_entry(engine, "pi_slow", 5000, created=ago(hours=3))
    assert invoke("payment", "pi_slow").exit_code == 1  # past the 1h SLA: stuck_payment
    listed = as_json(invoke("tickets", "--json"))
    keys = {"id", "kind", "severity", "status", "payment_id", "reference", "occurrences"}
    keys |= {"opened_at", "customer", "amount", "currency", "summary", "last_seen_at"}
    assert keys <= set(listed[0])
    (ticket,) = listed
    assert ticket["kind"] == "stuck_payment"
    tid = str(ticket["id"])

    shown = invoke("tickets", "show", tid)
    assert shown.exit_code == 0, shown.output
    for text in ("pi_slow", "50.00 USD", "processing", "INFLIGHT", "suggested fix", "dashboard"):
        assert text in shown.stdout

    stripe.state.update_payment_intent(
        "pi_slow",
        status="requires_payment_method",
        last_payment_error={"code": "card_declined", "message": "declined"},
        record_events=False,
    )
    before = dump(engine, transactions)
    refused = invoke("tickets", "resolve", tid, "--action", "commit", "--note", "customer says")
    assert refused.exit_code == 1
    assert "requires_payment_method" in refused.stderr
    assert dump(engine, transactions) == before
    assert dump(engine, tickets)[0]["status"] == "open"

    stripe.state.update_payment_intent("pi_slow", status="succeeded", record_events=False)
    dry = invoke("tickets", "resolve", tid, "--action", "commit", "--note", "ok", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dump(engine, transactions) == before

    done = invoke(
        "tickets", "resolve", tid, "--action", "commit", "--note", "paid at last", "--by", "bob"
    )
    assert done.exit_code == 0, done.output
    assert txn(engine, "pi_slow")["status"] == "APPLIED"
    closed = dump(engine, tickets)[0]
    assert (closed["status"], closed["resolved_by"], closed["resolution"]) == (
        "resolved",
        "bob",
        "paid at last",
    )
    manual = [a for a in dump(engine, audit) if a["reason"] == "manual:commit"]
    assert [(a["actor"], a["amount"]) for a in manual] == [("bob", 5000)]
    assert manual[0]["evidence"]["stripe"]["status"] == "succeeded"
    assert as_json(invoke("tickets", "--status", "resolved", "--json"))[0]["id"] == int(tid)

    rep = as_json(invoke("report", "--since", "1d", "--json"))
    assert rep["tickets_opened_per_day"] and sum(rep["open_tickets_by_age"].values()) == 0
    assert sum(sum(c.values()) for c in rep["actions_per_day"].values()) == len(dump(engine, audit))
    assert rep["stripe_calls"] >= 1
    assert invoke("report").exit_code == 0


def test_scan_opens_missing_record_and_create_record_credits_the_wallet_on_sqlite(lite, stripe):
    engine, invoke = lite
    pi(stripe, "pi_lost", "succeeded", metadata={"ledger_destination": "wallet:cus_9"})

    assert invoke("scan", "--since", "1d").exit_code == 2  # no terminal, no --yes
    scanned = invoke("scan", "--since", "1d", "--until", "1m", "--yes")
    assert scanned.exit_code == 1, scanned.output
    (ticket,) = dump(engine, tickets)
    assert ticket["kind"] == "missing_record"

    assert (
        invoke("tickets", "resolve", str(ticket["id"]), "--action", "void", "--note", "x").exit_code
        == 1
    )
    done = invoke(
        "tickets", "resolve", str(ticket["id"]), "--action", "create-record", "--note", "credit"
    )
    assert done.exit_code == 0, done.output
    created = txn(engine, "pi_lost")
    assert (created["status"], created["destination"], created["amount"]) == (
        "APPLIED",
        "wallet:cus_9",
        5000,
    )
    assert dump(engine, tickets)[0]["status"] == "resolved"


def test_payment_shows_both_states_and_the_decision(pg, stripe):
    engine, invoke = pg
    pi(stripe, "pi_ok", "succeeded")
    seed_entry(engine, "pi_ok", 5000, created=ago(hours=3))

    dry = invoke("payment", "pi_ok", "--dry-run")
    assert dry.exit_code == 0, dry.output
    reason = as_json(invoke("payment", "pi_ok", "--dry-run", "--json"))["decision"]["reason"]
    for text in ("Stripe", "succeeded", "ledger", "INFLIGHT", "commit", reason):
        assert text in dry.stdout, text
    assert txn(engine, "pi_ok")["status"] == "INFLIGHT"

    live = as_json(invoke("payment", "pi_ok", "--json"))
    assert live["stripe"]["status"] == "succeeded"
    assert live["ledger"]["status"] == "INFLIGHT"
    assert live["decision"]["action"] == "commit"
    assert txn(engine, "pi_ok")["status"] == "APPLIED"


def test_replay_fetches_an_unknown_event_from_stripe_and_processes_it(pg, stripe):
    engine, invoke = pg
    change = stripe.state.create_payment_intent(
        id="pi_ev", amount=5000, currency="usd", status="succeeded", created=epoch(ago(hours=3))
    )
    seed_entry(engine, "pi_ev", 5000, created=ago(hours=3))
    event_id = change.events[-1]["id"]

    result = invoke("replay", event_id, "--json")

    assert result.exit_code == 0, result.output
    assert as_json(result)["event_status"] == "processed"
    assert txn(engine, "pi_ev")["status"] == "APPLIED"
    assert invoke("replay", "evt_nope").exit_code == 2


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("sweep", "--older-than", "soon"), 2),
        (("scan", "--since", "yesterday", "--dry-run"), 2),
        (("scan", "--since", "1h", "--until", "2h", "--dry-run"), 2),
        (("tickets", "show", "999"), 2),
        (("tickets", "resolve", "999", "--action", "commit", "--note", "x"), 2),
        (("tickets", "resolve", "999", "--action", "none", "--note", "x"), 2),
        (("tickets", "--kind", "stuck-payments"), 2),
        (("tickets", "--status", "closed"), 2),
        (("runs", "--job", "sweeep"), 2),
        (("runs", "--status", "ok"), 2),
        (("inbox", "--status", "stuck"), 2),
        (("payment", "pi_nope"), 2),
        (("payment", "pi_nope", "--dry-run"), 2),
        (("ledger", "show", "pi_nope"), 2),
        (("ledger", "void", "pi_nope", "--note", "x"), 2),
        (("catch-up", "--since", "2099-01-01T00:00:00Z", "--dry-run"), 2),
        (("scan", "--since", "2099-01-01T00:00:00Z", "--dry-run"), 2),
        (("sweep", "--dry-run", "--by", "a\x1bb"), 2),
        (("tickets", "resolve", "1", "--action", "refund", "--note", "x"), 2),
        (("tickets", "--severity", "urgent"), 2),
        (("runs", "show", "999"), 2),
        (("rerun", "999"), 2),
        (("replay", "evt_nope"), 2),
        (("report", "--since", "week"), 2),
    ],
)
def test_bad_input_exits_with_the_documented_code(db, args, code):
    engine, invoke = db
    runs_before = dump(engine, runs)
    result = invoke(*args)
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1, result.stderr
    assert dump(engine, runs) == runs_before  # nothing recorded as done


def test_a_filter_refusal_lists_the_valid_values(db):
    _, invoke = db
    kind = invoke("tickets", "--kind", "stuck-payments").stderr
    assert "stuck_payment" in kind and "missing_record" in kind
    job = invoke("runs", "--job", "sweeep").stderr
    assert "sweep" in job and "catch_up" in job and "scan_missing" in job


@pytest.mark.parametrize(
    "args",
    [
        ("tickets",),
        ("tickets", "show", "1"),
        ("runs",),
        ("runs", "show", "1"),
        ("report",),
        ("inbox",),
        ("customer", "praise@example.com"),
        ("ledger", "balances"),
        ("ledger", "show", "pi_1"),
        ("ledger", "list"),
        ("ledger", "check"),
        ("payment", "pi_1", "--dry-run"),
        ("sweep", "--dry-run"),
        ("catch-up", "--dry-run"),
        ("scan", "--since", "1h", "--dry-run"),
        ("rerun", "1", "--dry-run"),
        ("replay", "evt_1", "--dry-run"),
        ("tickets", "resolve", "1", "--action", "none", "--note", "x"),
        ("ledger", "void", "pi_1", "--note", "x"),
        ("db", "current"),
    ],
)
def test_a_database_that_is_down_or_not_migrated_is_one_line_in_every_command(
    tmp_path, stripe, args
):
    from tests.integration.conftest import _make_invoke

    empty = _make_invoke(f"sqlite:///{tmp_path / 'empty.db'}", stripe)
    down = _make_invoke("postgresql+psycopg://postgres:s3cret@127.0.0.1:1/nope", stripe)
    for invoke, says in ((empty, "recon db upgrade"), (down, "database unavailable")):
        result = invoke(*args)
        if args == ("db", "current") and invoke is empty:
            assert result.exit_code == 0  # an empty database is an answer here
            continue
        assert result.exit_code == 1, (args, result.output)
        assert says in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
        assert "s3cret" not in result.output


def test_a_missing_stripe_key_is_a_one_line_usage_error(pg):
    _, invoke = pg
    result = invoke("sweep", "--dry-run", extra_env={"STRIPE_API_KEY": ""})
    assert result.exit_code == 2
    assert "STRIPE_API_KEY" in result.stderr


def test_the_report_flags_a_ticket_kind_that_jumped_against_the_previous_period(lite):
    engine, invoke = lite

    def opened(kind: str, n: int, days_ago: float) -> None:
        with engine.begin() as conn:
            for i in range(n):
                at = ago(days=days_ago, minutes=i)
                conn.execute(
                    tickets.insert().values(
                        kind=kind, severity=2, status="resolved", payment_id=f"{kind}{days_ago}{i}",
                        reason="r", summary="s", suggested_fix="f", occurrences=1,
                        opened_at=at, last_seen_at=at,
                    )
                )  # fmt: skip

    opened("stuck_payment", 4, 1)  # this week: 4, last week: 1 -> a jump
    opened("stuck_payment", 1, 9)
    opened("amount_mismatch", 3, 2)  # steady: 3 and 3
    opened("amount_mismatch", 3, 10)

    rep = as_json(invoke("report", "--since", "7d", "--json"))

    recurring = {
        r["kind"]: (r["this_period"], r["previous"], r["jump"]) for r in rep["recurring_issues"]
    }
    assert recurring == {"stuck_payment": (4, 1, True), "amount_mismatch": (3, 3, False)}
    assert sum(sum(c.values()) for c in rep["tickets_opened_per_day"].values()) == 7


def test_a_sweep_in_parts_needs_workers_and_refuses_without_a_broker(pg, stripe):
    engine, invoke = pg
    seed_sweepable(engine, stripe)
    before = dump(engine, transactions)

    no_broker = invoke("sweep", "--older-than", "1h", "--parts", "2", "--yes")
    dry = invoke("sweep", "--older-than", "1h", "--parts", "2", "--dry-run")

    assert no_broker.exit_code != 0 and "RECON_BROKER_URL" in no_broker.output
    assert dry.exit_code != 0 and "--parts" in dry.output
    assert dump(engine, transactions) == before
