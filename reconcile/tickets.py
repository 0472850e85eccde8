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
from urllib.parse import quote

from sqlalchemy import Connection, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from ledger.money import Money
from reconcile.messages import (
    KIND_GUIDE,
    CustomerState,
    customer_message,
    open_state,
    resolved_state,
)
from reconcile.model import (
    DisputeStatus,
    Entry,
    Payment,
    PaymentStatus,
    Severity,
    TicketKind,
    TicketSpec,
)
from reconcile.tables import customer_updates, deliveries, tickets

OPEN = "open"
RESOLVED = "resolved"

DELIVERY_PENDING = "pending"
DELIVERY_DELIVERED = "delivered"
DELIVERY_FAILED = "failed"

EVENT_OPENED = "ticket.opened"
EVENT_ESCALATED = "ticket.escalated"
EVENT_CUSTOMER_UPDATE = "customer.update"
CUSTOMER_UPDATE_SINK = "webhook"  # the application's endpoint; never Slack (it is personal)


def _message_amount(kind: TicketKind, payment: Payment | None) -> int | None:
    """The amount the customer's message is about (None: the ticket's own amount)."""
    if payment is None:
        return None
    if kind is TicketKind.REFUND_AFTER_CREDIT and payment.amount_refunded:
        return payment.amount_refunded
    if kind is TicketKind.AMOUNT_MISMATCH:
        return payment.amount  # what they meant to top up; the message says less arrived
    return None


