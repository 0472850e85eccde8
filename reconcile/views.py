"""Read-only views for people: listings and reports as plain values (dicts, dataclasses of
str/int/datetime), so a web page or a terminal table can show them without knowing a table or
a query.

The one module besides the table owners (inbox, runs, tickets) that reads the ``recon_*``
tables, and it only reads (tests/unit/test_structure.py holds it to that).  The CLI and the
console format what these return; neither holds SQL of its own.  Every function takes the
caller's connection.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, RowMapping, case, desc, func, or_, select

from ledger.errors import InvalidAmount, UnknownCurrency
from ledger.money import Money
from reconcile.messages import KIND_GUIDE
from reconcile.model import Severity, TicketKind
from reconcile.tables import audit, inbox, runs, tickets
from reconcile.tickets import OPEN

# The fixes a person may try from a ticket of each kind, in the order they are offered: the
# CX guide's table (reconcile/messages.py), so the console and the README never disagree.
# Each is still checked against Stripe when it runs; "none" closes the ticket with a note.
FIX_ACTIONS: Mapping[str, tuple[str, ...]] = {
    kind.value: guide.actions for kind, guide in KIND_GUIDE.items()
}

KINDS: tuple[str, ...] = tuple(k.value for k in TicketKind)
SEVERITIES: tuple[str, ...] = tuple(s.label for s in sorted(Severity, reverse=True))
_AMOUNT_KEYS = frozenset(
    {"amount", "amount_received", "amount_refunded", "committed_amount", "voided_amount"}
)
_TIME_KEYS = frozenset({"created", "created_at"})
SEARCH_MAX = 200  # characters; longer is not an id, an email or a name


def money_text(amount: int | None, currency: str | None) -> str | None:
    """``2,000.00 USD``; None when either half is unknown (absent is not zero)."""
    if amount is None or not currency or isinstance(amount, bool) or not isinstance(amount, int):
        return None
    try:
        return Money(amount, currency).format()
    except (UnknownCurrency, InvalidAmount):
        return f"{amount} {currency} (minor units, unknown currency)"


def severity_name(value: int) -> str:
    try:
        return Severity(value).label
    except ValueError:
        return str(value)


def fix_actions(kind: str, status: str) -> tuple[str, ...]:
    if status != OPEN:
        return ()
    return FIX_ACTIONS.get(kind, ("none",))


@dataclass(frozen=True)
class TicketRow:
    id: int
    kind: str
    severity: str
    severity_level: int
    status: str
    payment_id: str
    customer: str | None
    customer_email: str | None
    balance: str | None
    amount: str | None
    summary: str
    occurrences: int
    opened_at: datetime
    waited: timedelta  # since it was opened (until it was resolved, for a closed one)


@dataclass(frozen=True)
class AuditRow:
    at: datetime
    action: str
    amount: str | None
    reason: str
    actor: str
    run_id: int | None
    note: str | None


@dataclass(frozen=True)
class TicketDetail:
    ticket: TicketRow
    reference: str | None
    reason: str
    stripe_state: list[tuple[str, str]] | None  # None: Stripe had no such object
    ledger_state: list[tuple[str, str]] | None  # None: the ledger had no entry
    last_seen_at: datetime
    dashboard_url: str | None
    suggested_fix: str
    customer_message: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None
    run_id: int | None
    history: list[AuditRow]
    actions: tuple[str, ...]


@dataclass(frozen=True)
class DailyCounts:
    """Tickets opened per kind per day, oldest day first; every day present, zeros too."""

    days: list[date]
    counts: dict[str, list[int]]  # kind -> one count per day, only kinds seen

    @property
    def per_day(self) -> list[int]:
        return [sum(c[i] for c in self.counts.values()) for i in range(len(self.days))]

    @property
    def peak_day(self) -> int:
        return max(self.per_day, default=0)

    @property
    def total(self) -> int:
        return sum(sum(per_day) for per_day in self.counts.values())


@dataclass(frozen=True)
class SearchResult:
    query: str
    looks_like: str  # ticket | payment | customer | email | balance | text | empty
    tickets: list[TicketRow] = field(default_factory=list)
    ticket_id: int | None = None  # set when the query names one existing ticket


def _row(r: RowMapping, now: datetime) -> TicketRow:
    end = r["resolved_at"] if r["status"] != OPEN and r["resolved_at"] else now
    return TicketRow(
        id=int(r["id"]),
        kind=str(r["kind"]),
        severity=severity_name(int(r["severity"])),
        severity_level=int(r["severity"]),
        status=str(r["status"]),
        payment_id=str(r["payment_id"]),
        customer=r["customer"],
        customer_email=r["customer_email"],
        balance=r["balance"],
        amount=money_text(r["amount"], r["currency"]),
        summary=str(r["summary"]),
        occurrences=int(r["occurrences"]),
        opened_at=r["opened_at"],
        waited=max(end - r["opened_at"], timedelta(0)),
    )


def ticket_queue(
    conn: Connection,
    *,
    now: datetime,
    kind: str | None = None,
    severity: str | None = None,
    min_age: timedelta | None = None,
    limit: int = 200,
) -> tuple[list[TicketRow], int]:
    """Open tickets, most severe first and then oldest first; and how many match in all.

    ``kind`` and ``severity`` must be one of KINDS / SEVERITIES (ValueError otherwise).
    """
    where: list[ColumnElement[bool]] = [tickets.c.status == OPEN]
    if kind:
        if kind not in KINDS:
            raise ValueError(f"unknown ticket kind {kind!r}")
        where.append(tickets.c.kind == kind)
    if severity:
        if severity not in SEVERITIES:
            raise ValueError(f"unknown severity {severity!r}")
        where.append(tickets.c.severity == int(Severity[severity.upper()]))
    if min_age:
        where.append(tickets.c.opened_at <= now - min_age)
    total = conn.execute(select(func.count()).select_from(tickets).where(*where)).scalar_one()
    rows = conn.execute(
        select(tickets)
        .where(*where)
        .order_by(desc(tickets.c.severity), tickets.c.opened_at, tickets.c.id)
        .limit(limit)
    ).mappings()
    return [_row(r, now) for r in rows], int(total)


def state_pairs(state: Mapping[str, Any] | None) -> list[tuple[str, str]] | None:
    """A ticket's recorded Stripe or ledger state as (field, text) pairs, amounts in major
    units; None when the state says the object was not found."""
    if not state or not state.get("found"):
        return None
    currency = state.get("currency")
    out: list[tuple[str, str]] = []
    for key, value in state.items():
        if key == "found" or value is None or value == "":
            continue
        if key in _AMOUNT_KEYS and isinstance(value, int) and isinstance(currency, str):
            out.append((key, money_text(value, currency) or str(value)))
        elif key in _TIME_KEYS and isinstance(value, str):
            out.append((key, _iso_text(value)))
        else:
            out.append((key, str(value)))
    return out


def _iso_text(value: str) -> str:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return value
    if when.tzinfo is None:
        return value
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _note(evidence: Any) -> str | None:
    if isinstance(evidence, Mapping):
        note = evidence.get("note")
        return note if isinstance(note, str) and note else None
    return None


def ticket_detail(conn: Connection, ticket_id: int, *, now: datetime) -> TicketDetail | None:
    r = conn.execute(select(tickets).where(tickets.c.id == ticket_id)).mappings().first()
    if r is None:
        return None
    about: ColumnElement[bool] = audit.c.ticket_id == ticket_id
    if r["kind"] != TicketKind.INCIDENT.value:
        about = or_(about, audit.c.payment_id == r["payment_id"])
    history = [
        AuditRow(
            at=a["created_at"],
            action=str(a["action"]),
            amount=money_text(a["amount"], a["currency"]),
            reason=str(a["reason"]),
            actor=str(a["actor"]),
            run_id=a["run_id"],
            note=_note(a["evidence"]),
        )
        for a in conn.execute(select(audit).where(about).order_by(audit.c.id)).mappings()
    ]
    return TicketDetail(
        ticket=_row(r, now),
        reference=r["reference"],
        reason=str(r["reason"]),
        stripe_state=state_pairs(r["stripe_state"]),
        ledger_state=state_pairs(r["ledger_state"]),
        last_seen_at=r["last_seen_at"],
        dashboard_url=r["dashboard_url"],
        suggested_fix=str(r["suggested_fix"]),
        customer_message=r["customer_message"],
        resolved_at=r["resolved_at"],
        resolved_by=r["resolved_by"],
        resolution=r["resolution"],
        run_id=r["run_id"],
        history=history,
        actions=fix_actions(str(r["kind"]), str(r["status"])),
    )


def tickets_opened_per_day(conn: Connection, *, now: datetime, days: int = 14) -> DailyCounts:
    """Every ticket opened in the last ``days`` days (today included), open or resolved,
    counted per kind per UTC day."""
    first = now.date() - timedelta(days=days - 1)
    start = datetime.combine(first, datetime.min.time(), tzinfo=now.tzinfo)
    day_list = [first + timedelta(days=i) for i in range(days)]
    index = {d: i for i, d in enumerate(day_list)}
    counts: dict[str, list[int]] = {}
    for kind, opened in conn.execute(
        select(tickets.c.kind, tickets.c.opened_at).where(tickets.c.opened_at >= start)
    ):
        i = index.get(opened.astimezone(now.tzinfo).date())
        if i is not None:
            counts.setdefault(str(kind), [0] * days)[i] += 1
    ordered = {k: counts[k] for k in KINDS if k in counts}
    ordered.update({k: v for k, v in sorted(counts.items()) if k not in ordered})
    return DailyCounts(day_list, ordered)


_TICKET_ID = re.compile(r"#?(\d{1,9})")


def classify(query: str) -> str:
    q = query.strip()
    if not q:
        return "empty"
    if _TICKET_ID.fullmatch(q):
        return "ticket"
    if q.startswith(("pi_", "ch_", "py_")):
        return "payment"
    if q.startswith("cus_"):
        return "customer"
    if q.startswith("@") or ":" in q:
        return "balance"  # an indicator balance such as @stripe, or wallet:cus_1
    if "@" in q and " " not in q:
        return "email"
    return "text"


def search_tickets(conn: Connection, query: str, *, now: datetime, limit: int = 50) -> SearchResult:
    """Tickets (open and resolved, newest first) that a search box entry points at.

    The customer index (email, name, customer and balance lookups across the ledger) is
    not built yet; until it is, this matches what tickets themselves record.
    """
    q = query.strip()[:SEARCH_MAX]
    kind = classify(q)
    if kind == "empty":
        return SearchResult(q, kind)
    ticket_id: int | None = None
    conds: list[ColumnElement[bool]]
    if kind == "ticket":
        m = _TICKET_ID.fullmatch(q)
        assert m is not None
        wanted = int(m.group(1))
        conds = [tickets.c.id == wanted, tickets.c.payment_id == q]
        exists = conn.execute(select(tickets.c.id).where(tickets.c.id == wanted)).first()
        ticket_id = wanted if exists else None
    elif kind == "payment":
        conds = [tickets.c.payment_id == q, tickets.c.reference == q]
    elif kind == "customer":
        conds = [tickets.c.customer == q]
    elif kind == "email":
        conds = [func.lower(tickets.c.customer_email) == q.lower()]
    elif kind == "balance":
        conds = [tickets.c.balance == q]
    else:
        needle = q.lower()
        conds = [
            func.lower(col).contains(needle, autoescape=True)
            for col in (tickets.c.customer, tickets.c.customer_email, tickets.c.balance)
        ]
        conds.append(tickets.c.payment_id == q)
    rows = conn.execute(
        select(tickets).where(or_(*conds)).order_by(desc(tickets.c.opened_at)).limit(limit)
    ).mappings()
    return SearchResult(q, kind, [_row(r, now) for r in rows], ticket_id)


# --------------------------------------------------------------------------- CLI listings

AGE_BUCKETS = (
    ("<1h", timedelta(hours=1)),
    ("1-24h", timedelta(days=1)),
    ("1-7d", timedelta(days=7)),
)


def _run_dict(row: Any) -> dict[str, Any]:
    d = dict(row)
    d["window"] = {"start": d.get("window_start"), "end": d.get("window_end")}
    return d


def list_runs(
    conn: Connection, *, job: str | None = None, status: str | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """Recent runs, newest first."""
    q = select(runs).order_by(desc(runs.c.id)).limit(limit)
    if job:
        q = q.where(runs.c.job == job)
    if status:
        q = q.where(runs.c.status == status)
    return [_run_dict(r) for r in conn.execute(q).mappings()]


def run_with_audit(
    conn: Connection, run_id: int
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """One run and the audit rows (ledger actions) it recorded, or None."""
    row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
    if row is None:
        return None
    rows = [
        dict(a)
        for a in conn.execute(
            select(audit).where(audit.c.run_id == run_id).order_by(audit.c.id)
        ).mappings()
    ]
    return _run_dict(row), rows


def _ticket_dict(row: Any) -> dict[str, Any]:
    d = dict(row)
    d["severity"] = Severity(int(d["severity"])).label
    return d


def list_tickets(
    conn: Connection,
    *,
    status: str | None = "open",
    kind: str | None = None,
    severity: Severity | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Tickets, most severe first, then oldest first; ``status`` None means all."""
    q = select(tickets).order_by(desc(tickets.c.severity), tickets.c.opened_at).limit(limit)
    if status is not None:
        q = q.where(tickets.c.status == status)
    if kind:
        q = q.where(tickets.c.kind == kind)
    if severity is not None:
        q = q.where(tickets.c.severity == int(severity))
    return [_ticket_dict(r) for r in conn.execute(q).mappings()]


