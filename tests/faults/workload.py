"""The fault campaign's workload and its oracle.

A workload is a list of payments, each in one row of the decision table (DESIGN.md), with
its amount and currency, and a delivery plan for the webhooks Stripe sends about it (how
many copies of each event, which are never delivered, in what order).  Hypothesis draws it
(:func:`workloads`); every row of the table is present at any size.

The oracle (:func:`expected`) is the decision table written out once more, per row, from
the payment's amounts alone: it does not call ``reconcile.decide``.  After the campaign, the
ledger and the open tickets must equal it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from hypothesis import strategies as st

from tests.support import ago, epoch, seed_entry

# Policy the worker runs with in the campaign (RECON_* settings) and the oracle assumes.
FAILED_GRACE = timedelta(hours=1)
PROCESSING_SLA = timedelta(hours=6)
SWEEP_MIN_AGE = timedelta(minutes=10)

OLD = timedelta(hours=8)  # older than every grace, SLA and the sweep's minimum age
YOUNG = timedelta(minutes=30)  # older than sweep_min_age, within failed_grace and the SLA
FRESH = timedelta(minutes=2)  # younger than sweep_min_age: only webhooks and catch-up see it

CURRENCIES = ("USD", "EUR", "JPY")


@dataclass(frozen=True)
class Row:
    """One row of the decision table: what the ledger and Stripe hold, what must follow."""

    name: str
    entry: str | None  # INFLIGHT | APPLIED | VOID | None (no ledger record)
    age: timedelta
    stripe: str  # what happens on Stripe, see seed()
    # -> (status, committed, voided) from (amount, received); None: no ledger record
    ledger: Any
    tickets: frozenset[str] = frozenset()


def _applied(a: int, r: int) -> tuple[str, int, int]:
    return ("APPLIED", a, 0)


def _untouched(a: int, r: int) -> tuple[str, int, int]:
    return ("INFLIGHT", 0, 0)


def _voided(a: int, r: int) -> tuple[str, int, int]:
    return ("VOID", 0, a)


def _partial(a: int, r: int) -> tuple[str, int, int]:
    return ("APPLIED", r, a - r)


def _none(a: int, r: int) -> None:
    return None


T = frozenset
ROWS: dict[str, Row] = {
    r.name: r
    for r in (
        # succeeded, amount and currency match, INFLIGHT -> COMMIT
        Row("ok", "INFLIGHT", OLD, "succeeded", _applied),
        # the same, seen only through webhooks / catch-up (younger than the sweep's age)
        Row("ok_fresh", "INFLIGHT", FRESH, "processing_then_succeeded", _applied),
        # partial capture -> COMMIT received, VOID the rest, amount_mismatch (low)
        Row("partial", "INFLIGHT", OLD, "partial", _partial, T({"amount_mismatch"})),
        # received > inflight -> amount_mismatch (high), no change
        Row("over", "INFLIGHT", OLD, "over", _untouched, T({"amount_mismatch"})),
        # other currency -> amount_mismatch (high), no change
        Row("currency", "INFLIGHT", OLD, "other_currency", _untouched, T({"amount_mismatch"})),
        # canceled -> VOID
        Row("canceled", "INFLIGHT", OLD, "canceled", _voided),
        # failed attempt past failed_grace -> VOID; within it -> WAIT
        Row("failed_old", "INFLIGHT", OLD, "failed", _voided),
        Row("failed_young", "INFLIGHT", YOUNG, "failed", _untouched),
        # processing / requires_action: WAIT; past the SLA with stuck_payment
        Row("processing_young", "INFLIGHT", YOUNG, "processing", _untouched),
        Row("processing_old", "INFLIGHT", OLD, "processing", _untouched, T({"stuck_payment"})),
        Row(
            "requires_action_old",
            "INFLIGHT",
            OLD,
            "requires_action",
            _untouched,
            T({"stuck_payment"}),
        ),
        # not found on Stripe -> unknown_payment (high)
        Row("unknown", "INFLIGHT", OLD, "absent", _untouched, T({"unknown_payment"})),
        # succeeded, no record -> missing_record (high)
        Row("missing", None, OLD, "succeeded", _none, T({"missing_record"})),
        # succeeded, APPLIED, amounts match -> MATCHED
        Row("applied_ok", "APPLIED", OLD, "succeeded", _applied),
        # succeeded, APPLIED, amounts differ -> amount_mismatch (high)
        Row("applied_mismatch", "APPLIED", OLD, "over", _applied, T({"amount_mismatch"})),
        # canceled, APPLIED -> credited_but_failed (critical)
        Row(
            "credited_but_failed",
            "APPLIED",
            OLD,
            "processing_then_canceled",
            _applied,
            T({"credited_but_failed"}),
        ),
        # succeeded, VOID -> paid_but_voided (critical)
        Row("paid_but_voided", "VOID", OLD, "succeeded", _voided, T({"paid_but_voided"})),
        # refunded / disputed / fraud-warned after APPLIED -> their ticket
        Row(
            "refund_after_credit",
            "APPLIED",
            OLD,
            "succeeded_then_refunded",
            _applied,
            T({"refund_after_credit"}),
        ),
        Row(
            "dispute_opened",
            "APPLIED",
            OLD,
            "succeeded_then_disputed",
            _applied,
            T({"dispute_opened"}),
        ),
        Row(
            "fraud_warning",
            "APPLIED",
            OLD,
            "succeeded_then_fraud_warning",
            _applied,
            T({"fraud_warning"}),
        ),
        # anything not succeeded, no record -> nothing
        Row("not_succeeded_no_entry", None, OLD, "canceled", _none),
        # the race of issue 14: INFLIGHT, succeeded then refunded, the succeeded event and
        # the refund delivered together -> committed once, refund_after_credit stays open
        Row(
            "race",
            "INFLIGHT",
            FRESH,
            "succeeded_then_refunded",
            _applied,
            T({"refund_after_credit"}),
        ),
    )
}


@dataclass(frozen=True)
class Payment:
    id: str
    row: str
    amount: int
    currency: str
    received: int  # < amount for a partial capture, else amount
    other_amount: int  # the PaymentIntent's amount where it differs from the entry's


@dataclass(frozen=True)
class Workload:
    payments: tuple[Payment, ...]
    copies: tuple[int, ...]  # per delivery slot: 1-5 copies of the event
    dropped: tuple[bool, ...]  # per delivery slot: never delivered by webhook
    order_seed: int  # shuffles the deliveries

    def by_row(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.payments:
            out[p.row] = out.get(p.row, 0) + 1
        return out


@st.composite
def payment_for(draw: Any, row: str, n: int) -> Payment:
    currency = draw(st.sampled_from(CURRENCIES))
    amount = draw(st.integers(min_value=200, max_value=2_000_000))
    received = draw(st.integers(min_value=1, max_value=amount - 1)) if row == "partial" else amount
    other = amount + draw(st.integers(min_value=1, max_value=50_000))
    return Payment(f"pi_{row}_{n:04}", row, amount, currency, received, other)


def races_for(size: int) -> int:
    # 40 refunded payments racing their succeeded event at the proof size (300), as issue 14.
    return max(2, round(size * 40 / 300))


@st.composite
def workloads(draw: Any, size: int) -> Workload:
    """``size`` payments: every row at least once, the race ~13%, the rest drawn."""
    plain = [r for r in ROWS if r != "race"]
    rows = [*plain, *["race"] * races_for(size)]
    extra = max(0, size - len(rows))
    rows += draw(st.lists(st.sampled_from(plain), min_size=extra, max_size=extra))
    payments = tuple(draw(payment_for(row, n)) for n, row in enumerate(rows))
    # A delivery plan of 100 slots, used round-robin by the events in order: 1-5 copies
    # each, about 10% never delivered.  (A draw per event would outgrow what Hypothesis
    # generates for one example at the proof size.)
    copies = tuple(draw(st.lists(st.integers(1, 5), min_size=100, max_size=100)))
    lost = draw(st.sets(st.integers(0, 99), min_size=7, max_size=13))
    dropped = tuple(i in lost for i in range(100))
    return Workload(payments, copies, dropped, draw(st.integers(0, 2**31)))


def _realistic(w: Workload) -> bool:
    # Hypothesis tries its simplest example first (every draw at its minimum: all events
    # dropped, one copy each, one amount); the campaign runs one example, so it must be one
    # that exercises the faults: some drops, some copies, amounts that differ.
    return max(w.copies) >= 3 and len({p.amount for p in w.payments}) > 3


def campaign_workloads(size: int) -> st.SearchStrategy[Workload]:
    return workloads(size).filter(_realistic)


# -- seeding ---------------------------------------------------------------------------------


def seed(engine: Any, stripe_state: Any, workload: Workload) -> dict[str, list[dict[str, Any]]]:
    """Write the ledger entries and make Stripe's side happen; the events Stripe recorded,
    per payment, oldest first."""
    events: dict[str, list[dict[str, Any]]] = {}
    for p in workload.payments:
        row = ROWS[p.row]
        created = ago(seconds=row.age.total_seconds())
        entry_amount = p.amount
        pi: dict[str, Any] = {
            "id": p.id,
            "amount": p.amount,
            "currency": p.currency.lower(),
            "created": epoch(created),
            "customer": f"cus_{p.id[-4:]}",
            "metadata": {"ledger_destination": f"wallet:{p.id}"},
        }
        changes: list[Any] = []
        match row.stripe:
            case "succeeded":
                changes.append(stripe_state.create_payment_intent(status="succeeded", **pi))
            case "partial":
                changes.append(
                    stripe_state.create_payment_intent(
                        status="succeeded", amount_received=p.received, **pi
                    )
                )
            case "over":
                pi["amount"] = p.other_amount
                changes.append(stripe_state.create_payment_intent(status="succeeded", **pi))
            case "other_currency":
                pi["currency"] = "gbp"
                changes.append(stripe_state.create_payment_intent(status="succeeded", **pi))
            case "canceled":
                changes.append(stripe_state.create_payment_intent(status="canceled", **pi))
            case "failed":
                changes.append(
                    stripe_state.create_payment_intent(
                        status="requires_payment_method",
                        last_payment_error={"code": "card_declined", "message": "declined"},
                        **pi,
                    )
                )
            case "processing" | "requires_action":
                changes.append(stripe_state.create_payment_intent(status=row.stripe, **pi))
            case "processing_then_succeeded":
                changes.append(stripe_state.create_payment_intent(status="processing", **pi))
                changes.append(stripe_state.update_payment_intent(p.id, status="succeeded"))
            case "processing_then_canceled":
                changes.append(stripe_state.create_payment_intent(status="processing", **pi))
                changes.append(stripe_state.update_payment_intent(p.id, status="canceled"))
            case "succeeded_then_refunded":
                changes.append(stripe_state.create_payment_intent(status="succeeded", **pi))
                changes.append(stripe_state.refund(p.id))
            case "succeeded_then_disputed":
                changes.append(stripe_state.create_payment_intent(status="succeeded", **pi))
                changes.append(stripe_state.open_dispute(p.id))
            case "succeeded_then_fraud_warning":
                changes.append(stripe_state.create_payment_intent(status="succeeded", **pi))
                changes.append(stripe_state.add_early_fraud_warning(p.id))
            case "absent":
                pass
            case other:  # pragma: no cover - a row names a case above
                raise AssertionError(other)
        if row.entry is not None:
            seed_entry(
                engine,
                p.id,
                entry_amount,
                p.currency,
                created=created,
                destination=f"wallet:{p.id}",
                # One source per currency: SqlLedger keeps one currency per balance name,
                # the indicator balances included (DESIGN.md has them once per currency).
                source=f"@stripe_{p.currency.lower()}",
                status=row.entry,
            )
        events[p.id] = [e for c in changes for e in c.events]
    return events


# -- the oracle ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndState:
    """What the campaign compares: the ledger per reference, the open tickets per payment."""

    ledger: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    tickets: dict[str, tuple[str, ...]] = field(default_factory=dict)


def expected(workload: Workload) -> EndState:
    ledger: dict[str, tuple[str, int, int]] = {}
    tickets: dict[str, tuple[str, ...]] = {}
    for p in workload.payments:
        row = ROWS[p.row]
        state = row.ledger(p.amount, p.received)
        if state is not None:
            ledger[p.id] = state
        if row.tickets:
            tickets[p.id] = tuple(sorted(row.tickets))
    return EndState(ledger, tickets)


def deliveries(
    workload: Workload, events: dict[str, list[dict[str, Any]]], *, faults: bool
) -> tuple[list[list[dict[str, Any]]], set[str]]:
    """The webhook deliveries, in sending order (each a group sent together), and the ids of
    the events never delivered.  Without faults: each event once, in the order it happened.
    With: 1-5 copies, shuffled, 10% never delivered; a race pair (the succeeded event and the
    refund) always delivered, together."""
    import random

    if not faults:
        ordered = sorted(
            (e for evs in events.values() for e in evs), key=lambda e: (e["created"], e["id"])
        )
        return [[e] for e in ordered], set()
    groups: list[list[dict[str, Any]]] = []
    dropped: set[str] = set()
    slot = 0
    for p in workload.payments:
        evs = events[p.id]
        if p.row == "race":
            pair = [e for e in evs if e["type"] in ("payment_intent.succeeded", "charge.refunded")]
            groups.append(pair)
            evs = [e for e in evs if e not in pair]
        for e in evs:
            i = slot % len(workload.copies)
            slot += 1
            if workload.dropped[i]:
                dropped.add(e["id"])
                continue
            groups.extend([e] for _ in range(workload.copies[i]))
    random.Random(workload.order_seed).shuffle(groups)
    return groups, dropped
