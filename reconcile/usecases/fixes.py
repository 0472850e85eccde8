"""A person fixes the ledger: ``recon tickets resolve ID``, ``recon ledger commit|void PI``.

The operator's view may be hours old, so Stripe is read again first and any fix that Stripe
contradicts is refused (the checks are pure: reconcile/checks.py).  The fix goes through the
same write path as the automatic pipeline (``engine.act``): one audit row naming the
operator, the reason (their note) and the evidence (what Stripe and the ledger said).  The
fix, its audit row and the ticket's closing happen in one transaction so that none exists
without the others.

Fixes:
- ``commit``: the hold, for what Stripe received (stuck payment that has since succeeded);
- ``void``: the hold of a failed, canceled or unknown payment, also early, within the grace
  period the automatic pipeline leaves the customer to retry;
- ``create-record``: an APPLIED record for a paid payment the ledger never heard of;
- ``credit``: paid but voided, a new APPLIED transaction (reference ``PI:credit``) for what
  Stripe kept and the wallet lacks;
- ``reverse``: credited but failed, or refunded after credit: a transaction the other way
  (reference ``PI:reversal``) for the failed or refunded amount, never more than credited;
- ``none``: close the ticket, no ledger change (needs no Stripe read).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from ledger.model import Transaction, TxnStatus
from ledger.protocol import rehearsal
from reconcile import tickets
from reconcile.checks import FixAction, FixCheck, check_fix
from reconcile.engine import (
    AuditContext,
    Commit,
    Create,
    Credit,
    LedgerOp,
    Reverse,
    Void,
    act,
    load_adjustments,
    queue_change,
    to_entry,
)
from reconcile.messages import PENDING, customer_message, money_text, resolved_state
from reconcile.model import Payment, TicketKind
from reconcile.ports import Services
from reconcile.runs import record_audit
from reconcile.stripe_gateway import StripeGateway
from reconcile.usecases.errors import BadRequest, NotFound

__all__ = ["FixAction", "Resolution", "fix_payment", "resolve_ticket"]

NOTE_MAX = 2000


@dataclass(frozen=True)
class Resolution:
    """What a fix did (``done``) or why it was refused; plain values for any presenter."""

    ticket_id: int | None
    action: str
    done: bool  # False: refused, nothing changed
    message: str
    dry_run: bool
    stripe: dict[str, Any] | None = None
    ledger_before: dict[str, Any] | None = None
    ledger_after: dict[str, Any] | None = None
    amount: int | None = None
    currency: str | None = None
    payment_id: str | None = None
    customer_message: str | None = None
    resolved_tickets: tuple[int, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ticket_id": self.ticket_id,
            "payment_id": self.payment_id,
            "action": self.action,
            "done": self.done,
            "message": self.message,
            "dry_run": self.dry_run,
            "amount": self.amount,
            "currency": self.currency,
            "amount_formatted": money_text(self.amount, self.currency),
            "customer_message": self.customer_message,
            "resolved_tickets": list(self.resolved_tickets),
            "stripe": self.stripe,
            "ledger_before": self.ledger_before,
            "ledger_after": self.ledger_after,
        }


def describe_payment(payment: Payment | None) -> str:
    """Stripe's amounts in words, major units with the currency."""
    if payment is None:
        return ""

    def fmt(n: int | None) -> str:
        if n is None:
            return "unknown"
        return money_text(n, payment.currency) or f"{n} (currency {payment.currency!r} unknown)"

    parts = [f"amount {fmt(payment.amount)}", f"received {fmt(payment.amount_received)}"]
    if payment.amount_refunded:
        parts.append(f"refunded {fmt(payment.amount_refunded)}")
    return "; " + ", ".join(parts)


def _check_duplicate_void(txn: Transaction | None, own: Transaction | None) -> FixCheck:
    """A duplicate hold may be voided while it is INFLIGHT and is not the payment's own."""
    if txn is None or txn.status is not TxnStatus.INFLIGHT:
        state = txn.status.value if txn is not None else "gone"
        return FixCheck(refusal=f"refused: nothing to void, the duplicate entry is {state}")
    if own is None or own.reference == txn.reference:
        return FixCheck(
            refusal=f"refused: {txn.reference} is now the payment's own entry, not a duplicate"
        )
    return FixCheck(amount=txn.remaining)


