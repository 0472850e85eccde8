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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from ledger.errors import LedgerError, TransientError
from ledger.model import NewTransaction, Settlement, Transaction, TxnStatus
from ledger.protocol import LINK_KEY, Ledger, LocksInBulk, SettlesInSets, rehearsal
from reconcile import customers
from reconcile import tickets as tk
from reconcile.decide import decide
from reconcile.guard import GuardTripped
from reconcile.messages import PENDING, CustomerState, customer_message
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
from reconcile.runs import RunState, record_audit, record_audits


def linked_payment_id(txn: Transaction) -> str:
    """The PaymentIntent a ledger transaction is for (its link, else its reference)."""
    link = txn.metadata.get(LINK_KEY)
    return link if isinstance(link, str) and link else txn.reference


# A person's fix that moves money after the hold was settled is its own APPLIED transaction,
# found by its reference: the payment id and one of these suffixes.  Its metadata names the
# payment under ADJUSTS_KEY, not LINK_KEY, so that the payment's own entry stays the one
# ``find_linked`` answers.
CREDIT_SUFFIX = ":credit"
REVERSAL_SUFFIX = ":reversal"
ADJUSTS_KEY = "recon_adjusts"


def adjustment_references(payment_id: str) -> list[str]:
    return [payment_id + CREDIT_SUFFIX, payment_id + REVERSAL_SUFFIX]


def to_entry(txn: Transaction | None, adjustments: Sequence[Transaction] = ()) -> Entry | None:
    """The decision core's view of a payment's ledger entry, with any fixes folded in.

    A credit after a void is, to the books, the commit that should have happened: it counts
    as committed and the entry reads APPLIED.  A reversal is kept apart
    (``reversed_amount``): the decision compares it with what Stripe refunded or failed.
    """
    if txn is None:
        return None
    committed, voided, status = txn.committed_amount, txn.voided_amount, txn.status.value
    reversed_amount = 0
    for adj in adjustments:
        if adj.reference.endswith(CREDIT_SUFFIX):
            committed += adj.amount
            voided = max(0, txn.amount - committed)
            status = EntryStatus.APPLIED.value
        elif adj.reference.endswith(REVERSAL_SUFFIX):
            reversed_amount += adj.amount
    return Entry(
        reference=txn.reference,
        status=EntryStatus(status),
        amount=max(txn.amount, committed),
        currency=txn.currency,
        created_at=txn.created_at,
        committed_amount=committed,
        voided_amount=voided,
        source=txn.source,
        destination=txn.destination,
        metadata={k: str(v) for k, v in txn.metadata.items()},
        reversed_amount=reversed_amount,
    )


def load_adjustments(
    ledger: Ledger, txns: Mapping[str, Transaction]
) -> dict[str, list[Transaction]]:
    """Fixes posted against settled entries (payment id -> credits and reversals), one read.

    INFLIGHT entries never have any (a fix after settlement is the only way to get one), so
    the sweep, which sees only INFLIGHT entries, never pays for this read.
    """
    settled = [pid for pid, t in txns.items() if t.status is not TxnStatus.INFLIGHT]
    if not settled:
        return {}
    refs = [ref for pid in settled for ref in adjustment_references(pid)]
    found = ledger.find_linked_many(refs)
    out: dict[str, list[Transaction]] = {}
    for pid in settled:
        adj = [found[r] for r in adjustment_references(pid) if r in found]
        if adj:
            out[pid] = adj
    return out


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


@dataclass(frozen=True)
class Credit:
    """A new APPLIED transaction for a paid payment whose hold was voided (``of``)."""

    of: Transaction
    payment_id: str
    amount: int
    created_by: str
    audit_action: str = "credit"


@dataclass(frozen=True)
class Reverse:
    """Take back ``amount`` of what ``of`` credited: an APPLIED transaction the other way."""

    of: Transaction
    payment_id: str
    amount: int
    created_by: str
    audit_action: str = "reverse"


