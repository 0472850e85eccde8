"""`recon customer`: from a person to their wallet, and a fix for each thing they are owed,
on PostgreSQL and SQLite, through the CLI as CX types it."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, select

from ledger.sql import transactions
from reconcile.tables import audit, customer_payments, runs, tickets
from tests.integration.conftest import Invoke
from tests.integration.test_cli import as_json, dump, txn
from tests.support import ago, epoch, seed_entry

pytestmark = pytest.mark.integration

EMAIL = "praise@example.com"


def seed_praise(engine: Engine, srv: Any) -> None:
    """Praise: a $2,000 top-up stuck in flight, one paid but never recorded, one failed."""
    common = {"currency": "usd", "customer": "cus_praise", "record_events": False}
    srv.state.create_payment_intent(
        id="pi_praise_stuck",
        amount=200_000,
        status="processing",
        created=epoch(ago(hours=3)),
        receipt_email=EMAIL,
        **common,
    )
    seed_entry(
        engine,
        "pi_praise_stuck",
        200_000,
        created=ago(hours=3),
        destination="wallet:praise",
        metadata={"customer_email": EMAIL, "customer_name": "Praise Okafor"},
    )
    srv.state.create_payment_intent(
        id="pi_praise_lost",
        amount=5_000,
        status="succeeded",
        created=epoch(ago(hours=2)),
        metadata={"ledger_destination": "wallet:praise"},
        **common,
    )
    srv.state.create_payment_intent(
        id="pi_praise_failed",
        amount=7_500,
        status="requires_payment_method",
        last_payment_error="card_declined",
        created=epoch(ago(minutes=20)),
        **common,
    )
    seed_entry(
        engine,
        "pi_praise_failed",
        7_500,
        created=ago(minutes=20),
        destination="wallet:praise",
        metadata={"customer_email": "Praise@Example.com"},
    )


def see_everything(invoke: Invoke) -> None:
    # What the service does anyway: the sweep and the missing-record scan.
    assert invoke("sweep", "--older-than", "10m").exit_code == 1  # stuck past the 1h SLA
    assert invoke("scan", "--since", "1d", "--yes").exit_code == 1  # the unrecorded payment


def test_praise_is_found_by_email_and_shows_all_three_payments_with_what_to_say(db, stripe):
    engine, invoke = db
    seed_praise(engine, stripe)
    see_everything(invoke)

    shown = invoke("customer", EMAIL)
    assert shown.exit_code == 0, shown.output
    out = as_json(invoke("customer", EMAIL, "--json"))
    view = out["customer"]
    assert (view["name"], view["email"], view["stripe_customer"]) == (
        "Praise Okafor",
        EMAIL,
        "cus_praise",
    )
    assert [b["name"] for b in view["balances"]] == ["wallet:praise"]
    assert view["balances"][0]["inflight_formatted"] == "2,075.00 USD"
    pending = {p["payment_id"]: p for p in view["pending"]}
    assert set(pending) == {"pi_praise_stuck", "pi_praise_lost", "pi_praise_failed"}

    stuck = pending["pi_praise_stuck"]
    assert (stuck["ledger_status"], stuck["stripe_status"], stuck["state"]) == (
        "INFLIGHT",
        "processing",
        "waiting_on_bank",
    )
    assert stuck["ticket_kind"] == "stuck_payment"
    assert "2,000.00 USD" in stuck["message"] and "confirmed by your bank" in stuck["message"]
    assert stuck["payment_age_seconds"] >= 3 * 3600 - 60

    lost = pending["pi_praise_lost"]
    assert (lost["ledger_status"], lost["ticket_kind"]) == (None, "missing_record")
    assert "We are crediting it now" in lost["message"]
    assert f"recon tickets resolve {lost['ticket_id']} --action create-record" in lost["next_step"]

    failed = pending["pi_praise_failed"]
    assert failed["state"] == "failed" and "did not go through" in failed["message"]
    assert "recon ledger void pi_praise_failed" in failed["next_step"]

    for text in (
        "Praise Okafor",
        "2,000.00 USD",
        "tell the customer",
        "next step",
        "stuck_payment",
    ):
        assert text in shown.stdout, text
    tickets_ = {t["payment_id"]: t for t in view["tickets"]}
    assert tickets_["pi_praise_stuck"]["status"] == "open"
    assert [t["payment_id"] for t in view["transactions"]] == [
        "pi_praise_failed",
        "pi_praise_stuck",
    ]  # newest first


@pytest.mark.parametrize(
    ("query", "matched_by"),
    [
        ("PRAISE@example.COM", "email"),
        ("praise", "name"),
        ("oka", "name"),
        ("Praise Ok", "name"),
        ("cus_praise", "stripe customer"),
        ("wallet:praise", "balance"),
        ("pi_praise_lost", "payment"),
        ("pi_praise_failed", "payment"),
    ],
)
def test_praise_is_found_by_any_name_id_or_balance(db, stripe, query, matched_by):
    engine, invoke = db
    seed_praise(engine, stripe)
    see_everything(invoke)
    out = as_json(invoke("customer", query, "--json"))
    assert out["matched_by"] == matched_by
    assert out["customer"]["email"] == EMAIL


def test_several_matches_list_the_candidates_and_no_match_is_bad_input(db, stripe):
    engine, invoke = db
    seed_praise(engine, stripe)
    stripe.state.create_payment_intent(
        id="pi_prakash", amount=1000, currency="usd", status="processing",
        created=epoch(ago(hours=1)), record_events=False,
    )  # fmt: skip
    seed_entry(
        engine, "pi_prakash", 1000, created=ago(hours=1), destination="wallet:prakash",
        metadata={"customer_email": "prakash@example.com", "customer_name": "Prakash Rao"},
    )  # fmt: skip
    see_everything(invoke)

    both = invoke("customer", "pra", "--json")
    assert both.exit_code == 0
    out = as_json(both)
    assert out["customer"] is None
    assert sorted(c["email"] for c in out["candidates"]) == [EMAIL, "prakash@example.com"]
    assert "prakash@example.com" in invoke("customer", "pra").stdout

    for query in ("nobody@example.com", "zzz", "pi_nope", "cus_nope"):
        missing = invoke("customer", query)
        assert missing.exit_code == 2, (query, missing.output)
        assert missing.stderr.count("\n") == 1 and "no customer matches" in missing.stderr
    assert invoke("customer", "   ").exit_code == 2


def test_refresh_credits_the_stuck_top_up_once_stripe_says_succeeded(db, stripe):
    engine, invoke = db
    seed_praise(engine, stripe)
    see_everything(invoke)
    stripe.state.update_payment_intent("pi_praise_stuck", status="succeeded", record_events=False)

    # Without --refresh nothing calls Stripe: the last known state is shown.
    before = as_json(invoke("customer", EMAIL, "--json"))["customer"]
    stuck = [p for p in before["pending"] if p["payment_id"] == "pi_praise_stuck"][0]
    assert stuck["stripe_status"] == "processing"

    dry = as_json(invoke("customer", EMAIL, "--refresh", "--dry-run", "--json"))
    assert dry["refresh"]["dry_run"] is True
    assert txn(engine, "pi_praise_stuck")["status"] == "INFLIGHT"

    done = invoke("customer", EMAIL, "--refresh", "--json", "--by", "cx-anna")
    out = as_json(done)
    assert txn(engine, "pi_praise_stuck")["status"] == "APPLIED"
    assert out["refresh"]["counts"]["commit"] == 1
    pending = {p["payment_id"] for p in out["customer"]["pending"]}
    assert pending == {"pi_praise_lost", "pi_praise_failed"}
    assert out["customer"]["balances"][0]["formatted"] == "2,000.00 USD"
    resolved = [t for t in out["customer"]["tickets"] if t["payment_id"] == "pi_praise_stuck"][0]
    assert resolved["status"] == "resolved"
    assert "credited with your top-up of 2,000.00 USD" in resolved["customer_message"]
    run = [r for r in dump(engine, runs) if r["job"] == "customer_refresh"][-1]
    assert (run["actor"], run["dry_run"]) == ("cx-anna", False)


def test_each_of_praises_payments_is_fixed_with_one_command_audited_with_the_operator(db, stripe):
    engine, invoke = db
    seed_praise(engine, stripe)
    see_everything(invoke)
    view = as_json(invoke("customer", EMAIL, "--json"))["customer"]
    lost = [p for p in view["pending"] if p["payment_id"] == "pi_praise_lost"][0]

    created = invoke(
        "tickets", "resolve", str(lost["ticket_id"]), "--action", "create-record",
        "--note", "paid, never recorded", "--by", "cx-anna",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    assert "50.00 USD" in created.stdout
    assert txn(engine, "pi_praise_lost")["destination"] == "wallet:praise"

    refused = invoke("ledger", "commit", "pi_praise_failed", "--note", "x", "--by", "cx-anna")
    assert refused.exit_code == 1 and "requires_payment_method" in refused.stderr
    assert "75.00 USD" in refused.stderr
    voided = invoke("ledger", "void", "pi_praise_failed", "--note", "gave up", "--by", "cx-anna")
    assert voided.exit_code == 0, voided.output
    assert txn(engine, "pi_praise_failed")["status"] == "VOID"

    manual = {
        (a["payment_id"], a["action"]): a for a in dump(engine, audit) if a["actor"] == "cx-anna"
    }
    assert set(manual) == {("pi_praise_lost", "create"), ("pi_praise_failed", "void")}
    assert manual[("pi_praise_failed", "void")]["evidence"]["note"] == "gave up"
    assert manual[("pi_praise_failed", "void")]["evidence"]["stripe"]["status"] == (
        "requires_payment_method"
    )
    after = as_json(invoke("customer", EMAIL, "--json"))["customer"]
    assert [p["payment_id"] for p in after["pending"]] == ["pi_praise_stuck"]


def test_the_index_keeps_the_last_known_stripe_state_of_each_payment(db, stripe):
    engine, invoke = db
    seed_praise(engine, stripe)
    see_everything(invoke)
    with engine.connect() as conn:
        rows = {r["payment_id"]: r for r in conn.execute(select(customer_payments)).mappings()}
    assert rows["pi_praise_stuck"]["status"] == "processing"
    assert rows["pi_praise_failed"]["last_payment_error"] == "card_declined"
    assert rows["pi_praise_lost"]["balance"] == "wallet:praise"
    assert len({r["customer_id"] for r in rows.values()}) == 1
    assert len([t for t in dump(engine, tickets) if t["status"] == "open"]) == 2
    assert transactions is not None


def _balance(engine: Engine, name: str) -> int:
    from ledger.sql import balances

    with engine.connect() as conn:
        return int(
            conn.execute(select(balances.c.balance).where(balances.c.name == name)).scalar_one()
        )


@pytest.mark.parametrize(
    ("status", "entry_status", "extra", "kind", "action", "moved", "wallet_after"),
    [
        ("succeeded", "VOID", {}, "paid_but_voided", "credit", 5000, 5000),
        ("canceled", "APPLIED", {}, "credited_but_failed", "reverse", 5000, 0),
        (
            "succeeded",
            "APPLIED",
            {"amount_refunded": 2000},
            "refund_after_credit",
            "reverse",
            2000,
            3000,
        ),
    ],
)
def test_credit_and_reverse_fix_the_books_and_the_next_pass_finds_them_agreeing(
    db, stripe, status, entry_status, extra, kind, action, moved, wallet_after
):
    engine, invoke = db
    stripe.state.create_payment_intent(
        id="pi_fix", amount=5000, currency="usd", status="succeeded" if extra else status,
        created=epoch(ago(hours=3)), customer="cus_fix", record_events=False,
    )  # fmt: skip
    if extra:
        stripe.state.update_payment_intent("pi_fix", record_events=False, **extra)
    seed_entry(engine, "pi_fix", 5000, created=ago(hours=3), destination="wallet:fix",
               status=entry_status)  # fmt: skip
    assert invoke("payment", "pi_fix").exit_code == 1
    (ticket,) = [t for t in dump(engine, tickets) if t["status"] == "open"]
    assert ticket["kind"] == kind

    wrong = "reverse" if action == "credit" else "credit"
    refused = invoke("tickets", "resolve", str(ticket["id"]), "--action", wrong, "--note", "x")
    assert refused.exit_code == 1 and "refused" in refused.stderr

    done = invoke(
        "tickets", "resolve", str(ticket["id"]), "--action", action, "--note", "fixed",
        "--by", "cx-bob", "--json",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    out = as_json(done)
    assert (out["amount"], out["currency"], out["done"]) == (moved, "USD", True)
    suffix = ":credit" if action == "credit" else ":reversal"
    adj = txn(engine, "pi_fix" + suffix)
    assert (adj["status"], adj["amount"], adj["meta"]["recon_adjusts"]) == (
        "APPLIED",
        moved,
        "pi_fix",
    )
    assert _balance(engine, "wallet:fix") == wallet_after
    (row,) = [a for a in dump(engine, audit) if a["actor"] == "cx-bob"]
    assert (row["action"], row["amount"], row["reason"]) == (action, moved, f"manual:{action}")
    assert row["evidence"]["stripe"]["found"] is True and row["evidence"]["note"] == "fixed"

    again = invoke("payment", "pi_fix", "--json")
    assert again.exit_code == 0, again.output  # the books agree: no ticket opened again
    assert as_json(again)["decision"]["action"] == "matched"
    assert [t["status"] for t in dump(engine, tickets)] == ["resolved"]
    twice = invoke("ledger", "check")
    assert twice.exit_code == 0, twice.output