def _check_note(note: str) -> str:
    note = note.strip()
    if not note:
        raise BadRequest("--note must say why (it is stored with the fix and the ticket)")
    if len(note) > NOTE_MAX:
        raise BadRequest(f"--note is longer than {NOTE_MAX} characters")
    if "\x00" in note:
        # PostgreSQL text cannot hold NUL: refused here, not reported as a database outage.
        raise BadRequest("--note contains a NUL character, which cannot be stored")
    return note


def _op(
    action: FixAction, txn: Transaction | None, verdict: FixCheck, pid: str, actor: str, key: str
) -> LedgerOp | None:
    amount = verdict.amount
    if action is FixAction.CREATE_RECORD and verdict.create is not None:
        return Create(verdict.create, pid, created_by=f"recon:manual:{actor}")
    if txn is None or not amount:
        return None
    if action is FixAction.COMMIT:
        return Commit(txn.reference, amount, f"recon:manual-commit:{key}")
    if action is FixAction.VOID:
        return Void(txn.reference, txn.remaining, f"recon:manual-void:{key}")
    if action is FixAction.CREDIT:
        return Credit(txn, pid, amount, created_by=f"recon:manual:{actor}")
    if action is FixAction.REVERSE:
        return Reverse(txn, pid, amount, created_by=f"recon:manual:{actor}")
    return None


@dataclass
class _Outcome:
    verdict: FixCheck
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    currency: str | None
    resolved: tuple[int, ...] = ()
    customer_message: str | None = None


def _apply(
    svc: Services,
    conn: Connection,
    *,
    pid: str | None,
    action: FixAction,
    payment: Payment | None,
    stripe_state: dict[str, Any] | None,
    note: str,
    actor: str,
    ticket: dict[str, Any] | None,
    dry_run: bool,
) -> _Outcome:
    """Check and apply one fix on the caller's transaction (which commits or rolls back)."""
    now = svc.clock()
    # A rehearsal: a ledger whose writes would not roll back with ours (Blnk) sends none.
    with rehearsal(conn, dry_run):
        ledger = svc.ledger_for(conn)
    txn = ledger.find_linked(pid, lock=True) if pid is not None else None
    duplicate = ticket is not None and ticket["kind"] == TicketKind.DUPLICATE_ENTRY.value
    if duplicate and action is FixAction.VOID and ticket is not None:
        # The ticket's reference is the second entry; the payment's own one is never touched.
        own = txn
        txn = ledger.get(str(ticket["reference"] or ""), lock=True)
        adjustments: dict[str, list[Transaction]] = {}
        entry = to_entry(txn)
        verdict = _check_duplicate_void(txn, own)
    else:
        adjustments = load_adjustments(ledger, {pid: txn}) if pid is not None and txn else {}
        entry = to_entry(txn, adjustments.get(pid or "", ()))
        verdict = check_fix(
            action,
            payment,
            entry,
            svc.policy,
            ticket_balance=ticket.get("balance") if ticket else None,
        )
    before = tickets.entry_state(entry) if pid is not None else None
    currency = (payment.currency if payment else None) or (entry.currency if entry else None)
    if ticket is not None and not currency:
        currency = ticket.get("currency")
    if verdict.refusal is not None:
        return _Outcome(verdict, before, None, currency)
    ticket_id = int(ticket["id"]) if ticket is not None else None
    evidence = {"stripe": stripe_state, "ledger_before": before, "note": note}
    reason = f"manual:{action.value}"
    op = _op(action, txn, verdict, pid or "", actor, str(ticket_id) if ticket_id else pid or "")
    after_txn = txn
    if op is not None:
        ctx = AuditContext(
            run_id=None,
            payment_id=pid,
            actor=actor,
            reason=reason,
            now=now,
            evidence=evidence,
            ticket_id=ticket_id,
        )
        after_txn = act(conn, ledger, op, ctx)
        if not duplicate:
            after_txn = ledger.find_linked(pid, lock=True) if pid is not None else None
    else:
        record_audit(
            conn,
            run_id=None,
            payment_id=pid,
            reference=txn.reference if txn else None,
            action="ticket_resolved",
            reason=reason,
            actor=actor,
            now=now,
            currency=currency,
            evidence=evidence,
            ticket_id=ticket_id,
        )
    after = None
    if pid is not None:
        adjusted = load_adjustments(ledger, {pid: after_txn}) if after_txn else {}
        after = tickets.entry_state(to_entry(after_txn, adjusted.get(pid, ())))
    state = resolved_state(action.value, payment)
    message: str | None = None
    resolved: tuple[int, ...] = ()
    if ticket_id is not None:
        message = tickets.close_ticket(conn, ticket_id, by=actor, note=note, now=now, state=state)
        resolved = (ticket_id,)
    elif pid is not None:
        # A fix made from the payment rather than its ticket settles its open tickets too.
        resolved = tuple(
            tickets.resolve_open(
                conn,
                pid,
                reason=f"fixed by hand ({action.value}): {note}",
                by=actor,
                now=now,
                action=action.value,
                payment=payment,
            )
        )
    if svc.customer_updates and op is not None and pid is not None:
        change = {
            FixAction.COMMIT: "credited",
            FixAction.CREDIT: "credited",
            FixAction.CREATE_RECORD: "credited",
            FixAction.REVERSE: "reversed",
            FixAction.VOID: "voided",
        }[action]
        queue_change(
            conn,
            change,
            pid,
            payment,
            entry,
            verdict.amount,
            currency,
            message or customer_message(PENDING, state, verdict.amount, currency),
            now,
            ticket_id=ticket_id,
            destination_key=svc.policy.destination_key,
        )
    return _Outcome(verdict, before, after, currency, resolved, message)