LedgerOp = Commit | Void | Create | Credit | Reverse


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
    elif isinstance(op, Credit | Reverse):
        credit = isinstance(op, Credit)
        after = ledger.create(
            NewTransaction(
                reference=op.payment_id + (CREDIT_SUFFIX if credit else REVERSAL_SUFFIX),
                source=op.of.source if credit else op.of.destination,
                destination=op.of.destination if credit else op.of.source,
                amount=op.amount,
                currency=op.of.currency,
                inflight=False,
                metadata={ADJUSTS_KEY: op.payment_id, "created_by": op.created_by},
            )
        )
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
    adjustments: tuple[Transaction, ...] = ()


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
    currency: str | None = None
    amount: int | None = None  # what the action moves: committed, voided or created
    dry_run: bool = False

    def as_plan(self) -> dict[str, Any]:
        d = self.decision
        return {
            "payment_id": self.payment_id,
            "reference": self.reference,
            "action": d.action.value,
            "reason": str(d.reason),
            "amount": self.amount,
            "currency": self.currency,
            "commit_amount": d.commit_amount,
            "void_remainder": d.void_remainder,
            "ticket": (
                {"kind": d.ticket.kind.value, "severity": d.ticket.severity.label}
                if d.ticket
                else None
            ),
            # A dry run rolls back the tickets it would open: no number for those, only
            # for open tickets it would bump, which exist.
            "ticket_id": None if (self.dry_run and self.ticket_new) else self.ticket_id,
            "ticket_new": self.ticket_new,
            "resolves_tickets": [] if self.dry_run else list(self.resolved),
            "would_resolve": len(self.resolved),
            "error": self.error,
        }


def queue_change(
    conn: Connection,
    change: str,
    payment_id: str,
    payment: Payment | None,
    entry: Entry | None,
    amount: int | None,
    currency: str | None,
    message: str | None,
    now: datetime,
    *,
    ticket_id: int | None = None,
    destination_key: str = "ledger_destination",
) -> bool:
    """Queue one customer.update with the customer's identifiers (see customers.sighting)."""
    who = customers.sighting(
        payment_id, payment, entry, stripe_read=False, destination_key=destination_key
    )
    return tk.queue_customer_update(
        conn,
        tk.CustomerChange(
            payment_id=payment_id,
            change=change,
            message=message,
            amount=amount,
            currency=currency,
            ticket_id=ticket_id,
            customer=who.stripe_customer if who else None,
            customer_email=who.email if who else None,
            customer_name=who.name if who else None,
            balance=who.balance if who else None,
        ),
        now,
    )


def _txn_like(entry: Entry) -> Transaction:
    """The few Transaction fields ``_moved`` reads, from an Entry."""
    return Transaction(
        id="",
        reference=entry.reference,
        source=entry.source,
        destination=entry.destination,
        amount=entry.amount,
        currency=entry.currency,
        status=TxnStatus(entry.status.value),
        committed_amount=entry.committed_amount,
        voided_amount=entry.voided_amount,
        created_at=entry.created_at,
    )


def _currency(txn: Transaction | None, payment: Payment | None) -> str | None:
    return txn.currency if txn is not None else (payment.currency if payment else None)


