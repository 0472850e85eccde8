"""The README says what the code does: the events to subscribe are the ones handled."""

from __future__ import annotations

import re
from pathlib import Path

from reconcile import inbox
from reconcile.usecases import CATCH_UP_TYPES

README = Path(__file__).resolve().parents[2] / "README.md"


def subscribed_events() -> list[str]:
    text = README.read_text()
    block = text.split("<!-- events:begin -->", 1)[1].split("<!-- events:end -->", 1)[0]
    return re.findall(r"`([a-z_.]+)`", block)


def test_the_readme_lists_exactly_the_events_the_catch_up_reads() -> None:
    assert subscribed_events() == list(CATCH_UP_TYPES)


def test_every_event_to_subscribe_is_one_the_inbox_acts_on() -> None:
    assert all(inbox.is_handled(event_type) for event_type in CATCH_UP_TYPES)


def test_stripe_takes_at_most_twenty_event_types_in_one_list_call() -> None:
    assert len(CATCH_UP_TYPES) <= 20
