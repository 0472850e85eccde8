"""A person closes a ticket, optionally fixing the ledger: ``recon tickets resolve ID``.

The operator's view may be hours old, so Stripe is read again first and any fix that Stripe
contradicts is refused (the checks are pure: reconcile/checks.py).  The fix goes through the
same write path as the automatic pipeline (``engine.act``), and the fix, its audit row and the
ticket's closing happen in one transaction so that none exists without the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger.protocol import rehearsal
from reconcile import tickets
from reconcile.checks import FixAction, check_fix
from reconcile.engine import AuditContext, Commit, Create, LedgerOp, Void, act, to_entry
from reconcile.model import TicketKind
from reconcile.ports import Services
from reconcile.runs import record_audit
from reconcile.stripe_gateway import StripeGateway
from reconcile.usecases.errors import BadRequest, NotFound

__all__ = ["FixAction", "Resolution", "resolve_ticket"]


@dataclass(frozen=True)
class Resolution:
    ticket_id: int
    action: str
    done: bool  # False: refused, nothing changed
    message: str
    dry_run: bool
    stripe: dict[str, Any] | None = None
    ledger_before: dict[str, Any] | None = None
    ledger_after: dict[str, Any] | None = None
    amount: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ticket_id": self.ticket_id,
            "action": self.action,
            "done": self.done,
            "message": self.message,
            "dry_run": self.dry_run,
            "amount": self.amount,
            "stripe": self.stripe,
            "ledger_before": self.ledger_before,
            "ledger_after": self.ledger_after,
        }


def resolve_ticket(
    svc: Services,
    ticket_id: int,
    action: FixAction,
    note: str,
    actor: str,
    *,
    dry_run: bool,
    gateway: StripeGateway,
) -> Resolution:
    """Re-check on Stripe, apply the fix if Stripe agrees, close the ticket; or refuse."""
    if not note.strip():
        raise BadRequest("--note must say why (it is the ticket's resolution)")
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
    payment = None if action is FixAction.NONE else gateway.retrieve(pid)
    stripe_state = None if action is FixAction.NONE else tickets.payment_state(payment)
    now = svc.clock()
    with svc.engine.begin() as conn:
        scope = conn.begin_nested()
        try:
            locked = tickets.get_ticket(conn, ticket_id, lock=True)
            if locked is None or locked["status"] != tickets.OPEN:
                scope.rollback()
                return Resolution(
                    ticket_id,
                    action.value,
                    False,
                    f"ticket {ticket_id} was closed meanwhile",
                    dry_run,
                )
            with rehearsal(conn, dry_run):
                ledger = svc.ledger_for(conn)
            txn = None if is_incident else ledger.find_linked(pid, lock=True)
            entry = to_entry(txn)
            before = None if is_incident else tickets.entry_state(entry)
            verdict = check_fix(
                action, payment, entry, svc.policy, ticket_balance=ticket.get("balance")
            )
            if verdict.refusal is not None:
                scope.rollback()
                return Resolution(
                    ticket_id, action.value, False, verdict.refusal, dry_run, stripe_state, before
                )
            op: LedgerOp | None = None
            if action is FixAction.COMMIT and txn is not None and verdict.amount:
                op = Commit(txn.reference, verdict.amount, f"recon:manual-commit:{ticket_id}")
            elif action is FixAction.VOID and txn is not None:
                op = Void(txn.reference, txn.remaining, f"recon:manual-void:{ticket_id}")
            elif action is FixAction.CREATE_RECORD and verdict.create is not None:
                op = Create(verdict.create, pid, created_by=f"recon:manual:{actor}")
            after = txn
            evidence = {"stripe": stripe_state, "ledger_before": before, "note": note}
            if op is not None:
                ctx = AuditContext(
                    run_id=None,
                    payment_id=pid,
                    actor=actor,
                    reason=f"manual:{action.value}",
                    now=now,
                    evidence=evidence,
                    ticket_id=ticket_id,
                )
                after = act(conn, ledger, op, ctx)
            else:
                record_audit(
                    conn,
                    run_id=None,
                    payment_id=None if is_incident else pid,
                    reference=txn.reference if txn else None,
                    action="ticket_resolved",
                    reason=f"manual:{action.value}",
                    actor=actor,
                    now=now,
                    currency=ticket.get("currency"),
                    evidence=evidence,
                    ticket_id=ticket_id,
                )
            tickets.close_ticket(conn, ticket_id, by=actor, note=note, now=now)
            ledger_after = None if is_incident else tickets.entry_state(to_entry(after))
        except BaseException:
            scope.rollback()
            raise
        if dry_run:
            scope.rollback()
        else:
            scope.commit()
    amount = verdict.amount
    what = {
        FixAction.COMMIT: f"committed {amount}",
        FixAction.VOID: f"voided {amount}",
        FixAction.CREATE_RECORD: f"created an APPLIED record of {amount}",
        FixAction.NONE: "no ledger change",
    }[action]
    prefix = "dry run, nothing written: would have " if dry_run else ""
    return Resolution(
        ticket_id,
        action.value,
        True,
        f"{prefix}{what}; ticket {ticket_id} resolved by {actor}",
        dry_run,
        stripe_state,
        before,
        ledger_after,
        amount,
    )
