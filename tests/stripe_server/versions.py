"""Stripe API versions and the behaviours of the fake that depend on them.

Each threshold below is a Stripe changelog entry; the facts are listed with their sources
in FACTS.md (the ``[V…]`` tags).  A version is "YYYY-MM-DD" or "YYYY-MM-DD.name" (the
release name, e.g. ``2025-03-31.basil``); versions order by their date.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# [V3] 2025-03-31.basil: a partial capture or the cancel of an uncaptured payment no longer
# creates a Refund of the uncaptured remainder, nor sends charge.refunded.
BASIL = "2025-03-31"
# [V4] 2024-10-28.acacia: refund.created/updated/failed are sent for every refund, also the
# ones of a charge (before: only for refunds without a charge).
REFUND_EVENTS_FOR_CHARGES = "2024-10-28"
# [V5] 2022-11-15: the Charge no longer auto-expands `refunds`, and the PaymentIntent no
# longer carries `charges`.
CHARGE_REFUNDS_NOT_EXPANDED = "2022-11-15"
# [V6] 2025-04-30.basil: Refund gains `pending_reason`.
REFUND_PENDING_REASON = "2025-04-30"

_FORMAT = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:\.([a-z]+))?$")


@dataclass(frozen=True)
class ApiVersion:
    """What one API version changes in the objects and events the fake renders."""

    name: str
    date: str

    @property
    def refunds_uncaptured_remainder(self) -> bool:
        """[V3] A partial capture / released authorization creates a Refund."""
        return self.date < BASIL

    @property
    def null_amount_captured_on_cancel(self) -> bool:
        """[V3] Before basil a canceled (released) charge has amount_captured null, not 0."""
        return self.date < BASIL

    @property
    def expired_cancellation_reason(self) -> str:
        """[V3] basil renamed the authorization-expiry cancellation reason to `expired`."""
        return "automatic" if self.date < BASIL else "expired"

    @property
    def refund_events_for_charges(self) -> bool:
        """[V4] refund.* events also for refunds of a charge."""
        return self.date >= REFUND_EVENTS_FOR_CHARGES

    @property
    def charge_refunds_expanded(self) -> bool:
        """[V5] `charge.refunds` included without asking (and `payment_intent.charges`)."""
        return self.date < CHARGE_REFUNDS_NOT_EXPANDED

    @property
    def refund_pending_reason(self) -> bool:
        """[V6] Refund.pending_reason exists."""
        return self.date >= REFUND_PENDING_REASON


@functools.lru_cache(maxsize=256)
def parse_version(name: str) -> ApiVersion:
    """An ApiVersion, or ValueError for a string that is not a Stripe version."""
    match = _FORMAT.match(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(f"Invalid Stripe API version: {name}")
    return ApiVersion(name=name, date=match.group(1))


def is_before_basil(name: str) -> bool:
    return parse_version(name).date < BASIL


# Versions tests reach for by name (all listed in stripe 16.1.0's WebhookEndpoint
# api_version enum, FACTS [V1]).
PRE_BASIL = "2025-02-24.acacia"
FIRST_BASIL = "2025-03-31.basil"
PRE_REFUND_EVENTS = "2024-09-30.acacia"
LEGACY_2017 = "2017-08-15"  # what the third-party emulator localstripe stamps on events [E1]
