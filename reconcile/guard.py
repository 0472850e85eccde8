"""The blast-radius guard: caps on what one run may void and ticket automatically.

A wrong API key or the wrong Stripe account makes every payment look "not found"; a Stripe
outage makes everything look stuck.  Acting on such a pass would void or ticket the whole
book, so a pass plans its batch with the pure ``decide`` first and asks the guard whether
the plan is plausible.  Past a cap the run stops acting, opens one incident ticket and ends
``partial`` (see reconcile/engine.py and reconcile/usecases/).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Guard", "GuardTripped"]


class GuardTripped(Exception):
    """A plan went over a cap; nothing in the batch that tripped it was applied."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class Guard:
    """Per-run caps on voids and new tickets: absolute, or as a share of entries examined.

    The larger of the two applies, so a small run is not stopped by a single void, while a
    wrong API key that makes every one of 2,000 payments look "not found" is.
    """

    max_voids: int = 50
    max_void_share: float = 0.5
    max_new_tickets: int = 25
    max_ticket_share: float = 0.3

    def void_cap(self, examined: int) -> int:
        return max(self.max_voids, math.floor(self.max_void_share * examined))

    def ticket_cap(self, examined: int) -> int:
        return max(self.max_new_tickets, math.floor(self.max_ticket_share * examined))

    def check(self, examined: int, voids: int, new_tickets: int) -> str | None:
        """Why a run with these totals must stop, or None when it may go on."""
        void_cap = self.void_cap(examined)
        if voids > void_cap:
            return (
                f"would void {voids} of {examined} entries examined "
                f"(cap {void_cap}: RECON_MAX_VOIDS={self.max_voids}, "
                f"RECON_MAX_VOID_SHARE={self.max_void_share})"
            )
        ticket_cap = self.ticket_cap(examined)
        if new_tickets > ticket_cap:
            return (
                f"would open {new_tickets} new tickets for {examined} entries examined "
                f"(cap {ticket_cap}: RECON_MAX_NEW_TICKETS={self.max_new_tickets}, "
                f"RECON_MAX_TICKET_SHARE={self.max_ticket_share})"
            )
        return None
