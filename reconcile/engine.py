"""The engine: lock the ledger entry, decide, act, record; one DB transaction per payment.

A pass first *plans* a batch with the pure ``decide`` (no locks, no writes), checks the plan
against the blast-radius guard, and only then *acts* on the payments that need it, each in
its own transaction in which the entry is locked and the decision taken again on what the
lock shows: another worker may have acted in between, and the second decision is the one
that counts.  Dry runs do everything in a transaction that is rolled back, so the plan they
print is exactly what a live run would have done.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from ledger.errors import LedgerError
from ledger.model import NewTransaction, Transaction, TxnStatus
from ledger.protocol import LINK_KEY, Ledger, rehearsal
from reconcile import tickets as tk
from reconcile.decide import decide
from reconcile.model import (
    Action,
    Decision,
    Entry,
    EntryStatus,
    Payment,
    Policy,
    Severity,
    TicketKind,
    TicketSpec,
)
from reconcile.runs import RunState, record_audit
from reconcile.stripe_gateway import StripeGateway


def utcnow() -> datetime:
    return datetime.now(UTC)


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

    def check(self, examined: int, voids: int, new_tickets: int) -> str | None:
        void_cap = max(self.max_voids, math.floor(self.max_void_share * examined))
        ticket_cap = max(self.max_new_tickets, math.floor(self.max_ticket_share * examined))
        if voids > void_cap:
            return (
                f"would void {voids} of {examined} entries examined "
                f"(cap {void_cap}: RECON_MAX_VOIDS={self.max_voids}, "
                f"RECON_MAX_VOID_SHARE={self.max_void_share})"
            )
        if new_tickets > ticket_cap:
            return (
                f"would open {new_tickets} new tickets for {examined} entries examined "
                f"(cap {ticket_cap}: RECON_MAX_NEW_TICKETS={self.max_new_tickets}, "
                f"RECON_MAX_TICKET_SHARE={self.max_ticket_share})"
            )
        return None


def _noop(*_: Any) -> None:
    return None


@dataclass
class Hooks:
    """Callbacks for metrics; the worker plugs Prometheus in, tests leave them empty."""

    action: Callable[[str], None] = _noop
    ticket: Callable[[str, str], None] = _noop
    run: Callable[[str, str], None] = _noop
    stripe_request: Callable[[str, str], None] = _noop


@dataclass
class Services:
    engine: Engine
    ledger_for: Callable[[Connection], Ledger]
    new_gateway: Callable[[], StripeGateway]
    policy: Policy = field(default_factory=Policy)
    guard: Guard = field(default_factory=Guard)
    sinks: tuple[str, ...] = ()
    dashboard_base: str = "https://dashboard.stripe.com"
    sweep_min_age: timedelta = timedelta(minutes=10)
    sweep_batch: int = 100
    claim_lease: timedelta = timedelta(minutes=10)
    clock: Callable[[], datetime] = utcnow
    hooks: Hooks = field(default_factory=Hooks)
    enqueue: Callable[[Sequence[str]], None] | None = None


def payment_id_of(txn: Transaction) -> str:
    link = txn.metadata.get(LINK_KEY)
    return link if isinstance(link, str) and link else txn.reference


def to_entry(txn: Transaction | None) -> Entry | None:
    if txn is None:
        return None
    return Entry(
        reference=txn.reference,
        status=EntryStatus(txn.status.value),
        amount=txn.amount,
        currency=txn.currency,
        created_at=txn.created_at,
        committed_amount=txn.committed_amount,
        voided_amount=txn.voided_amount,
        source=txn.source,
        destination=txn.destination,
        metadata={k: str(v) for k, v in txn.metadata.items()},
    )


@dataclass(frozen=True)
class Item:
    payment_id: str
    payment: Payment | None
    txn: Transaction | None = None


@dataclass(frozen=True)
class Outcome:
    payment_id: str
    decision: Decision
    reference: str | None = None
    ticket_id: int | None = None
    ticket_new: bool = False
    resolved: tuple[int, ...] = ()
    error: str | None = None
    payment: Payment | None = None  # what Stripe said when this was decided

    def as_plan(self) -> dict[str, Any]:
        d = self.decision
        return {
            "payment_id": self.payment_id,
            "reference": self.reference,
            "action": d.action.value,
            "reason": str(d.reason),
            "commit_amount": d.commit_amount,
            "void_remainder": d.void_remainder,
            "ticket": (
                {"kind": d.ticket.kind.value, "severity": d.ticket.severity.label}
                if d.ticket
                else None
            ),
            "ticket_id": self.ticket_id,
            "resolves_tickets": list(self.resolved),
            "error": self.error,
        }


class GuardTripped(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Pass:
    """One reconciliation pass (a run, or a single webhook) over any number of payments."""

    def __init__(
        self,
        svc: Services,
        *,
        run: RunState | None,
        actor: str = "system",
        dry_run: bool = False,
        guarded: bool = True,
        evidence: Mapping[str, Any] | None = None,
    ) -> None:
        self.svc = svc
        self.run = run
        self.actor = actor
        self.dry_run = dry_run
        self.guarded = guarded
        self.evidence = dict(evidence or {})
        self.examined = 0
        self.planned_voids = 0
        self.planned_new_tickets = 0
        self.outcomes: list[Outcome] = []
        self.counts: dict[str, int] = run.counts if run is not None else {}

    def _count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    # -- planning --------------------------------------------------------------------------

    def handle(self, items: Sequence[Item]) -> None:
        """Plan a batch, check the guard, then act on what needs acting on.

        Raises GuardTripped (having acted on nothing in this batch) when the plan is over
        the caps.
        """
        if not items:
            return
        now = self.svc.clock()
        with self.svc.engine.connect() as conn:
            open_by_payment = tk.open_kinds(conn, [i.payment_id for i in items])
            conn.rollback()
            self._plan_and_act(conn, items, open_by_payment, now)

    def _plan_and_act(
        self,
        conn: Connection,
        items: Sequence[Item],
        open_by_payment: Mapping[str, set[str]],
        now: datetime,
    ) -> None:
        planned: list[tuple[Item, Decision]] = []
        voids = new_tickets = 0
        for item in items:
            d = decide(item.payment, to_entry(item.txn), self.svc.policy, now)
            planned.append((item, d))
            if d.action is Action.VOID:
                voids += 1
            if d.ticket and d.ticket.kind.value not in open_by_payment.get(item.payment_id, ()):
                new_tickets += 1
        self.examined += len(items)
        if self.guarded:
            why = self.svc.guard.check(
                self.examined, self.planned_voids + voids, self.planned_new_tickets + new_tickets
            )
            if why:
                raise GuardTripped(why)
        self.planned_voids += voids
        self.planned_new_tickets += new_tickets
        self._count("examined", len(items))
        for item, d in planned:
            needs_act = (
                d.changes_ledger
                or d.ticket is not None
                or (d.resolves and bool(open_by_payment.get(item.payment_id)))
            )
            if needs_act:
                has_open = bool(open_by_payment.get(item.payment_id))
                self.apply(item.payment_id, item.payment, conn=conn, known_open=has_open)
            else:
                self._count(d.action.value)
                if d.action is not Action.NOTHING:
                    self.outcomes.append(
                        Outcome(item.payment_id, d, item.txn.reference if item.txn else None)
                    )

    # -- acting ----------------------------------------------------------------------------

    def apply(
        self,
        payment_id: str,
        payment: Payment | None,
        *,
        conn: Connection | None = None,
        known_open: bool | None = None,
    ) -> Outcome:
        """Lock the entry, decide on what the lock shows, act, record. One transaction.

        A batch passes its connection (one checkout, not one per payment) and whether the
        payment had open tickets when the batch was planned: when it had none, looking for
        tickets to resolve is skipped.  A ticket opened by another worker in between stays
        open until the next pass over that payment, which resolves it.
        """
        if conn is None:
            with self.svc.engine.connect() as own:
                return self.apply(payment_id, payment, conn=own, known_open=known_open)
        tx = conn.begin()
        try:
            outcome = self._apply_locked(conn, payment_id, payment, known_open)
        except LedgerError as exc:
            tx.rollback()
            # A typed ledger refusal (e.g. a race lost to a manual fix) is recorded and
            # left for the next pass, which will see the new state.
            self._count("errors")
            msg = f"{payment_id}: {type(exc).__name__}: {exc}"
            if self.run is not None:
                self.run.errors.append(msg)
            d = Decision(Action.NOTHING, "ledger_error")
            outcome = Outcome(payment_id, d, error=msg, payment=payment)
            self.outcomes.append(outcome)
            return outcome
        except BaseException:
            tx.rollback()
            raise
        if self.dry_run:
            tx.rollback()
        else:
            tx.commit()
        self._count(outcome.decision.action.value)
        if not self.dry_run:
            self.svc.hooks.action(outcome.decision.action.value)
            if outcome.decision.ticket and (outcome.ticket_new):
                t = outcome.decision.ticket
                self.svc.hooks.ticket(t.kind.value, t.severity.label)
        self.outcomes.append(outcome)
        return outcome

    def _apply_locked(
        self,
        conn: Connection,
        payment_id: str,
        payment: Payment | None,
        known_open: bool | None = None,
    ) -> Outcome:
        svc = self.svc
        with rehearsal(conn, self.dry_run):
            ledger = svc.ledger_for(conn)
        now = svc.clock()
        txn = ledger.find_linked(payment_id, lock=True)
        entry = to_entry(txn)
        d = decide(payment, entry, svc.policy, now)
        run_id = self.run.id if self.run else None
        evidence = {
            **self.evidence,
            "stripe": tk.payment_state(payment),
            "ledger": tk.entry_state(entry),
            "decision": {"action": d.action.value, "reason": str(d.reason)},
        }

        def audit(
            action: str, amount: int | None, ref: str | None, ticket_id: int | None = None
        ) -> None:
            record_audit(
                conn,
                run_id=run_id,
                payment_id=payment_id,
                reference=ref,
                action=action,
                reason=str(d.reason),
                actor=self.actor,
                now=now,
                amount=amount,
                currency=(txn.currency if txn else (payment.currency if payment else None)),
                evidence=evidence,
                ticket_id=ticket_id,
            )

        reference = txn.reference if txn else None
        if d.action is Action.COMMIT and txn is not None:
            after = txn
            if d.commit_amount:
                # No idempotency key needed: the entry is locked and the decision was taken
                # on what the lock shows, so a retry computes what is left (nothing).
                after = ledger.commit(txn.reference, d.commit_amount)
                audit("commit", d.commit_amount, txn.reference)
            if d.void_remainder and after.status is TxnStatus.INFLIGHT:
                ledger.void(txn.reference)
                audit("void_remainder", after.remaining, txn.reference)
        elif d.action is Action.VOID and txn is not None:
            ledger.void(txn.reference)
            audit("void", txn.remaining, txn.reference)
        elif d.action is Action.CREATE and d.create is not None:
            c = d.create
            created = ledger.create(
                NewTransaction(
                    reference=c.reference,
                    source=c.source,
                    destination=c.destination,
                    amount=c.amount,
                    currency=c.currency,
                    inflight=False,
                    metadata={LINK_KEY: payment_id, "created_by": "stripe-recon"},
                )
            )
            reference = created.reference
            audit("create", c.amount, created.reference)
        ticket_id: int | None = None
        ticket_new = False
        if d.ticket is not None:
            facts = tk.TicketFacts(
                payment_id=payment_id,
                payment=payment,
                entry=entry,
                reason=str(d.reason),
                now=now,
                dashboard_base=svc.dashboard_base,
            )
            raised = tk.raise_ticket(conn, d.ticket, facts, run_id=run_id, sinks=svc.sinks)
            ticket_id, ticket_new = raised.ticket_id, raised.new
            self._count("ticket_opened" if raised.new else "ticket_bumped")
            if raised.new or raised.severity_raised:
                audit(
                    "ticket_opened" if raised.new else "ticket_escalated",
                    None,
                    reference,
                    ticket_id,
                )
        resolved: list[int] = []
        if d.resolves and known_open is not False:
            resolved = tk.resolve_open(
                conn,
                payment_id,
                reason=f"reconciled: {d.reason}",
                by="system" if self.actor == "system" else self.actor,
                now=now,
                keep=d.ticket.kind if d.ticket else None,
            )
            if resolved:
                self._count("ticket_resolved", len(resolved))
                audit("tickets_resolved", None, reference)
        return Outcome(
            payment_id,
            d,
            reference=reference,
            ticket_id=ticket_id,
            ticket_new=ticket_new,
            resolved=tuple(resolved),
            payment=payment,
        )

    # -- the guard -------------------------------------------------------------------------

    def open_incident(self, job: str, why: str) -> int | None:
        """One incident ticket per job, however often it trips: the repeats bump it."""
        now = self.svc.clock()
        summary = (
            f"{job} run {self.run.id if self.run else '?'} stopped acting: it {why}. "
            "Nothing was changed by the rest of the run; entries are left as they were."
        )
        facts = tk.TicketFacts(
            payment_id=f"job:{job}",
            payment=None,
            entry=None,
            reason="blast_radius_guard",
            now=now,
            summary=summary,
        )
        spec = TicketSpec(TicketKind.INCIDENT, Severity.CRITICAL)
        with self.svc.engine.begin() as conn:
            nested = conn.begin_nested()
            raised = tk.raise_ticket(
                conn, spec, facts, run_id=self.run.id if self.run else None, sinks=self.svc.sinks
            )
            if self.dry_run:
                nested.rollback()
                return None
            nested.commit()
        self._count("incident")
        self.svc.hooks.ticket(TicketKind.INCIDENT.value, Severity.CRITICAL.label)
        return raised.ticket_id

    def plan(self) -> list[dict[str, Any]]:
        return [o.as_plan() for o in self.outcomes]