def _done_message(
    action: FixAction, out: _Outcome, actor: str, dry_run: bool, what_for: str
) -> str:
    money = money_text(out.verdict.amount, out.currency) or str(out.verdict.amount)
    what = {
        FixAction.COMMIT: f"committed {money}",
        FixAction.VOID: f"voided the hold of {money}",
        FixAction.CREATE_RECORD: f"created an APPLIED record of {money}",
        FixAction.CREDIT: f"credited {money} (a new APPLIED transaction)",
        FixAction.REVERSE: f"reversed {money} (taken back from the wallet)",
        FixAction.NONE: "no ledger change",
    }[action]
    prefix = "dry run, nothing written: would have " if dry_run else ""
    return f"{prefix}{what}; {what_for} by {actor}"


def resolve_ticket(
    svc: Services,
    ticket_id: int,
    action: FixAction,
    note: str,
    actor: str,
    *,
    dry_run: bool,
    gateway: StripeGateway | None = None,
) -> Resolution:
    """Re-check on Stripe, apply the fix if Stripe agrees, close the ticket; or refuse."""
    note = _check_note(note)
    with svc.engine.connect() as conn:
        ticket = tickets.get_ticket(conn, ticket_id)
    if ticket is None:
        raise NotFound(f"no ticket {ticket_id}")
    if ticket["status"] != tickets.OPEN:
        return Resolution(
            ticket_id,
            action.value,
            False,
            f"ticket {ticket_id} is already {ticket['status']} "
            f"(by {ticket['resolved_by']}: {ticket['resolution']})",
            dry_run,
        )
    pid = str(ticket["payment_id"])
    is_incident = ticket["kind"] == TicketKind.INCIDENT.value
    if is_incident and action is not FixAction.NONE:
        raise BadRequest("an incident ticket has no payment: only --action none applies")
    # "none" changes no money, so it needs no Stripe read; anything else must see today's
    # state, not what the ticket recorded.
    payment = None if action is FixAction.NONE else (gateway or svc.new_gateway()).retrieve(pid)
    stripe_state = None if action is FixAction.NONE else tickets.payment_state(payment)

    def work(conn: Connection) -> _Outcome | None:
        locked = tickets.get_ticket(conn, ticket_id, lock=True)
        if locked is None or locked["status"] != tickets.OPEN:
            return None
        return _apply(
            svc,
            conn,
            pid=None if is_incident else pid,
            action=action,
            payment=payment,
            stripe_state=stripe_state,
            note=note,
            actor=actor,
            ticket=locked,
            dry_run=dry_run,
        )

    out = _in_scope(svc, dry_run, work)
    if out is None:
        return Resolution(
            ticket_id, action.value, False, f"ticket {ticket_id} was closed meanwhile", dry_run
        )
    if out.verdict.refusal is not None:
        return _refused(ticket_id, action, out, payment, stripe_state, pid, dry_run)
    return Resolution(
        ticket_id,
        action.value,
        True,
        _done_message(action, out, actor, dry_run, f"ticket {ticket_id} resolved"),
        dry_run,
        stripe_state,
        out.before,
        out.after,
        out.verdict.amount,
        out.currency,
        None if is_incident else pid,
        out.customer_message,
        out.resolved,
    )


