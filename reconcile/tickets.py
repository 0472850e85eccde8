"""Discrepancy tickets and their deliveries: every statement on ``recon_tickets`` and
``recon_ticket_deliveries``.

One open ticket per (kind, payment), with what a CX agent needs; a delivery (outbox) row
per configured sink, queued in the transaction that opens or escalates the ticket and
drained by worker/sinks.py, which only formats and sends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, update
from sqlalchemy.exc import IntegrityError

from ledger.money import Money
from reconcile.model import (
    DisputeStatus,
    Entry,
    Payment,
    PaymentStatus,
    Severity,
    TicketKind,
    TicketSpec,
)
from reconcile.tables import deliveries, tickets

OPEN = "open"
RESOLVED = "resolved"

DELIVERY_PENDING = "pending"
DELIVERY_DELIVERED = "delivered"
DELIVERY_FAILED = "failed"

EVENT_OPENED = "ticket.opened"
EVENT_ESCALATED = "ticket.escalated"

_FIXES: dict[TicketKind, str] = {
    TicketKind.AMOUNT_MISMATCH: (
        "Compare the amount Stripe received with the ledger entry. If the customer paid less "
        "(partial capture), the received amount was credited and the rest released: tell the "
        "customer. Otherwise correct the ledger entry by hand, then `recon tickets resolve ID "
        "--action none --note ...`."
    ),
    TicketKind.STUCK_PAYMENT: (
        "The payment has not settled within the SLA. Check the PaymentIntent in the Stripe "
        "dashboard (bank transfer? 3-D Secure never completed?). Nothing to do in the ledger "
        "until it settles; `recon payment PI_ID` re-checks it."
    ),
    TicketKind.UNKNOWN_PAYMENT: (
        "Stripe has no such PaymentIntent. Check the reference belongs to this Stripe account "
        "(live vs test). If the top-up never reached Stripe, void the hold: `recon tickets "
        "resolve ID --action void --note ...`."
    ),
    TicketKind.MISSING_RECORD: (
        "The customer paid on Stripe but the ledger has no record: credit them with `recon "
        "tickets resolve ID --action create-record --note ...` (needs the destination balance "
        "in the PaymentIntent metadata `ledger_destination`), or create the entry by hand."
    ),
    TicketKind.CREDITED_BUT_FAILED: (
        "The wallet was credited but the payment failed or was canceled on Stripe: the money "
        "never arrived. Reverse the credit by hand (a reversal transaction) and contact the "
        "customer before they spend it."
    ),
    TicketKind.PAID_BUT_VOIDED: (
        "The customer paid but the ledger hold was voided, so the wallet was never credited. "
        "Credit the customer with a new transaction (or refund them on Stripe)."
    ),
    TicketKind.REFUND_AFTER_CREDIT: (
        "The payment was refunded after the wallet was credited. Decide whether to post a "
        "reversal for the refunded amount; the ledger was not changed automatically."
    ),
    TicketKind.DISPUTE_OPENED: (
        "The customer disputed the payment after it was credited. Submit evidence in the "
        "Stripe dashboard before the deadline and consider holding the balance."
    ),
    TicketKind.FRAUD_WARNING: (
        "Stripe's Radar issued an early fraud warning on a payment that was credited: the "
        "card issuer reports it as fraud, and a dispute usually follows. Consider refunding "
        "it on Stripe before the dispute (a refund avoids the dispute fee) and reverse the "
        "credit; then `recon tickets resolve ID --action none --note ...`."
    ),
    TicketKind.UNVERIFIABLE_PAYMENT: (
        "Stripe's data for this payment lacks a field the decision needs (received amount, "
        "currency, status) or carries a malformed one, so nothing was changed. Check the "
        "payment in the Stripe dashboard and the API version of the webhook endpoint, then "
        "`recon payment PI_ID --dry-run` to re-read it."
    ),
    TicketKind.INCIDENT: (
        "A run stopped itself because it would have changed far more entries than usual. "
        "Check STRIPE_API_KEY points at the right account and Stripe's status page, then "
        "rerun with `recon rerun RUN_ID --dry-run` and compare."
    ),
}


def customer_message(payment: Payment | None, amount: Money | None) -> str | None:
    what = f"your top-up of {amount.format()}" if amount else "your top-up"
    if payment is None:
        return None
    if payment.status is PaymentStatus.SUCCEEDED:
        return f"We received {what}. Your wallet will update shortly; no need to pay again."
    if payment.status is PaymentStatus.CANCELED or payment.last_payment_error:
        return (
            f"The payment for {what} did not go through. Nothing was taken, or any amount held "
            "by your bank will be returned within a few days."
        )
    return (
        f"The payment for {what} is still being confirmed by your bank. We will update your "
        "wallet as soon as it clears; no need to pay again."
    )


def dashboard_url(base: str, payment_id: str, livemode: bool) -> str:
    if payment_id.startswith("pi_"):
        return f"{base.rstrip('/')}/{'' if livemode else 'test/'}payments/{payment_id}"
    return f"{base.rstrip('/')}/{'' if livemode else 'test/'}search?query={payment_id}"


def payment_state(payment: Payment | None) -> dict[str, Any] | None:
    if payment is None:
        return {"found": False}
    return {
        "found": True,
        "id": payment.id,
        "status": payment.status.value if payment.status else None,
        "amount": payment.amount,
        "amount_received": payment.amount_received,
        "currency": payment.currency,
        "created": payment.created.isoformat() if payment.created else None,
        "last_payment_error": payment.last_payment_error,
        "charge_failed": payment.charge_failed,
        "charge_failure_code": payment.charge_failure_code,
        "payment_method_type": payment.payment_method_type,
        "amount_refunded": payment.amount_refunded,
        "disputed": payment.disputed,
        "disputes": None
        if payment.disputes is None
        else [
            {
                "id": d.id,
                "status": d.status.value if d.status else "unknown",
                "amount": d.amount,
                "currency": d.currency,
                "reason": d.reason,
                "evidence_due_by": d.evidence_due_by.isoformat() if d.evidence_due_by else None,
            }
            for d in payment.disputes
        ],
        "fraud_warnings": None
        if payment.fraud_warnings is None
        else [{"id": w.id, "fraud_type": w.fraud_type} for w in payment.fraud_warnings],
        "customer": payment.customer,
        "livemode": payment.livemode,
        "problems": list(payment.problems),
    }


def _dispute_line(payment: Payment) -> str:
    """The disputes a person must know about, with what is at stake and by when."""
    parts = []
    for d in payment.disputes or ():
        money = Money(d.amount, d.currency).format() if d.amount is not None and d.currency else ""
        status = d.status.value if d.status else "unknown status"
        text = f"dispute {d.id} {status}"
        if money:
            text += f" ({money} {'withdrawn' if d.status is DisputeStatus.LOST else 'at stake'})"
        if d.reason:
            text += f", reason {d.reason}"
        if d.evidence_due_by and d.open:
            text += f", evidence due {d.evidence_due_by.isoformat(timespec='minutes')}"
        parts.append(text)
    return "; ".join(parts)


def entry_state(entry: Entry | None) -> dict[str, Any] | None:
    if entry is None:
        return {"found": False}
    return {
        "found": True,
        "reference": entry.reference,
        "status": entry.status.value,
        "amount": entry.amount,
        "committed_amount": entry.committed_amount,
        "voided_amount": entry.voided_amount,
        "currency": entry.currency,
        "source": entry.source,
        "destination": entry.destination,
        "created_at": entry.created_at.isoformat(),
    }


@dataclass(frozen=True)
class TicketFacts:
    """Everything a ticket records about one discrepancy."""

    payment_id: str
    payment: Payment | None
    entry: Entry | None
    reason: str
    now: datetime
    dashboard_base: str = "https://dashboard.stripe.com"
    summary: str | None = None

    def values(self, spec: TicketSpec) -> dict[str, Any]:
        p, e = self.payment, self.entry
        currency = (p.currency if p else None) or (e.currency if e else None)
        amount = (
            (p.amount_received if p.amount_received is not None else p.amount)
            if p
            else (e.amount if e else None)
        )
        money = Money(amount, currency) if amount is not None and currency else None
        age_from = e.created_at if e else (p.created if p else None)
        age = f"{int((self.now - age_from).total_seconds() // 60)} min" if age_from else "?"
        ledger_says = (
            f"{e.status.value} {Money(e.amount, e.currency).format()}" if e else "has no record"
        )
        stripe_says = "not found on Stripe"
        if p:
            stripe_says = p.status.value if p.status else "of unknown status"
        summary = self.summary or (
            f"{spec.kind.value}: payment {self.payment_id} is "
            f"{stripe_says}; ledger {ledger_says}"
            f"{' (Stripe: ' + money.format() + ')' if money and p else ''}; age {age}"
        )
        if p and spec.kind is TicketKind.DISPUTE_OPENED and p.disputes:
            summary += f"; {_dispute_line(p)}"
        if p and p.fraud_warnings:
            kinds = ", ".join(w.fraud_type or "unspecified" for w in p.fraud_warnings)
            summary += f"; early fraud warning ({kinds})"
        if p and p.problems:
            summary += "; Stripe's data: " + "; ".join(p.problems[:5])
        return {
            "kind": spec.kind.value,
            "severity": int(spec.severity),
            "payment_id": self.payment_id,
            "reference": e.reference if e else None,
            "customer": p.customer if p else (e.metadata.get("customer") if e else None),
            "customer_email": p.customer_email if p else None,
            "balance": e.destination
            if e
            else (p.metadata.get("ledger_destination") if p else None),
            "amount": amount,
            "currency": currency,
            "stripe_state": payment_state(p),
            "ledger_state": entry_state(e),
            "reason": self.reason,
            "summary": summary,
            "suggested_fix": _FIXES[spec.kind],
            "customer_message": customer_message(p, money),
            "dashboard_url": (
                dashboard_url(self.dashboard_base, self.payment_id, p.livemode if p else False)
                if spec.kind is not TicketKind.INCIDENT
                else None
            ),
        }


@dataclass(frozen=True)
class Raised:
    ticket_id: int
    new: bool
    severity_raised: bool


def raise_ticket(
    conn: Connection,
    spec: TicketSpec,
    facts: TicketFacts,
    *,
    run_id: int | None,
    sinks: Sequence[str] = (),
) -> Raised:
    """Open a ticket, or bump the open one for the same (kind, payment)."""
    values = facts.values(spec)
    for _ in range(2):
        row = (
            conn.execute(
                select(tickets.c.id, tickets.c.severity)
                .where(
                    tickets.c.kind == spec.kind.value,
                    tickets.c.payment_id == facts.payment_id,
                    tickets.c.status == OPEN,
                )
                .with_for_update()
            )
            .mappings()
            .first()
        )
        if row is not None:
            raised = int(spec.severity) > int(row["severity"])
            conn.execute(
                update(tickets)
                .where(tickets.c.id == row["id"])
                .values(
                    occurrences=tickets.c.occurrences + 1,
                    last_seen_at=facts.now,
                    severity=max(int(spec.severity), int(row["severity"])),
                    stripe_state=values["stripe_state"],
                    ledger_state=values["ledger_state"],
                    summary=values["summary"],
                )
            )
            if raised:
                _queue_delivery(conn, int(row["id"]), int(spec.severity), sinks, facts.now)
            return Raised(int(row["id"]), new=False, severity_raised=raised)
        # Two workers may find no open ticket at once; the partial unique index lets only one
        # insert win and the loser goes round again and bumps the winner's ticket.
        savepoint = conn.begin_nested()
        try:
            ticket_id = conn.execute(
                tickets.insert()
                .values(
                    **values,
                    status=OPEN,
                    occurrences=1,
                    run_id=run_id,
                    opened_at=facts.now,
                    last_seen_at=facts.now,
                )
                .returning(tickets.c.id)
            ).scalar_one()
        except IntegrityError:
            savepoint.rollback()
            continue
        savepoint.commit()
        _queue_delivery(conn, int(ticket_id), int(spec.severity), sinks, facts.now)
        return Raised(int(ticket_id), new=True, severity_raised=False)
    raise RuntimeError(f"could not open or find the {spec.kind} ticket for {facts.payment_id}")


def _queue_delivery(
    conn: Connection, ticket_id: int, severity: int, sinks: Sequence[str], now: datetime
) -> None:
    # An outbox row in the same transaction as the ticket: delivery happens later, never
    # blocks reconciliation, and a ticket is never opened without its delivery queued.
    for sink in sinks:
        conn.execute(
            deliveries.insert().values(
                ticket_id=ticket_id,
                sink=sink,
                severity=severity,
                status=DELIVERY_PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )


def resolve_open(
    conn: Connection,
    payment_id: str,
    *,
    reason: str,
    by: str,
    now: datetime,
    keep: Iterable[TicketKind] = (),
) -> list[int]:
    """Close every open ticket of this payment but those of ``keep``'s kinds: it is
    reconciled now, as far as what was read can tell."""
    where = [tickets.c.payment_id == payment_id, tickets.c.status == OPEN]
    kept = sorted(k.value for k in keep)
    if kept:
        where.append(tickets.c.kind.not_in(kept))
    ids = [int(i) for i in conn.execute(select(tickets.c.id).where(*where)).scalars()]
    if ids:
        conn.execute(
            update(tickets)
            .where(tickets.c.id.in_(ids))
            .values(status=RESOLVED, resolved_at=now, resolved_by=by, resolution=reason)
        )
    return ids


def open_kinds(conn: Connection, payment_ids: Sequence[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for start in range(0, len(payment_ids), 500):
        chunk = list(payment_ids[start : start + 500])
        rows = conn.execute(
            select(tickets.c.payment_id, tickets.c.kind).where(
                tickets.c.payment_id.in_(chunk), tickets.c.status == OPEN
            )
        )
        for pid, kind in rows:
            out.setdefault(pid, set()).add(kind)
    return out


def get_ticket(conn: Connection, ticket_id: int, *, lock: bool = False) -> dict[str, Any] | None:
    """One ticket as a dict; ``lock`` holds its row until the caller's transaction ends."""
    stmt = select(tickets).where(tickets.c.id == ticket_id)
    if lock:
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).mappings().first()
    return dict(row) if row else None


