"""The engine: lock the ledger entry, decide, act, record; one DB transaction per payment.

A pass first *plans* a batch with the pure ``decide`` (no locks, no writes), checks the plan
against the blast-radius guard, and only then *acts* on the payments that need it, each in
its own transaction in which the entry is locked and the decision taken again on what the
lock shows: another worker may have acted in between, and the second decision is the one
that counts.  Dry runs do everything in a transaction that is rolled back, so the plan they
print is exactly what a live run would have done.

:func:`act` is the one ledger write path: the automatic pipeline and a person's fix
(reconcile/usecases/fixes.py) both commit, void and create through it, so every change to
the ledger carries its audit row written the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from ledger.errors import LedgerError
from ledger.model import NewTransaction, Transaction, TxnStatus
from ledger.protocol import LINK_KEY, Ledger, rehearsal
from reconcile import tickets as tk
from reconcile.decide import decide
from reconcile.guard import GuardTripped
from reconcile.model import (
    Action,
    CreateSpec,
    Decision,
    Entry,
    EntryStatus,
    Payment,
    Severity,
    TicketKind,
    TicketSpec,
)
from reconcile.ports import Services
from reconcile.runs import RunState, record_audit


def linked_payment_id(txn: Transaction) -> str:
    """The PaymentIntent a ledger transaction is for (its link, else its reference)."""
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


# -- the one ledger write path ----------------------------------------------------------------


@dataclass(frozen=True)
class Commit:
    reference: str
    amount: int
    idempotency_key: str | None = None
    audit_action: str = "commit"


@dataclass(frozen=True)
class Void:
    reference: str
    amount: int  # what is left of the hold: the amount the void releases, for the audit
    idempotency_key: str | None = None
    audit_action: str = "void"


@dataclass(frozen=True)
class Create:
    spec: CreateSpec
    payment_id: str
    created_by: str
    audit_action: str = "create"


LedgerOp = Commit | Void | Create


@dataclass(frozen=True)
class AuditContext:
    """Who acts, why, on what evidence: written beside every ledger change."""

    run_id: int | None
    payment_id: str | None
    actor: str
    reason: str
    now: datetime
    evidence: Mapping[str, Any] = field(default_factory=dict)
    ticket_id: int | None = None


def act(conn: Connection, ledger: Ledger, op: LedgerOp, ctx: AuditContext) -> Transaction:
    """Change the ledger and write its audit row, on the caller's transaction."""
    if isinstance(op, Commit):
        after = ledger.commit(op.reference, op.amount, idempotency_key=op.idempotency_key)
        amount = op.amount
    elif isinstance(op, Void):
        after = ledger.void(op.reference, idempotency_key=op.idempotency_key)
        amount = op.amount
    else:
        c = op.spec
        after = ledger.create(
            NewTransaction(
                reference=c.reference,
                source=c.source,
                destination=c.destination,
                amount=c.amount,
                currency=c.currency,
                inflight=False,
                metadata={LINK_KEY: op.payment_id, "created_by": op.created_by},
            )
        )
        amount = c.amount
    record_audit(
        conn,
        run_id=ctx.run_id,
        payment_id=ctx.payment_id,
        reference=after.reference,
        action=op.audit_action,
        reason=ctx.reason,
        actor=ctx.actor,
        now=ctx.now,
        amount=amount,
        currency=after.currency,
        evidence=ctx.evidence,
        ticket_id=ctx.ticket_id,
    )
    return after


@dataclass(frozen=True)
class Item:
    payment_id: str
    payment: Payment | None
    txn: Transaction | None = None


@dataclass(frozen=True)
class PaymentOutcome:
    """What a pass did (or, in a dry run, would have done) about one payment."""

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
        self.outcomes: list[PaymentOutcome] = []
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
                        PaymentOutcome(item.payment_id, d, item.txn.reference if item.txn else None)
                    )

    # -- acting ----------------------------------------------------------------------------

    def apply(
        self,
        payment_id: str,
        payment: Payment | None,
        *,
        conn: Connection | None = None,
        known_open: bool | None = None,
    ) -> PaymentOutcome:
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
            outcome = PaymentOutcome(payment_id, d, error=msg, payment=payment)
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
    ) -> PaymentOutcome:
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

        ctx = AuditContext(
            run_id=run_id,
            payment_id=payment_id,
            actor=self.actor,
            reason=str(d.reason),
            now=now,
            evidence=evidence,
        )

        def note(action: str, ref: str | None, ticket_id: int | None = None) -> None:
            # Audit rows that record what happened to tickets, not to money.
            record_audit(
                conn,
                run_id=run_id,
                payment_id=payment_id,
                reference=ref,
                action=action,
                reason=str(d.reason),
                actor=self.actor,
                now=now,
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
                after = act(conn, ledger, Commit(txn.reference, d.commit_amount), ctx)
            if d.void_remainder and after.status is TxnStatus.INFLIGHT:
                rest = Void(txn.reference, after.remaining, audit_action="void_remainder")
                act(conn, ledger, rest, ctx)
        elif d.action is Action.VOID and txn is not None:
            act(conn, ledger, Void(txn.reference, txn.remaining), ctx)
        elif d.action is Action.CREATE and d.create is not None:
            create = Create(d.create, payment_id, created_by="stripe-recon")
            reference = act(conn, ledger, create, ctx).reference
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
                note("ticket_opened" if raised.new else "ticket_escalated", reference, ticket_id)
        resolved: list[int] = []
        if d.resolves and known_open is not False:
            resolved = tk.resolve_open(
                conn,
                payment_id,
                reason=f"reconciled: {d.reason}",
                by=self.actor,
                now=now,
                keep=d.keeps | ({d.ticket.kind} if d.ticket else set()),
            )
            if resolved:
                self._count("ticket_resolved", len(resolved))
                note("tickets_resolved", reference)
        return PaymentOutcome(
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