def ticket_with_history(
    conn: Connection, ticket_id: int
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """One ticket and every audit row of its payment, oldest first, or None."""
    row = conn.execute(select(tickets).where(tickets.c.id == ticket_id)).mappings().first()
    if row is None:
        return None
    t = _ticket_dict(row)
    history = [
        dict(a)
        for a in conn.execute(
            select(audit).where(audit.c.payment_id == t["payment_id"]).order_by(audit.c.id)
        ).mappings()
    ]
    return t, history


def age_bucket(age: timedelta) -> str:
    for name, limit in AGE_BUCKETS:
        if age < limit:
            return name
    return ">7d"


def build_report(conn: Connection, since: timedelta, now: datetime) -> dict[str, Any]:
    """How the books and the pipeline did over the period ``since`` before ``now``.

    Plain queries over the period's rows, grouped in Python: the volumes (days of audit rows
    and tickets) are small, and it keeps one code path for SQLite and PostgreSQL.
    """
    start, prev_start = now - since, now - 2 * since
    actions: dict[str, Counter[str]] = defaultdict(Counter)
    for action, at in conn.execute(
        select(audit.c.action, audit.c.created_at).where(audit.c.created_at >= start)
    ):
        actions[at.date().isoformat()][action] += 1
    opened: dict[str, Counter[str]] = defaultdict(Counter)
    this_period: Counter[str] = Counter()
    last_period: Counter[str] = Counter()
    for kind, at in conn.execute(
        select(tickets.c.kind, tickets.c.opened_at).where(tickets.c.opened_at >= prev_start)
    ):
        if at >= start:
            opened[at.date().isoformat()][kind] += 1
            this_period[kind] += 1
        else:
            last_period[kind] += 1
    ages: Counter[str] = Counter()
    stuck: list[dict[str, Any]] = []
    for row in conn.execute(
        select(tickets.c.id, tickets.c.kind, tickets.c.payment_id, tickets.c.opened_at)
        .where(tickets.c.status == "open")
        .order_by(tickets.c.opened_at)
    ).mappings():
        age = now - row["opened_at"]
        ages[age_bucket(age)] += 1
        if row["kind"] == "stuck_payment" and len(stuck) < 10:
            stuck.append({"ticket_id": row["id"], "payment_id": row["payment_id"], "age": age})
    calls = limited = 0
    by_status: Counter[str] = Counter()
    # Dry runs changed nothing: they are not part of how the pipeline did.
    dry_runs = 0
    for status, c, rl, dry in conn.execute(
        select(
            runs.c.status, runs.c.stripe_calls, runs.c.stripe_rate_limited, runs.c.dry_run
        ).where(runs.c.started_at >= start)
    ):
        if dry:
            dry_runs += 1
            continue
        by_status[status] += 1
        calls += int(c or 0)
        limited += int(rl or 0)
    recurring = []
    for kind in sorted(set(this_period) | set(last_period)):
        now_n, before_n = this_period[kind], last_period[kind]
        # A jump worth a look: at least doubled and not just one or two tickets.
        jump = now_n >= 3 and now_n >= 2 * before_n
        recurring.append({"kind": kind, "this_period": now_n, "previous": before_n, "jump": jump})
    return {
        "since": start.isoformat(),
        "until": now.isoformat(),
        "actions_per_day": {d: dict(c) for d, c in sorted(actions.items())},
        "tickets_opened_per_day": {d: dict(c) for d, c in sorted(opened.items())},
        "open_tickets_by_age": {name: ages[name] for name in ("<1h", "1-24h", "1-7d", ">7d")},
        "oldest_stuck_payments": stuck,
        "stripe_calls": calls,
        "stripe_rate_limited": limited,
        "runs_by_status": dict(by_status),
        "dry_runs_left_out": dry_runs,
        "recurring_issues": recurring,
    }


INBOX_STATUSES = ("failed", "pending", "processed", "ignored")


def list_inbox(
    conn: Connection, *, status: str | None = None, limit: int = 50
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Stored Stripe events, failing first (then pending, oldest first; then the latest
    processed), and how many there are of each status."""
    order = case(
        (inbox.c.status == "failed", 0),
        (inbox.c.status == "pending", 1),
        else_=2,
    )
    q = (
        select(
            inbox.c.event_id,
            inbox.c.type,
            inbox.c.payment_id,
            inbox.c.status,
            inbox.c.attempts,
            inbox.c.last_error,
            inbox.c.source,
            inbox.c.received_at,
            inbox.c.processed_at,
            inbox.c.event_created,
        )
        .order_by(
            order,
            case((inbox.c.status.in_(("failed", "pending")), inbox.c.received_at)),
            desc(inbox.c.received_at),
        )
        .limit(limit)
    )
    if status:
        q = q.where(inbox.c.status == status)
    rows = [dict(r) for r in conn.execute(q).mappings()]
    totals = {
        str(st): int(n)
        for st, n in conn.execute(select(inbox.c.status, func.count()).group_by(inbox.c.status))
    }
    return rows, totals
