"""The blast-radius guard's caps: the larger of the absolute and the share cap applies."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reconcile.guard import Guard

GUARD = Guard(max_voids=50, max_void_share=0.5, max_new_tickets=25, max_ticket_share=0.3)


def test_a_small_run_may_void_up_to_the_absolute_cap() -> None:
    assert GUARD.check(examined=60, voids=50, new_tickets=0) is None


def test_a_small_run_that_voids_past_the_absolute_cap_is_stopped() -> None:
    why = GUARD.check(examined=60, voids=51, new_tickets=0)
    assert why is not None
    assert "would void 51 of 60" in why
    assert "RECON_MAX_VOIDS=50" in why


def test_a_large_run_may_void_up_to_its_share() -> None:
    assert GUARD.check(examined=1000, voids=500, new_tickets=0) is None
    assert GUARD.check(examined=1000, voids=501, new_tickets=0) is not None


def test_new_tickets_are_capped_by_the_larger_of_count_and_share() -> None:
    assert GUARD.check(examined=10, voids=0, new_tickets=25) is None
    assert GUARD.check(examined=10, voids=0, new_tickets=26) is not None
    assert GUARD.check(examined=1000, voids=0, new_tickets=300) is None
    why = GUARD.check(examined=1000, voids=0, new_tickets=301)
    assert why is not None and "would open 301 new tickets" in why


def test_a_wrong_api_key_that_makes_every_payment_unknown_trips_the_ticket_cap() -> None:
    # Every one of 2,000 entries "not found on Stripe": 2,000 unknown_payment tickets.
    assert GUARD.check(examined=2000, voids=0, new_tickets=2000) is not None


def test_zero_caps_stop_the_first_void_and_the_first_ticket() -> None:
    strict = Guard(max_voids=0, max_void_share=0, max_new_tickets=0, max_ticket_share=0)
    assert strict.check(examined=100, voids=1, new_tickets=0) is not None
    assert strict.check(examined=100, voids=0, new_tickets=1) is not None
    assert strict.check(examined=100, voids=0, new_tickets=0) is None


@given(
    examined=st.integers(0, 100_000),
    voids=st.integers(0, 100_000),
    tickets=st.integers(0, 100_000),
)
def test_the_guard_stops_exactly_when_a_total_exceeds_its_cap(
    examined: int, voids: int, tickets: int
) -> None:
    over = voids > GUARD.void_cap(examined) or tickets > GUARD.ticket_cap(examined)
    assert (GUARD.check(examined, voids, tickets) is not None) == over


@given(examined=st.integers(0, 100_000))
def test_caps_never_shrink_as_a_run_examines_more(examined: int) -> None:
    assert GUARD.void_cap(examined + 1) >= GUARD.void_cap(examined)
    assert GUARD.ticket_cap(examined + 1) >= GUARD.ticket_cap(examined)