def fix_payment(
    svc: Services,
    payment_id: str,
    action: FixAction,
    note: str,
    actor: str,
    *,
    dry_run: bool,
    gateway: StripeGateway | None = None,
) -> Resolution:
    """The same checked fix, from a payment rather than a ticket (``recon ledger commit|void``).

    For what has no ticket yet: an early void of a payment that failed within the grace
    period, a commit of one that has just succeeded.  Open tickets of the payment close
    with it.
    """
    note = _check_note(note)
    if action is FixAction.NONE:
        raise BadRequest("--action none closes a ticket: use `recon tickets resolve`")
    with svc.engine.connect() as conn:
        known = svc.ledger_for(conn).find_linked(payment_id)
    payment = (gateway or svc.new_gateway()).retrieve(payment_id)
    if payment is None and known is None:
        raise NotFound(f"{payment_id} is neither in the ledger nor on Stripe")
    stripe_state = tickets.payment_state(payment)

    def work(conn: Connection) -> _Outcome:
        return _apply(
            svc,
            conn,
            pid=payment_id,
            action=action,
            payment=payment,
            stripe_state=stripe_state,
            note=note,
            actor=actor,
            ticket=None,
            dry_run=dry_run,
        )

    out = _in_scope(svc, dry_run, work)
    assert out is not None
    if out.verdict.refusal is not None:
        return _refused(None, action, out, payment, stripe_state, payment_id, dry_run)
    closed = (
        f"; tickets {', '.join(f'#{t}' for t in out.resolved)} resolved" if out.resolved else ""
    )
    return Resolution(
        None,
        action.value,
        True,
        _done_message(action, out, actor, dry_run, f"{payment_id} fixed") + closed,
        dry_run,
        stripe_state,
        out.before,
        out.after,
        out.verdict.amount,
        out.currency,
        payment_id,
        out.customer_message,
        out.resolved,
    )


def _in_scope(
    svc: Services, dry_run: bool, work: Callable[[Connection], _Outcome | None]
) -> _Outcome | None:
    """Run one fix in a savepoint that is kept only when it was done for real: a dry run,
    a refusal or a ticket closed meanwhile (``None``) leave nothing behind."""
    with svc.engine.begin() as conn:
        scope = conn.begin_nested()
        try:
            out = work(conn)
        except BaseException:
            scope.rollback()
            raise
        if out is None or dry_run or out.verdict.refusal is not None:
            scope.rollback()
        else:
            scope.commit()
    return out


def _refused(
    ticket_id: int | None,
    action: FixAction,
    out: _Outcome,
    payment: Payment | None,
    stripe_state: dict[str, Any] | None,
    payment_id: str,
    dry_run: bool,
) -> Resolution:
    assert out.verdict.refusal is not None
    return Resolution(
        ticket_id,
        action.value,
        False,
        out.verdict.refusal + describe_payment(payment),
        dry_run,
        stripe_state,
        out.before,
        payment_id=payment_id,
        currency=out.currency,
    )