def close_ticket(conn: Connection, ticket_id: int, *, by: str, note: str, now: datetime) -> None:
    conn.execute(
        update(tickets)
        .where(tickets.c.id == ticket_id)
        .values(status=RESOLVED, resolved_at=now, resolved_by=by, resolution=note)
    )


# --------------------------------------------------------------------------- deliveries


@dataclass(frozen=True)
class DeliveryClaim:
    id: int
    sink: str
    severity: int
    attempts: int  # including this one
    event: str  # EVENT_OPENED for a ticket's first delivery to a sink, else EVENT_ESCALATED
    ticket: Mapping[str, Any]


def claim_deliveries(
    conn: Connection, *, now: datetime, limit: int, lease_until: datetime
) -> list[DeliveryClaim]:
    """Take up to ``limit`` due deliveries: each attempt is counted and the row is leased
    (``next_attempt_at`` pushed to ``lease_until``) so a second deliverer skips it."""
    due = (
        select(deliveries.c.id)
        .where(deliveries.c.status == DELIVERY_PENDING, deliveries.c.next_attempt_at <= now)
        .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
        .limit(limit)
        # SKIP LOCKED: a second worker takes other rows instead of waiting for these.
        # SQLite ignores it; its write lock (BEGIN IMMEDIATE) serialises claims anyway.
        .with_for_update(skip_locked=True)
    )
    rows = (
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id.in_(due.scalar_subquery()))
            # Counting the attempt at claim time means a row that crashes the worker
            # still runs out of attempts instead of being retried for ever.
            .values(attempts=deliveries.c.attempts + 1, next_attempt_at=lease_until)
            .returning(
                deliveries.c.id,
                deliveries.c.ticket_id,
                deliveries.c.sink,
                deliveries.c.severity,
                deliveries.c.attempts,
            )
        )
        .mappings()
        .all()
    )
    if not rows:
        return []
    ticket_ids = sorted({int(r["ticket_id"]) for r in rows})
    # Plain reads: reconciliation may be updating these tickets and must not wait on us.
    by_id = {
        int(t["id"]): dict(t)
        for t in conn.execute(select(tickets).where(tickets.c.id.in_(ticket_ids))).mappings()
    }
    first = {
        (int(tid), str(sink)): int(first_id)
        for tid, sink, first_id in conn.execute(
            select(deliveries.c.ticket_id, deliveries.c.sink, func.min(deliveries.c.id))
            .where(deliveries.c.ticket_id.in_(ticket_ids))
            .group_by(deliveries.c.ticket_id, deliveries.c.sink)
        )
    }
    claims = []
    for r in sorted(rows, key=lambda r: int(r["id"])):
        tid, sink = int(r["ticket_id"]), str(r["sink"])
        claims.append(
            DeliveryClaim(
                id=int(r["id"]),
                sink=sink,
                severity=int(r["severity"]),
                attempts=int(r["attempts"]),
                event=EVENT_OPENED if first.get((tid, sink)) == int(r["id"]) else EVENT_ESCALATED,
                ticket=by_id[tid],
            )
        )
    return claims


