"""From a person to their payments: ``recon customer QUERY`` (and the CX console).

``lookup_customer`` answers from the customer index (reconcile/customers.py) and the ledger,
without calling Stripe: the customer's balances, their recent transactions newest first
(INFLIGHT ones with the last known Stripe state and their age), open and recent tickets,
and one line per pending payment saying what to tell the customer and what to do next.
``refresh=True`` re-reads Stripe for the pending payments and reconciles them through the
normal pipeline (recorded as a ``customer_refresh`` run), then answers again, keeping the
view from before so that :meth:`CustomerLookup.changes` can say what the refresh changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from ledger.model import Transaction, TxnStatus
from reconcile import customers, tickets
from reconcile.engine import Pass, linked_payment_id, load_adjustments
from reconcile.messages import (
    KIND_GUIDE,
    PENDING,
    CustomerState,
    customer_message,
    money_text,
)
from reconcile.model import PaymentStatus, Severity, TicketKind
from reconcile.ports import Services
from reconcile.runs import RunResult
from reconcile.stripe_gateway import StripeGateway
from reconcile.usecases.errors import BadRequest, NotFound
from reconcile.usecases.lifecycle import begin, end, fail

__all__ = [
    "Candidate",
    "CustomerLookup",
    "CustomerView",
    "PaymentChange",
    "PendingLine",
    "lookup_customer",
]

QUERY_MAX = 320


@dataclass(frozen=True)
class Candidate:
    customer_id: int
    name: str | None
    email: str | None
    stripe_customer: str | None
    balances: list[str]


@dataclass(frozen=True)
class BalanceLine:
    name: str
    currency: str
    balance: int
    inflight: int  # held for the customer, not yet theirs
    formatted: str
    inflight_formatted: str


@dataclass(frozen=True)
class TxnLine:
    reference: str
    payment_id: str
    status: str
    amount: int
    currency: str
    formatted: str
    committed_amount: int
    created_at: datetime
    age_seconds: int
    kind: str  # top-up | credit | reversal
    stripe_status: str | None  # last known; None: never read
    stripe_seen_at: datetime | None


@dataclass(frozen=True)
class TicketLine:
    id: int
    kind: str
    severity: str
    status: str
    payment_id: str
    opened_at: datetime
    age_seconds: int
    resolved_at: datetime | None
    resolution: str | None
    customer_message: str | None


@dataclass(frozen=True)
class PendingLine:
    """A payment the customer may be waiting on, and what to tell them."""

    payment_id: str
    amount: int | None
    currency: str | None
    formatted: str | None
    ledger_status: str | None  # INFLIGHT, or None when the ledger has no record
    stripe_status: str | None  # last known; None: never read
    stripe_seen_at: datetime | None
    payment_age_seconds: int | None
    state: str
    ticket_id: int | None
    ticket_kind: str | None
    message: str | None
    next_step: str


@dataclass(frozen=True)
class CustomerView:
    customer_id: int
    name: str | None
    email: str | None
    stripe_customer: str | None
    emails: list[str]
    balances: list[BalanceLine]
    transactions: list[TxnLine]
    tickets: list[TicketLine]
    pending: list[PendingLine]


@dataclass(frozen=True)
class PaymentChange:
    """One payment that was pending before a refresh: where it stood, where it stands now."""

    payment_id: str
    formatted: str | None
    ledger_before: str | None  # None: no ledger record
    ledger_after: str | None
    stripe_before: str | None  # None: never read
    stripe_after: str | None
    message_before: str | None
    message_after: str | None
    ticket_id: int | None
    ticket_status_before: str | None
    ticket_status_after: str | None

    @property
    def changed(self) -> bool:
        return (self.ledger_before, self.stripe_before, self.ticket_status_before) != (
            self.ledger_after,
            self.stripe_after,
            self.ticket_status_after,
        )


@dataclass(frozen=True)
class CustomerLookup:
    query: str
    matched_by: str  # email | name | payment | stripe customer | balance
    customer: CustomerView | None
    candidates: list[Candidate] = field(default_factory=list)
    refresh: RunResult | None = None
    before: CustomerView | None = None  # with refresh: the view before Stripe was re-read

    def changes(self) -> list[PaymentChange]:
        """What the refresh did to each payment that was pending before it (empty without a
        refresh)."""
        if self.before is None or self.customer is None:
            return []
        return [_change(p, self.customer) for p in self.before.pending]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["before"]
        out["changes"] = [asdict(c) | {"changed": c.changed} for c in self.changes()]
        if self.refresh is not None:
            r = self.refresh
            out["refresh"] = {
                "run_id": r.run_id,
                "status": r.status,
                "dry_run": r.dry_run,
                "counts": r.counts,
                "errors": r.errors,
                "plan": r.plan,
            }
        return out


def lookup_customer(
    svc: Services,
    query: str,
    refresh: bool = False,
    gateway: StripeGateway | None = None,
    *,
    actor: str = "system",
    dry_run: bool = False,
    limit: int = 20,
    trigger: str = "cli",
) -> CustomerLookup:
    """One customer (or the candidates) for an email, name, Stripe customer id, ledger
    balance id or PaymentIntent id.  NotFound when nothing matches."""
    q = query.strip()
    if not q:
        raise BadRequest("the query is empty: give an email, a name, cus_..., a balance or pi_...")
    if len(q) > QUERY_MAX:
        raise BadRequest(f"the query is longer than {QUERY_MAX} characters")
    if "\x00" in q:
        raise BadRequest("the query contains a NUL character")
    with svc.engine.connect() as conn:
        matched_by, ids = customers.find(conn, q)
        if not ids and matched_by == "payment":
            ids = _by_ledger_entry(svc, conn, q)
        if not ids:
            raise NotFound(f"no customer matches {q!r} (looked up as {matched_by})")
        if len(ids) > 1:
            return CustomerLookup(q, matched_by, None, _candidates(conn, ids))
        view = _view(svc, conn, ids[0], limit)
    if not refresh:
        return CustomerLookup(q, matched_by, view)
    before = view
    result = _refresh(svc, [p.payment_id for p in view.pending], gateway, actor, dry_run, trigger)
    with svc.engine.connect() as conn:
        view = _view(svc, conn, ids[0], limit)
    return CustomerLookup(q, matched_by, view, refresh=result, before=before)


def _change(p: PendingLine, after: CustomerView) -> PaymentChange:
    now_pending = next((x for x in after.pending if x.payment_id == p.payment_id), None)
    txn = next(
        (t for t in after.transactions if t.payment_id == p.payment_id and t.kind == "top-up"),
        None,
    )
    ticket = next((t for t in after.tickets if t.id == p.ticket_id), None)
    if now_pending is not None:
        ledger, stripe, message = (
            now_pending.ledger_status,
            now_pending.stripe_status,
            now_pending.message,
        )
    else:
        ledger = txn.status if txn is not None else p.ledger_status
        stripe = txn.stripe_status if txn is not None else p.stripe_status
        message = None
        if ticket is not None and ticket.status != tickets.OPEN:
            message = ticket.customer_message
        if message is None and ledger in _SETTLED:
            message = customer_message(PENDING, _SETTLED[ledger], p.amount, p.currency)
    return PaymentChange(
        payment_id=p.payment_id,
        formatted=p.formatted,
        ledger_before=p.ledger_status,
        ledger_after=ledger,
        stripe_before=p.stripe_status,
        stripe_after=stripe,
        message_before=p.message,
        message_after=message,
        ticket_id=p.ticket_id,
        ticket_status_before=tickets.OPEN if p.ticket_id is not None else None,
        ticket_status_after=ticket.status if ticket is not None else None,
    )


# What a settled ledger entry means to the customer.
_SETTLED = {
    TxnStatus.APPLIED.value: CustomerState.CREDITED,
    TxnStatus.VOID.value: CustomerState.VOIDED,
}


def _by_ledger_entry(svc: Services, conn: Connection, payment_id: str) -> list[int]:
    """A payment the index has not seen yet: whose balance does its ledger entry credit?"""
    txn = svc.ledger_for(conn).find_linked(payment_id)
    if txn is None:
        return []
    return customers.find(conn, txn.destination)[1]


def _candidates(conn: Connection, ids: Sequence[int]) -> list[Candidate]:
    out = []
    for row in customers.customer_rows(conn, ids):
        keys = customers.keys_of(conn, int(row["id"]))
        out.append(
            Candidate(
                int(row["id"]),
                row["name"],
                row["email"],
                row["stripe_customer"],
                keys.get(customers.BALANCE, []),
            )
        )
    return out


def _seconds(now: datetime, then: datetime | None) -> int | None:
    return None if then is None else max(0, int((now - then).total_seconds()))


def _state(row: Mapping[str, Any] | None) -> CustomerState | None:
    """The customer-facing state from the last known Stripe state (None: never read)."""
    if row is None or row.get("status") is None:
        return None
    if row.get("disputed"):
        return CustomerState.DISPUTED
    refunded = row.get("amount_refunded")
    if isinstance(refunded, int) and refunded > 0:
        return CustomerState.REFUNDED
    status = str(row["status"])
    if status == PaymentStatus.SUCCEEDED.value:
        return CustomerState.PAID
    if status == PaymentStatus.CANCELED.value or (
        status == PaymentStatus.REQUIRES_PAYMENT_METHOD.value and row.get("last_payment_error")
    ):
        return CustomerState.FAILED
    if status in (
        PaymentStatus.REQUIRES_ACTION.value,
        PaymentStatus.REQUIRES_CONFIRMATION.value,
        PaymentStatus.REQUIRES_PAYMENT_METHOD.value,
    ):
        return CustomerState.WAITING_ON_CUSTOMER
    return CustomerState.WAITING_ON_BANK


def _view(svc: Services, conn: Connection, cid: int, limit: int) -> CustomerView:
    now = svc.clock()
    ledger = svc.ledger_for(conn)
    (row,) = customers.customer_rows(conn, [cid])
    keys = customers.keys_of(conn, cid)
    balance_names = keys.get(customers.BALANCE, [])
    bals = ledger.get_balances(balance_names)
    recent: dict[str, Transaction] = {}
    for name in balance_names:
        for txn in ledger.recent_for_balance(name, limit):
            recent[txn.id] = txn
    seen = customers.payments_of(conn, cid)
    seen_ids = [str(p["payment_id"]) for p in seen]
    # Entries of payments the index knows but that no longer show among the recent ones
    # (an old stuck hold), so every pending payment gets its line.
    linked = ledger.find_linked_many(seen_ids)
    by_payment: dict[str, Transaction] = {linked_payment_id(t): t for t in recent.values()}
    for pid, txn in linked.items():
        by_payment.setdefault(pid, txn)
    adjustments = load_adjustments(ledger, by_payment)
    rows = customers.payment_rows(conn, list({*by_payment, *seen_ids}))
    all_pids = list({*by_payment, *seen_ids})
    ticket_rows = tickets.for_payments(conn, all_pids, limit=limit)
    open_by_pid: dict[str, dict[str, Any]] = {}
    for t in ticket_rows:
        if t["status"] == tickets.OPEN:
            best = open_by_pid.get(t["payment_id"])
            if best is None or int(t["severity"]) > int(best["severity"]):
                open_by_pid[t["payment_id"]] = t

    txn_lines = [
        _txn_line(t, "top-up", rows.get(linked_payment_id(t)), now)
        for t in sorted(recent.values(), key=lambda t: (t.created_at, t.id), reverse=True)
    ]
    for pid, adj in adjustments.items():
        for a in adj:
            if a.id not in recent:
                kind = "reversal" if a.reference.endswith(":reversal") else "credit"
                txn_lines.append(_txn_line(a, kind, rows.get(pid), now, payment_id=pid))
    txn_lines.sort(key=lambda t: t.created_at, reverse=True)

    pending_ids = [
        pid
        for pid in dict.fromkeys([*by_payment, *open_by_pid])
        if (by_payment.get(pid) is not None and by_payment[pid].status is TxnStatus.INFLIGHT)
        or pid in open_by_pid
    ]
    pending = [
        _pending_line(svc, pid, by_payment.get(pid), rows.get(pid), open_by_pid.get(pid), now)
        for pid in pending_ids
    ]
    pending.sort(key=lambda p: -(p.payment_age_seconds or 0))
    return CustomerView(
        customer_id=cid,
        name=row["name"],
        email=row["email"],
        stripe_customer=row["stripe_customer"],
        emails=keys.get(customers.EMAIL, []),
        balances=[
            BalanceLine(
                b.name,
                b.currency,
                b.balance,
                b.inflight_credit,
                money_text(b.balance, b.currency) or str(b.balance),
                money_text(b.inflight_credit, b.currency) or str(b.inflight_credit),
            )
            for b in bals
        ],
        transactions=txn_lines[:limit],
        tickets=[_ticket_line(t, now) for t in ticket_rows],
        pending=pending,
    )


def _txn_line(
    t: Transaction,
    kind: str,
    row: Mapping[str, Any] | None,
    now: datetime,
    *,
    payment_id: str | None = None,
) -> TxnLine:
    return TxnLine(
        reference=t.reference,
        payment_id=payment_id or linked_payment_id(t),
        status=t.status.value,
        amount=t.amount,
        currency=t.currency,
        formatted=money_text(t.amount, t.currency) or str(t.amount),
        committed_amount=t.committed_amount,
        created_at=t.created_at,
        age_seconds=_seconds(now, t.created_at) or 0,
        kind=kind,
        stripe_status=row.get("status") if row else None,
        stripe_seen_at=row.get("stripe_seen_at") if row else None,
    )


def _ticket_line(t: Mapping[str, Any], now: datetime) -> TicketLine:
    return TicketLine(
        id=int(t["id"]),
        kind=str(t["kind"]),
        severity=Severity(int(t["severity"])).label,
        status=str(t["status"]),
        payment_id=str(t["payment_id"]),
        opened_at=t["opened_at"],
        age_seconds=_seconds(now, t["opened_at"]) or 0,
        resolved_at=t["resolved_at"],
        resolution=t["resolution"],
        customer_message=t["customer_message"],
    )


_FIX_ACTION = {
    TicketKind.MISSING_RECORD.value: "create-record",
    TicketKind.PAID_BUT_VOIDED.value: "credit",
    TicketKind.CREDITED_BUT_FAILED.value: "reverse",
    TicketKind.REFUND_AFTER_CREDIT.value: "reverse",
    TicketKind.UNKNOWN_PAYMENT.value: "void",
}


def _next_step(
    svc: Services,
    pid: str,
    state: CustomerState | None,
    txn: Transaction | None,
    ticket: Mapping[str, Any] | None,
    age: int | None,
) -> str:
    inflight = txn is not None and txn.status is TxnStatus.INFLIGHT
    if ticket is not None and str(ticket["kind"]) in _FIX_ACTION:
        kind = str(ticket["kind"])
        return (
            f"recon tickets resolve {ticket['id']} --action {_FIX_ACTION[kind]} --note '...' "
            f"({KIND_GUIDE[TicketKind(kind)].what_happened})"
        )
    if state is None:
        return "not read from Stripe yet: --refresh reads it now"
    if state is CustomerState.PAID and inflight:
        return "Stripe says paid: --refresh credits the wallet now (or recon payment PI)"
    if state is CustomerState.FAILED and inflight:
        grace = int(svc.policy.failed_grace.total_seconds())
        if age is not None and age <= grace:
            return (
                f"failed; the customer may retry (the hold is released automatically after "
                f"the {grace // 60} min grace). To release it now: recon ledger void {pid} "
                "--note '...'"
            )
        return "failed past the grace period: --refresh releases the hold"
    if state is CustomerState.WAITING_ON_CUSTOMER:
        return "the customer must approve the payment with their bank (3-D Secure) or pay again"
    if state is CustomerState.WAITING_ON_BANK:
        return "waiting on the bank; --refresh re-checks"
    if ticket is not None:
        guide = KIND_GUIDE[TicketKind(str(ticket["kind"]))]
        return f"ticket {ticket['id']}: {guide.fix}"
    return "--refresh re-checks it on Stripe"


def _pending_line(
    svc: Services,
    pid: str,
    txn: Transaction | None,
    row: Mapping[str, Any] | None,
    ticket: Mapping[str, Any] | None,
    now: datetime,
) -> PendingLine:
    state = _state(row)
    amount = txn.amount if txn is not None else (row.get("amount") if row else None)
    currency = txn.currency if txn is not None else (row.get("currency") if row else None)
    created = (row.get("created") if row else None) or (txn.created_at if txn else None)
    age = _seconds(now, created)
    topic = str(ticket["kind"]) if ticket is not None else PENDING
    message = customer_message(topic, state, amount, currency) if state is not None else None
    return PendingLine(
        payment_id=pid,
        amount=amount,
        currency=currency,
        formatted=money_text(amount, currency),
        ledger_status=txn.status.value if txn is not None else None,
        stripe_status=row.get("status") if row else None,
        stripe_seen_at=row.get("stripe_seen_at") if row else None,
        payment_age_seconds=age,
        state=state.value if state is not None else "unknown",
        ticket_id=int(ticket["id"]) if ticket is not None else None,
        ticket_kind=topic if ticket is not None else None,
        message=message,
        next_step=_next_step(svc, pid, state, txn, ticket, age),
    )


def _refresh(
    svc: Services,
    payment_ids: Sequence[str],
    gateway: StripeGateway | None,
    actor: str,
    dry_run: bool,
    trigger: str,
) -> RunResult:
    """Re-read Stripe for these payments and reconcile them, as one recorded run."""
    gw = gateway or svc.new_gateway()
    state = begin(
        svc,
        "customer_refresh",
        trigger,
        actor,
        dry_run,
        params={"payments": list(payment_ids)[:100]},
    )
    p = Pass(svc, run=state, actor=actor, dry_run=dry_run, guarded=False)
    try:
        for pid in payment_ids:
            p.apply(pid, gw.retrieve(pid))
    except BaseException as exc:
        fail(svc, state, gw, exc)
        raise
    return end(svc, state, gw, p)
