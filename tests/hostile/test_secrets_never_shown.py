"""The last tests of the hostile suite.

Nothing acknowledged was lost: every event answered 2xx is in the inbox and was finished
with.  And with distinctive secrets configured (Stripe API key, two webhook secrets, a
database password in the DSN), none of them appears in anything the service showed while
under attack: its answers, its log, ticket rows, inbox errors, run records, ``/metrics``.

They run after the other hostile modules (file order) and send a few kinds of their own,
so that they also prove something when run alone.
"""

from __future__ import annotations

import json

import pytest

from tests.hostile.harness import SECRETS, Intake, body_of, event, new_id, pi_object, sign

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def _provoke(intake: Intake) -> None:
    body = body_of(event())
    intake.post(body, sign(body, "whsec_wrong"))
    intake.post(body, None)
    intake.post(b"\x00\x01", sign("x"))
    intake.request("GET", "/readyz")
    intake.request("GET", "/webhooks/stripe")
    pi = new_id("pi")
    intake.seed_inflight(pi, 5000)
    text = json.dumps(event(pi_object(pi, amount_received=True)))
    intake.post(text.encode(), sign(text))
    intake.settled(json.loads(text)["id"])
    text = json.dumps(event(pi_object(new_id("pi")), livemode=True))
    intake.post(text.encode(), sign(text))


def test_no_secret_appears_in_answers_logs_tickets_inbox_runs_or_metrics(
    intake: Intake,
) -> None:
    _provoke(intake)
    places = {
        "answers": "\n".join(intake.seen),
        "metrics": intake.metrics(),
        "log": intake.log_text(),
        "tickets": json.dumps(intake.rows("SELECT * FROM recon_tickets"), default=str),
        "inbox errors": json.dumps(
            intake.rows("SELECT last_error FROM recon_inbox WHERE last_error IS NOT NULL")
        ),
        "runs": json.dumps(intake.rows("SELECT * FROM recon_runs"), default=str),
        "audit": json.dumps(intake.rows("SELECT * FROM recon_audit"), default=str),
    }
    assert places["log"], "the intake wrote no log at all: the check would prove nothing"
    leaks = [
        f"{what} in {where}"
        for where, shown in places.items()
        for what, secret in SECRETS.items()
        if secret in shown or secret[8:] in shown
    ]
    assert not leaks, leaks


def test_every_acknowledged_webhook_is_in_the_inbox_and_was_finished_with(
    intake: Intake,
) -> None:
    _provoke(intake)
    assert len(intake.acknowledged) >= 3
    unfinished = {}
    for event_id in sorted(intake.acknowledged):
        row = intake.settled(event_id)
        if row["status"] not in ("processed", "ignored"):
            unfinished[event_id] = (row["status"], row["last_error"])
    assert not unfinished, unfinished