def mark_delivered(conn: Connection, claim: DeliveryClaim, now: datetime) -> None:
    conn.execute(
        update(deliveries)
        .where(deliveries.c.id == claim.id, deliveries.c.status == DELIVERY_PENDING)
        .values(status=DELIVERY_DELIVERED, delivered_at=now, last_error=None)
    )


def mark_delivery_failed(
    conn: Connection, claim: DeliveryClaim, *, error: str, next_attempt_at: datetime, give_up: bool
) -> None:
    """A failed attempt: tried again at ``next_attempt_at``, or given up for good."""
    conn.execute(
        update(deliveries)
        # ``attempts`` unchanged since our claim: nobody re-claimed it after the lease.
        .where(
            deliveries.c.id == claim.id,
            deliveries.c.status == DELIVERY_PENDING,
            deliveries.c.attempts == claim.attempts,
        )
        .values(
            status=DELIVERY_FAILED if give_up else DELIVERY_PENDING,
            last_error=error,
            next_attempt_at=next_attempt_at,
        )
    )


def requeue_failed_deliveries(
    conn: Connection, *, now: datetime, ids: Iterable[int] | None = None
) -> int:
    stmt = update(deliveries).where(deliveries.c.status == DELIVERY_FAILED)
    if ids is not None:
        stmt = stmt.where(deliveries.c.id.in_(list(ids)))
    result = conn.execute(stmt.values(status=DELIVERY_PENDING, attempts=0, next_attempt_at=now))
    return int(result.rowcount or 0)


def severity_label(value: int) -> str:
    return Severity(value).label