def _cut(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dashboard_url(base: str, payment_id: str, livemode: bool) -> str:
    # Encoded: a ledger reference ("pi_a/../b", "x?y=1") is data, not part of the URL.
    pid = quote(payment_id, safe="")
    if payment_id.startswith("pi_"):
        return f"{base.rstrip('/')}/{'' if livemode else 'test/'}payments/{pid}"
    return f"{base.rstrip('/')}/{'' if livemode else 'test/'}search?query={pid}"


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


def _stripe_status(payment: Payment | None) -> str:
    if payment is None:
        return "not found on Stripe"
    return payment.status.value if payment.status else "of unknown status"


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
        amount: int | None = e.amount if e else None
        if p is not None:
            # What arrived once it succeeded; before that, what the customer meant to pay.
            paid = p.status is PaymentStatus.SUCCEEDED and p.amount_received is not None
            amount = p.amount_received if paid else (p.amount if p.amount is not None else amount)
        money = Money(amount, currency) if amount is not None and currency else None
        age_from = e.created_at if e else (p.created if p else None)
        age = f"{int((self.now - age_from).total_seconds() // 60)} min" if age_from else "?"
        ledger_says = (
            f"{e.status.value} {Money(e.amount, e.currency).format()}" if e else "has no record"
        )
        summary = self.summary or (
            f"{spec.kind.value}: payment {self.payment_id} is "
            f"{_stripe_status(p)}; ledger {ledger_says}"
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
            # Cut to the columns' sizes: text from Stripe or metadata longer than a column
            # must not fail the insert of the ticket that tells a person about the payment.
            "customer": _cut(p.customer if p else (e.metadata.get("customer") if e else None), 255),
            "customer_email": _cut(p.customer_email if p else None, 320),
            "balance": _cut(
                e.destination if e else (p.metadata.get("ledger_destination") if p else None),
                200,
            ),
            "amount": amount,
            "currency": currency,
            "stripe_state": payment_state(p),
            "ledger_state": entry_state(e),
            "reason": self.reason,
            "summary": summary,
            "suggested_fix": KIND_GUIDE[spec.kind].suggested_fix,
            "customer_message": customer_message(
                spec.kind.value,
                open_state(p) if p is not None or e is not None else CustomerState.CLOSED,
                _message_amount(spec.kind, p) or amount,
                currency,
            ),
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
    action: str = "matched",
    payment: Payment | None = None,
) -> list[int]:
    """Close every open ticket of this payment but those of ``keep``'s kinds: it is
    reconciled now, as far as what was read can tell.

    ``action`` is what the pass did (commit, void, matched...): each ticket's customer
    message moves on to the resolved one.

    A ``duplicate_entry`` ticket is never closed this way: it is about a second entry of
    the payment, which reconciling the payment (through its own entry) does not settle.
    """
    where = [tickets.c.payment_id == payment_id, tickets.c.status == OPEN]
    kept = sorted({k.value for k in keep} | {TicketKind.DUPLICATE_ENTRY.value})
    if kept:
        where.append(tickets.c.kind.not_in(kept))
    rows = conn.execute(
        select(tickets.c.id, tickets.c.kind, tickets.c.amount, tickets.c.currency).where(*where)
    ).all()
    state = resolved_state(action, payment)
    for tid, kind, amount, currency in rows:
        conn.execute(
            update(tickets)
            .where(tickets.c.id == tid)
            .values(
                status=RESOLVED,
                resolved_at=now,
                resolved_by=by,
                resolution=reason,
                customer_message=customer_message(kind, state, amount, currency),
            )
        )
    return [int(r[0]) for r in rows]


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


def close_ticket(
    conn: Connection,
    ticket_id: int,
    *,
    by: str,
    note: str,
    now: datetime,
    state: CustomerState = CustomerState.CLOSED,
) -> str | None:
    """Resolve one ticket by hand; its customer message becomes the one for ``state``."""
    row = conn.execute(
        select(tickets.c.kind, tickets.c.amount, tickets.c.currency).where(
            tickets.c.id == ticket_id
        )
    ).first()
    message = customer_message(row[0], state, row[1], row[2]) if row is not None else None
    conn.execute(
        update(tickets)
        .where(tickets.c.id == ticket_id)
        .values(
            status=RESOLVED,
            resolved_at=now,
            resolved_by=by,
            resolution=note,
            customer_message=message,
        )
    )
    return message


# --------------------------------------------------------------------------- deliveries


@dataclass(frozen=True)
class DeliveryClaim:
    id: int
    sink: str
    severity: int
    attempts: int  # including this one
    event: str  # EVENT_OPENED for a ticket's first delivery to a sink, else EVENT_ESCALATED
    ticket: Mapping[str, Any]  # the ticket, or the customer update row
    kind: str = "ticket"  # or "customer_update"


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


def _outbox(claim: DeliveryClaim) -> Any:
    return customer_updates if claim.kind == "customer_update" else deliveries


def mark_delivered(conn: Connection, claim: DeliveryClaim, now: datetime) -> None:
    table = _outbox(claim)
    conn.execute(
        update(table)
        .where(table.c.id == claim.id, table.c.status == DELIVERY_PENDING)
        .values(status=DELIVERY_DELIVERED, delivered_at=now, last_error=None)
    )


def mark_delivery_failed(
    conn: Connection, claim: DeliveryClaim, *, error: str, next_attempt_at: datetime, give_up: bool
) -> None:
    """A failed attempt: tried again at ``next_attempt_at``, or given up for good."""
    table = _outbox(claim)
    conn.execute(
        update(table)
        # ``attempts`` unchanged since our claim: nobody re-claimed it after the lease.
        .where(
            table.c.id == claim.id,
            table.c.status == DELIVERY_PENDING,
            table.c.attempts == claim.attempts,
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


def for_payments(
    conn: Connection, payment_ids: Sequence[str], *, limit: int = 20
) -> list[dict[str, Any]]:
    """Tickets of these payments: open ones first (most severe), then the latest resolved."""
    if not payment_ids:
        return []
    out: list[dict[str, Any]] = []
    for start in range(0, len(payment_ids), 500):
        chunk = list(payment_ids[start : start + 500])
        rows = conn.execute(
            select(tickets).where(tickets.c.payment_id.in_(chunk)).order_by(tickets.c.id.desc())
        ).mappings()
        out.extend(dict(r) for r in rows)
    out.sort(key=lambda t: (t["status"] != OPEN, -int(t["severity"]), -int(t["id"])))
    return out[:limit]


# --------------------------------------------------------------------------- customer updates


@dataclass(frozen=True)
class CustomerChange:
    """Something a customer may be waiting to hear about, and what to tell them."""

    payment_id: str
    change: str  # credited | voided | reversed | dispute_opened | refund_after_credit
    message: str | None
    amount: int | None
    currency: str | None
    ticket_id: int | None = None
    customer: str | None = None
    customer_email: str | None = None
    customer_name: str | None = None
    balance: str | None = None

    @property
    def key(self) -> str:
        return f"{self.payment_id}:{self.change}"


def queue_customer_update(conn: Connection, change: CustomerChange, now: datetime) -> bool:
    """Queue a customer.update on the caller's transaction; False when this change was
    queued before (so it is never sent twice)."""
    insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
    result = conn.execute(
        insert(customer_updates)
        .values(
            change_key=change.key[:300],
            change=change.change,
            payment_id=change.payment_id,
            ticket_id=change.ticket_id,
            customer=change.customer,
            customer_email=change.customer_email,
            customer_name=change.customer_name,
            balance=change.balance,
            amount=change.amount,
            currency=change.currency,
            message=change.message,
            status=DELIVERY_PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["change_key"])
    )
    return bool(result.rowcount)


def claim_customer_updates(
    conn: Connection, *, now: datetime, limit: int, lease_until: datetime
) -> list[DeliveryClaim]:
    """Due customer updates, claimed like ticket deliveries (attempt counted, row leased)."""
    cu = customer_updates.c
    due = (
        select(cu.id)
        .where(cu.status == DELIVERY_PENDING, cu.next_attempt_at <= now)
        .order_by(cu.next_attempt_at, cu.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = (
        conn.execute(
            update(customer_updates)
            .where(cu.id.in_(due.scalar_subquery()))
            .values(attempts=cu.attempts + 1, next_attempt_at=lease_until)
            .returning(*customer_updates.c)
        )
        .mappings()
        .all()
    )
    return [
        DeliveryClaim(
            id=int(r["id"]),
            sink=CUSTOMER_UPDATE_SINK,
            severity=0,
            attempts=int(r["attempts"]),
            event=EVENT_CUSTOMER_UPDATE,
            ticket=dict(r),
            kind="customer_update",
        )
        for r in sorted(rows, key=lambda r: int(r["id"]))
    ]
