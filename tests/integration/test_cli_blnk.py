"""`recon ledger ...` with RECON_LEDGER=blnk, against the Blnk stand-in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import worker.db
from tests.blnk_server import RunningBlnk, run_server
from tests.integration.conftest import _fresh_state
from worker.cli import app

pytestmark = pytest.mark.integration


@pytest.fixture
def blnk() -> Iterator[RunningBlnk]:
    with run_server() as srv:
        yield srv


@pytest.fixture
def recon(tmp_path: Any, blnk: RunningBlnk, stripe: Any) -> Iterator[Any]:
    url = f"sqlite:///{tmp_path / 'recon.db'}"
    worker.db.upgrade(url)
    env = {
        "RECON_DATABASE_URL": url,
        "RECON_LEDGER": "blnk",
        "BLNK_URL": blnk.url,
        "BLNK_API_KEY": blnk.api_key,
        "STRIPE_API_KEY": stripe.api_key,
        "RECON_STRIPE_API_BASE": stripe.url,
    }

    def invoke(*args: str, **extra: str) -> Result:
        _fresh_state()
        return CliRunner().invoke(app, list(args), env={**env, **extra})

    yield invoke
    _fresh_state()
    worker.db.engine_for.cache_clear()


def test_blnk_without_its_url_or_key_is_a_one_line_configuration_error(recon):
    missing_url = recon("ledger", "balances", BLNK_URL="")
    assert missing_url.exit_code == 2
    assert "RECON_LEDGER=blnk needs BLNK_URL" in missing_url.output
    missing_key = recon("ledger", "balances", BLNK_API_KEY="")
    assert missing_key.exit_code == 2 and "needs BLNK_API_KEY" in missing_key.output
    bad_url = recon("ledger", "balances", BLNK_URL="ledgerhost:7", BLNK_API_KEY="sekrit-key-1")
    assert bad_url.exit_code == 2 and "BLNK_URL" in bad_url.output
    assert "http:// or https://" in bad_url.output and "ledgerhost" not in bad_url.output
    assert "sekrit-key-1" not in bad_url.output
    assert len(missing_url.output.strip().splitlines()) == 1


def test_the_ledger_commands_create_show_commit_list_balances_and_check_on_blnk(
    recon, blnk, stripe
):
    wallet = blnk.state.create_balance("USD").balance_id
    rehearsed = recon("ledger", "inflight", "pi_1", "5000", "USD", "@stripe", wallet, "--dry-run")
    assert rehearsed.exit_code == 0, rehearsed.output
    assert blnk.requests("POST", "/transactions") == []  # a rehearsal sends no write
    created = recon("ledger", "inflight", "pi_1", "5000", "USD", "@stripe", wallet, "--json")
    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout)["status"] == "INFLIGHT"
    body = blnk.requests("POST", "/transactions")[0].body
    assert (body["precise_amount"], body["precision"], "amount" in body) == (5000, 100, False)
    recon("ledger", "inflight", "pi_2", "3000", "USD", "@stripe", wallet, "--json")
    # The checked fixes: Stripe says pi_1 received 2,000 of 5,000 and pi_2 was canceled.
    stripe.state.create_payment_intent(
        id="pi_1", amount=5000, amount_received=2000, currency="usd", status="succeeded"
    )
    stripe.state.create_payment_intent(id="pi_2", amount=3000, currency="usd", status="canceled")
    committed = recon("ledger", "commit", "pi_1", "--note", "cx: settled", "--by", "ada", "--json")
    assert committed.exit_code == 0, committed.output
    shown = json.loads(recon("ledger", "show", "pi_1", "--json").stdout)
    assert (shown["committed_amount"], shown["source"]) == (2000, "@stripe")
    listed = json.loads(recon("ledger", "list", "--json").stdout)
    assert sorted(t["reference"] for t in listed) == ["pi_1", "pi_2"]
    bals = {
        (b["name"], b["currency"]): b
        for b in json.loads(recon("ledger", "balances", "--json").stdout)
    }
    assert bals[("@stripe", "USD")]["balance"] == -2000
    assert bals[(wallet, "USD")]["inflight_credit"] == 6000
    table = recon("ledger", "balances")
    assert "@stripe" in table.output and "USD" in table.output
    check = recon("ledger", "check")
    assert check.exit_code == 0 and "invariants hold" in check.output
    puts = len(blnk.requests("PUT"))
    rehearsed_void = recon("ledger", "void", "pi_2", "--note", "canceled", "--dry-run", "--json")
    assert rehearsed_void.exit_code == 0, rehearsed_void.output
    assert len(blnk.requests("PUT")) == puts  # a rehearsal sends no write to Blnk
    voided = recon("ledger", "void", "pi_2", "--note", "canceled", "--json")
    assert voided.exit_code == 0, voided.output
    assert json.loads(recon("ledger", "show", "pi_2", "--json").stdout)["status"] == "VOID"
    assert blnk.requests("PUT")[-1].body == {"status": "void", "skip_queue": True}
    refused = recon("ledger", "void", "pi_1", "--note", "no")
    assert refused.exit_code == 1 and "refused" in refused.output
    assert all(r.header("X-Blnk-Key") == blnk.api_key for r in blnk.requests())


def test_a_blnk_that_is_down_ends_the_command_in_one_line(recon):
    down = recon("ledger", "show", "pi_1", BLNK_URL="http://127.0.0.1:9")
    assert down.exit_code == 1
    assert "LedgerUnavailable" in down.output and "Traceback" not in down.output