def _moved(d: Decision, txn: Transaction | None) -> int | None:
    if d.action is Action.COMMIT:
        return d.commit_amount
    if d.action is Action.VOID and txn is not None:
        return txn.remaining
    if d.action is Action.CREATE and d.create is not None:
        return d.create.amount
    return None


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
        # Where the customer index of a handled batch is written (None: at once, here).  A
        # sweep hands it to a thread of its own, so that it overlaps the next batch: it
        # records whose payments these are and moves no money.
        self.index_later: Callable[[Callable[[], None]], None] | None = None

    def _count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    # -- planning --------------------------------------------------------------------------

    def handle(
        self, items: Sequence[Item], open_by_payment: Mapping[str, set[str]] | None = None
    ) -> None:
        """Plan a batch, check the guard, then act on what needs acting on.

        ``open_by_payment``: the kinds of ticket open for these payments, when the caller
        read them already (the sweep, with its claim); else they are read here.

        Raises GuardTripped (having acted on nothing in this batch) when the plan is over
        the caps.
        """
        if not items:
            return
        now = self.svc.clock()
        with self.svc.engine.connect() as conn:
            if open_by_payment is None:
                open_by_payment = tk.open_kinds(conn, [i.payment_id for i in items])
                conn.rollback()
            self._plan_and_act(conn, items, open_by_payment, now)
            if not self.dry_run and self.index_later is None:
                self._index(conn, items)
        if not self.dry_run and self.index_later is not None:
            self.index_later(lambda: self._index_own(items))

    def _index_own(self, items: Sequence[Item]) -> None:
        with self.svc.engine.connect() as conn:
            self._index(conn, items)

    def _index(self, conn: Connection, items: Sequence[Item]) -> None:
        """Write down whose payments these are (the customer index), one transaction."""
        seen = [
            customers.sighting(
                i.payment_id,
                i.payment,
                to_entry(i.txn),
                stripe_read=i.payment is not None,
                destination_key=self.svc.policy.destination_key,
            )
            for i in items
        ]
        with conn.begin():
            customers.record(conn, [s for s in seen if s is not None], self.svc.clock())

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
            d = decide(item.payment, to_entry(item.txn, item.adjustments), self.svc.policy, now)
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
        to_act: list[Item] = []
        for item, d in planned:
            needs_act = (
                d.changes_ledger
                or d.ticket is not None
                or (d.resolves and bool(open_by_payment.get(item.payment_id)))
            )
            if needs_act:
                to_act.append(item)
            else:
                self._count(d.action.value)
                if d.action is not Action.NOTHING:
                    self.outcomes.append(
                        PaymentOutcome(
                            item.payment_id,
                            d,
                            item.txn.reference if item.txn else None,
                            payment=item.payment,
                            currency=_currency(item.txn, item.payment),
                            dry_run=self.dry_run,
                        )
                    )
        if len(to_act) > 1 and not self.dry_run:
            to_act = self._apply_set(conn, to_act, open_by_payment)
        for item in to_act:
            has_open = bool(open_by_payment.get(item.payment_id))
            self.apply(item.payment_id, item.payment, conn=conn, known_open=has_open)

    # -- acting on a set -------------------------------------------------------------------

    def _apply_set(
        self, conn: Connection, items: Sequence[Item], open_by_payment: Mapping[str, set[str]]
    ) -> list[Item]:
        """Commit and void many entries in one transaction with a few statements.

        The entries are locked together and each is decided again on what the lock shows
        (another worker may have acted since the plan).  Only plain settlements are taken
        here: an entry whose decision opens or resolves a ticket, creates a transaction, or
        finds its entry no longer INFLIGHT is handed back for the per-payment path, as is
        every entry of a set whose writes fail (nothing of the set is kept: the transaction
        rolls back whole, so no payment is half-applied).  Returns the items handed back.
        """
        svc = self.svc
        ledger = svc.ledger_for(conn)
        if isinstance(ledger, LocksInBulk):
            return self._apply_bulk(conn, ledger, ledger, items, open_by_payment)
        if not isinstance(ledger, SettlesInSets):
            return list(items)
        ids = [i.txn.id for i in items if i.txn is not None]
        if len(ids) < 2:
            return list(items)
        back: list[Item] = [i for i in items if i.txn is None]
        done: list[tuple[Item, Decision, Transaction, Entry]] = []
        tx = conn.begin()
        try:
            now = svc.clock()
            locked = ledger.lock_many(ids, {i.txn.id: i.txn for i in items if i.txn is not None})
            settlements: list[Settlement] = []
            audits: list[dict[str, Any]] = []
            for item in items:
                if item.txn is None:
                    continue
                txn = locked.get(item.txn.id)
                plain = self._plain_settlement(item, txn, open_by_payment, now)
                if txn is None or plain is None:
                    back.append(item)
                    continue
                d, entry, commit, void = plain
                settlements.append(Settlement(txn, commit, void))
                done.append((item, d, txn, entry))
                audits += self._settle_audits(item, d, txn, entry, commit, void, now)
            ledger.settle_locked(settlements)
            record_audits(conn, audits)
            self._tell_settled(conn, done, now)
            tx.commit()
        except Exception as exc:
            # Whatever failed, nothing of the set stands: each entry is tried again on its
            # own, where one that fails again fails alone.
            if tx.is_active:
                tx.rollback()
            self._count("set_fallbacks")
            if isinstance(exc, TransientError):
                raise
            return list(items)
        self._settled(done)
        return back

    def _apply_bulk(
        self,
        conn: Connection,
        ledger: Ledger,
        locks: LocksInBulk,
        items: Sequence[Item],
        open_by_payment: Mapping[str, set[str]],
    ) -> list[Item]:
        """The plain settlements of a batch through the ledger's bulk calls (Blnk: 100 holds
        a call instead of one PUT each).

        Blnk has no transaction to roll back, so each entry's result stands alone: the
        service's own claim rows, locked together on ``conn``, keep other workers off these
        entries while they are decided again on what Blnk now holds and settled; an entry
        whose commit or void did not succeed goes the per-payment path, which reads and
        decides it again (a commit that landed and a void that did not leaves a remainder
        that path voids).  Returns the items handed back.
        """
        svc = self.svc
        refs = [i.txn.reference for i in items if i.txn is not None]
        if len(refs) < 2:
            return list(items)
        back: list[Item] = [i for i in items if i.txn is None]
        planned: list[tuple[Item, Decision, Transaction, Entry, int, int]] = []
        done: list[tuple[Item, Decision, Transaction, Entry]] = []
        tx = conn.begin()
        try:
            now = svc.clock()
            locked = locks.lock_references(refs)
            for item in items:
                if item.txn is None:
                    continue
                txn = locked.get(item.txn.reference)
                plain = self._plain_settlement(item, txn, open_by_payment, now)
                if txn is None or plain is None:
                    back.append(item)
                else:
                    d, entry, commit, void = plain
                    planned.append((item, d, txn, entry, commit, void))
            commits = [(txn.reference, c) for _, _, txn, _, c, _ in planned if c]
            committed = {s.reference for s in ledger.commit_many(commits) if s.ok}
            voids = [
                txn.reference
                for _, _, txn, _, c, v in planned
                if v and (not c or txn.reference in committed)
            ]
            voided = {s.reference for s in ledger.void_many(voids) if s.ok}
            audits: list[dict[str, Any]] = []
            for item, d, txn, entry, c, v in planned:
                c_done = bool(c) and txn.reference in committed
                v_done = bool(v) and txn.reference in voided
                audits += self._settle_audits(
                    item, d, txn, entry, c if c_done else 0, v if v_done else 0, now
                )
                if (c and not c_done) or (v and not v_done):
                    back.append(item)
                else:
                    done.append((item, d, txn, entry))
            record_audits(conn, audits)
            self._tell_settled(conn, done, now)
            tx.commit()
        except Exception as exc:
            # What Blnk settled stands; the per-payment path reads every entry again and
            # finds those settled, with nothing left to do for them.
            if tx.is_active:
                tx.rollback()
            self._count("set_fallbacks")
            if isinstance(exc, TransientError):
                raise
            return list(items)
        self._settled(done)
        return back

    def _plain_settlement(
        self,
        item: Item,
        txn: Transaction | None,
        open_by_payment: Mapping[str, set[str]],
        now: datetime,
    ) -> tuple[Decision, Entry, int, int] | None:
        """(decision, entry, commit, void) when the entry, as locked, is only to be settled:
        no ticket to open or resolve, no record to create, still INFLIGHT; else None."""
        if txn is None or txn.status is not TxnStatus.INFLIGHT:
            return None  # settled or gone meanwhile: the single path sees it
        entry = to_entry(txn)
        if entry is None:
            return None
        d = decide(item.payment, entry, self.svc.policy, now)
        if d.ticket is not None or (d.resolves and open_by_payment.get(item.payment_id)):
            return None
        commit = 0
        if d.action is Action.COMMIT:
            if d.commit_amount is None:  # no amount named: never read as 0
                return None
            commit = d.commit_amount
        void = 0
        if d.action is Action.VOID or (d.action is Action.COMMIT and d.void_remainder):
            void = txn.remaining - commit
        if not (commit or void) or commit > txn.remaining:
            return None
        return d, entry, commit, void

    def _settle_audits(
        self,
        item: Item,
        d: Decision,
        txn: Transaction,
        entry: Entry,
        commit: int,
        void: int,
        now: datetime,
    ) -> list[dict[str, Any]]:
        """The audit rows of a settlement: one for the commit, one for the void."""
        common = {
            "run_id": self.run.id if self.run else None,
            "payment_id": item.payment_id,
            "reference": txn.reference,
            "reason": str(d.reason),
            "actor": self.actor,
            "now": now,
            "currency": txn.currency,
            "evidence": {
                **self.evidence,
                "stripe": tk.payment_state(item.payment),
                "ledger": tk.entry_state(entry),
                "decision": {"action": d.action.value, "reason": str(d.reason)},
            },
        }
        rows: list[dict[str, Any]] = []
        if commit:
            rows.append({**common, "action": "commit", "amount": commit})
        if void:
            action = "void" if d.action is Action.VOID else "void_remainder"
            rows.append({**common, "action": action, "amount": void})
        return rows

    def _tell_settled(
        self,
        conn: Connection,
        done: Sequence[tuple[Item, Decision, Transaction, Entry]],
        now: datetime,
    ) -> None:
        if self.svc.customer_updates:
            for item, d, _, entry in done:
                self._tell_customer(conn, item.payment_id, item.payment, entry, d, None, False, now)

    def _settled(self, done: Sequence[tuple[Item, Decision, Transaction, Entry]]) -> None:
        for item, d, txn, _ in done:
            self._count(d.action.value)
            self.svc.hooks.action(d.action.value)
            self.outcomes.append(
                PaymentOutcome(
                    item.payment_id,
                    d,
                    reference=txn.reference,
                    payment=item.payment,
                    currency=txn.currency,
                    amount=_moved(d, txn),
                )
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
                return self._apply(payment_id, payment, own, known_open, index=True)
        return self._apply(payment_id, payment, conn, known_open, index=False)

    def _apply(
        self,
        payment_id: str,
        payment: Payment | None,
        conn: Connection,
        known_open: bool | None,
        *,
        index: bool,
    ) -> PaymentOutcome:
        tx = conn.begin()
        try:
            outcome = self._apply_locked(conn, payment_id, payment, known_open, index=index)
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
        *,
        index: bool = False,
    ) -> PaymentOutcome:
        svc = self.svc
        with rehearsal(conn, self.dry_run):
            ledger = svc.ledger_for(conn)
        now = svc.clock()
        txn = ledger.find_linked(payment_id, lock=True)
        adjustments = load_adjustments(ledger, {payment_id: txn}) if txn is not None else {}
        entry = to_entry(txn, adjustments.get(payment_id, ()))
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
                action=d.action.value,
                payment=payment,
            )
            if resolved:
                self._count("ticket_resolved", len(resolved))
                note("tickets_resolved", reference)
        if svc.customer_updates:
            self._tell_customer(conn, payment_id, payment, entry, d, ticket_id, ticket_new, now)
        if index and not self.dry_run:
            seen = customers.sighting(
                payment_id,
                payment,
                entry,
                stripe_read=payment is not None,
                destination_key=svc.policy.destination_key,
            )
            if seen is not None:
                customers.record(conn, [seen], now)
        return PaymentOutcome(
            payment_id,
            d,
            reference=reference,
            ticket_id=ticket_id,
            ticket_new=ticket_new,
            resolved=tuple(resolved),
            payment=payment,
            currency=_currency(txn, payment),
            amount=_moved(d, txn),
            dry_run=self.dry_run,
        )

    def _tell_customer(
        self,
        conn: Connection,
        payment_id: str,
        payment: Payment | None,
        entry: Entry | None,
        d: Decision,
        ticket_id: int | None,
        ticket_new: bool,
        now: datetime,
    ) -> None:
        """Queue a customer.update for a change the customer may be waiting on.

        A commit counts when the customer waited for it (the entry was older than the
        sweep's threshold, so no timely webhook credited it); a void always does (their
        top-up failed); so do a new dispute or refund after credit.
        """
        change: str | None = None
        amount = _moved(d, None if entry is None else _txn_like(entry))
        currency = entry.currency if entry else (payment.currency if payment else None)
        message: str | None = None
        if d.action in (Action.COMMIT, Action.CREATE):
            waited = entry is None or now - entry.created_at > self.svc.sweep_min_age
            if waited:
                change = "credited"
                message = customer_message(PENDING, CustomerState.CREDITED, amount, currency)
        elif d.action is Action.VOID and entry is not None:
            change = "voided"
            amount = entry.remaining
            message = customer_message(PENDING, CustomerState.VOIDED, entry.amount, currency)
        elif (
            ticket_new
            and ticket_id is not None
            and d.ticket is not None
            and d.ticket.kind in (TicketKind.DISPUTE_OPENED, TicketKind.REFUND_AFTER_CREDIT)
        ):
            change = d.ticket.kind.value
            row = tk.get_ticket(conn, ticket_id)
            message = row["customer_message"] if row else None
            amount, currency = (row["amount"], row["currency"]) if row else (amount, currency)
        if change is None:
            return
        queue_change(
            conn,
            change,
            payment_id,
            payment,
            entry,
            amount,
            currency,
            message,
            now,
            ticket_id=ticket_id,
            destination_key=self.svc.policy.destination_key,
        )

    # -- duplicates ------------------------------------------------------------------------

    def duplicate(
        self, payment_id: str, payment: Payment | None, txn: Transaction, own: str
    ) -> PaymentOutcome:
        """``txn`` is a second entry linked to ``payment_id``, whose own entry is ``own``.

        The payment settles through its own entry only (``find_linked``), so this one would
        stay INFLIGHT forever: it is left unchanged and gets a ``duplicate_entry`` ticket.
        """
        now = self.svc.clock()
        spec = TicketSpec(TicketKind.DUPLICATE_ENTRY, Severity.HIGH)
        d = Decision(Action.TICKET, "duplicate_entry", ticket=spec)
        facts = tk.TicketFacts(
            payment_id=payment_id,
            payment=payment,
            entry=to_entry(txn),
            reason="duplicate_entry",
            now=now,
            dashboard_base=self.svc.dashboard_base,
            summary=(
                f"duplicate_entry: ledger entry {txn.reference} is linked to payment "
                f"{payment_id}, which already has its own entry {own}; "
                f"{txn.status.value} {txn.remaining} {txn.currency} held"
            ),
        )
        run_id = self.run.id if self.run else None
        with self.svc.engine.begin() as conn:
            nested = conn.begin_nested()
            raised = tk.raise_ticket(conn, spec, facts, run_id=run_id, sinks=self.svc.sinks)
            if raised.new:
                record_audit(
                    conn, run_id=run_id, payment_id=payment_id, reference=txn.reference,
                    action="ticket_opened", reason="duplicate_entry", actor=self.actor, now=now,
                    currency=txn.currency, evidence={"own_entry": own, **self.evidence},
                    ticket_id=raised.ticket_id,
                )  # fmt: skip
            if self.dry_run:
                nested.rollback()
            else:
                nested.commit()
        self._count("examined")
        self._count(Action.TICKET.value)
        self._count("ticket_opened" if raised.new else "ticket_bumped")
        if not self.dry_run and raised.new:
            self.svc.hooks.ticket(spec.kind.value, spec.severity.label)
        outcome = PaymentOutcome(
            payment_id,
            d,
            txn.reference,
            ticket_id=raised.ticket_id,
            ticket_new=raised.new,
            payment=payment,
            currency=txn.currency,
            dry_run=self.dry_run,
        )
        self.outcomes.append(outcome)
        return outcome

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
