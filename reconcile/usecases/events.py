"""Stripe events: process one stored event, replay one on demand (``recon replay EVT``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from ledger.model import TxnStatus
from reconcile import inbox, tickets
from reconcile.engine import Pass, PaymentOutcome
from reconcile.model import Payment, PaymentStatus, Severity, TicketKind, TicketSpec
from reconcile.ports import Services
from reconcile.redact import describe
from reconcile.runs import RunResult, RunState
from reconcile.stripe_gateway import StripeGateway
from reconcile.stripe_objects import fraud_warning_from_stripe, payment_from_stripe
from reconcile.usecases.errors import NotFound
from reconcile.usecases.lifecycle import begin, finish
from reconcile.usecases.payments import reconcile_payment


@dataclass(frozen=True)
class ProcessOutcome:
    status: str  # processed | ignored | failed | missing | already
    detail: str = ""
    payment_id: str | None = None
    outcome: PaymentOutcome | None = None


# Events that can only lead to WAIT while the entry is young: the sweep looks at the entry
# once it is older than sweep_min_age, so reading Stripe for them earlier buys nothing.
WAIT_ONLY = frozenset(
    {"payment_intent.created", "payment_intent.requires_action", "payment_intent.processing"}
)


def process_event(
    svc: Services,
    event_id: str,
    *,
    actor: str = "system",
    gateway: StripeGateway | None = None,
    dry_run: bool = False,
    force: bool = False,
    run: RunState | None = None,
) -> ProcessOutcome:
    """Process one stored event: map it to its PaymentIntent and reconcile that payment.

    Safe to run twice, concurrently or out of order: it acts on the event's payload alone
    only when the payload is terminal (succeeded/canceled) and the entry is INFLIGHT, and
    then decides nothing the payload cannot see (refunds, disputes: reconcile/decide.py);
    otherwise it re-reads the PaymentIntent with its charge, so a stale event acts on
    today's state.
    """
    now = svc.clock()
    with svc.engine.connect() as conn:
        row = inbox.load(conn, event_id)
    if row is None:
        return ProcessOutcome("missing", f"no inbox row for {event_id}")
    if row.status in ("processed", "ignored") and not force:
        return ProcessOutcome("already", row.status, row.payment_id)
    refusal = _foreign(svc, row)
    if refusal is not None:
        if not dry_run:
            # One transaction: an event shown as ignored always has its incident beside it.
            with svc.engine.begin() as conn:
                inbox.mark_ignored(conn, event_id, now, refusal[1])
                _refuse(svc, conn, *refusal, run=run)
        return ProcessOutcome("ignored", refusal[1], row.payment_id)
    if not inbox.is_handled(row.type):
        return _ignore(svc, event_id, f"event type {row.type} names no PaymentIntent", dry_run)
    gw = gateway
    pid = row.payment_id
    try:
        if pid is None:
            related = inbox.related_object(row.payload)
            if related is None:
                return _ignore(svc, event_id, f"event {row.type} names no PaymentIntent", dry_run)
            gw = gw or svc.new_gateway()
            pid = gw.payment_intent_of(*related)
            if pid is None:
                return _ignore(
                    svc, event_id, f"{related[0]} {related[1]} belongs to no PaymentIntent", dry_run
                )
        evidence = {"event_id": event_id, "event_type": row.type}
        if _wait_only(svc, row, pid, now):
            if not dry_run:
                with svc.engine.begin() as conn:
                    inbox.mark_processed(conn, event_id, svc.clock())
            return ProcessOutcome("processed", "waits for the sweep (no Stripe read)", pid)
        payment = payment_for_event(svc, row.payload, pid, gw)
        p = Pass(svc, run=run, actor=actor, dry_run=dry_run, guarded=False, evidence=evidence)
        outcome = p.apply(pid, payment)
        if outcome.error:
            raise RuntimeError(outcome.error)
    except Exception as exc:
        if not dry_run:
            with svc.engine.begin() as conn:
                inbox.mark_failed(conn, event_id, describe(exc), svc.clock())
        raise
    if not dry_run:
        with svc.engine.begin() as conn:
            inbox.mark_processed(conn, event_id, svc.clock())
    return ProcessOutcome("processed", str(outcome.decision.reason), pid, outcome)


def _ignore(svc: Services, event_id: str, why: str, dry_run: bool) -> ProcessOutcome:
    if not dry_run:
        with svc.engine.begin() as conn:
            inbox.mark_ignored(conn, event_id, svc.clock(), why)
    return ProcessOutcome("ignored", why)


def _foreign(svc: Services, row: inbox.InboxRow) -> tuple[str, str] | None:
    """(cause, why) when the event belongs to another mode or Connect account than ours."""
    payload = row.payload
    if svc.livemode is not None and row.livemode is not svc.livemode:
        mode = "live" if row.livemode else "test"
        ours = "live" if svc.livemode else "test"
        return (
            f"livemode:{mode}",
            f"a {mode}-mode event reached a service whose API key is {ours}-mode",
        )
    account = payload.get("account") if not inbox.is_thin(payload) else payload.get("context")
    if account and account not in svc.accounts:
        shown = str(account)[:60]
        return (f"account:{shown}", f"an event of Connect account {shown}, not configured here")
    return None


def _refuse(svc: Services, conn: Connection, cause: str, why: str, *, run: RunState | None) -> None:
    """One incident ticket per cause (repeats bump it) and a metric: someone must fix the
    webhook endpoint or the key, and until then these events change nothing."""
    svc.hooks.event_refused(cause.split(":", 1)[0])
    summary = (
        f"Events are being stored but not acted on: {why}. Check which Stripe account and "
        "mode the webhook endpoint belongs to, STRIPE_API_KEY and RECON_STRIPE_ACCOUNTS."
    )
    now = svc.clock()
    facts = tickets.TicketFacts(
        payment_id=f"events:{cause}",
        payment=None,
        entry=None,
        reason="event_refused",
        now=now,
        summary=summary,
    )
    spec = TicketSpec(TicketKind.INCIDENT, Severity.HIGH)
    tickets.raise_ticket(conn, spec, facts, run_id=run.id if run else None, sinks=svc.sinks)


def _wait_only(svc: Services, row: inbox.InboxRow, pid: str, now: datetime) -> bool:
    if inbox.v1_type(row.type) not in WAIT_ONLY:
        return False
    with svc.engine.connect() as conn:
        txn = svc.ledger_for(conn).find_linked(pid)
    if txn is None:
        # Not succeeded and no record: the table says nothing to do.
        return True
    return txn.status is TxnStatus.INFLIGHT and now - txn.created_at < svc.sweep_min_age


def payment_for_event(
    svc: Services, payload: Mapping[str, Any], pid: str, gateway: StripeGateway | None
) -> Payment | None:
    """What Stripe says about the event's payment: the payload when it is authoritative
    (a terminal status, the entry still INFLIGHT, the evidence complete), else a fresh read
    with the charge expanded."""
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    obj = obj if isinstance(obj, Mapping) else {}
    if (
        not inbox.is_thin(payload)
        and obj.get("object") == "payment_intent"
        and obj.get("id") == pid
    ):
        # A terminal status never changes again, so the payload is authoritative for acting
        # on an INFLIGHT entry: commit or void at once.  It never carries refunds or
        # disputes, so with no entry (create_missing) or a settled one, re-read instead.
        with svc.engine.connect() as conn:
            txn = svc.ledger_for(conn).find_linked(pid)
        if txn is not None and txn.status is TxnStatus.INFLIGHT:
            version = payload.get("api_version")
            rendered_in = version if isinstance(version, str) else None
            seen = payment_from_stripe(obj, api_version=rendered_in)
            if seen.problems:
                # Signed but malformed (``amount_received: true``, ``4999.9``, a currency
                # that is not ISO 4217, a status nobody knows): from Stripe a bug, from
                # anyone else a leaked secret.  Either way nothing moves on it, whatever
                # Stripe would say if asked: decided as it is, it opens an
                # unverifiable_payment ticket; the sweep reads the payment afresh later.
                return seen
            # A payload without the evidence (an old version's, without amount_received)
            # is no reason for a ticket while Stripe can still be asked.
            if seen.status is PaymentStatus.CANCELED or (
                seen.status is PaymentStatus.SUCCEEDED
                and seen.amount_received is not None
                and seen.currency is not None
            ):
                return seen
    payment = (gateway or svc.new_gateway()).retrieve(pid)
    if payment is not None and obj.get("object") == "radar.early_fraud_warning":
        # The warning itself is the evidence: the PaymentIntent does not show it.
        payment = replace(payment, fraud_warnings=(fraud_warning_from_stripe(obj),))
    return payment


@dataclass(frozen=True)
class ReplayResult:
    run: RunResult
    event_id: str
    # processed | ignored | already | failed, or "not_stored" for a dry run of an event
    # that only Stripe has (it was rehearsed on its payment instead).
    event_status: str
    detail: str = ""
    payment_id: str | None = None
    fetched: bool = False  # the event came from Stripe, not the inbox
    outcome: PaymentOutcome | None = None


def replay_event(
    svc: Services,
    event_id: str,
    *,
    actor: str,
    dry_run: bool = False,
    gateway: StripeGateway | None = None,
    rerun_of: int | None = None,
) -> ReplayResult:
    """Process one event again, fetching it from Stripe when the inbox does not have it."""
    gw = gateway or svc.new_gateway()
    trigger = "rerun" if rerun_of else "cli"
    with svc.engine.connect() as conn:
        row = inbox.load(conn, event_id)
    fetched = False
    if row is None:
        event = gw.retrieve_event(event_id)
        if event is None:
            raise NotFound(f"event {event_id} is neither in the inbox nor on Stripe")
        fetched = True
        if dry_run:
            # Nothing may be written, and process_event only reads stored events: rehearse
            # on the payment the event names instead.
            pid = inbox.event_payment_id(event)
            if pid is None:
                raise NotFound(f"event {event_id} ({event.get('type')}) names no PaymentIntent")
            result, outcome = reconcile_payment(
                svc, pid, actor=actor, dry_run=True, trigger=trigger, gateway=gw, rerun_of=rerun_of
            )
            return ReplayResult(result, event_id, "not_stored", "", pid, True, outcome)
        with svc.engine.begin() as conn:
            inbox.store_event(conn, event, source="replay", now=svc.clock())
    state = begin(
        svc, "replay", trigger, actor, dry_run, params={"event_id": event_id}, rerun_of=rerun_of
    )
    res: ProcessOutcome | None
    try:
        res = process_event(
            svc, event_id, actor=actor, gateway=gw, dry_run=dry_run, force=True, run=state
        )
    except Exception as exc:  # recorded on the run and shown, not dumped as a trace
        state.errors.append(describe(exc))
        res = None
    if res is not None:
        state.counts["events_" + res.status] += 1
    status = finish(svc, state, gw)
    svc.hooks.run(state.job, status)
    plan = [res.outcome.as_plan()] if res is not None and res.outcome else []
    result = RunResult(
        state.id, status, dict(state.counts), list(state.errors), plan, dry_run=dry_run
    )
    if res is None:
        return ReplayResult(result, event_id, "failed", "", None, fetched)
    return ReplayResult(
        result, event_id, res.status, res.detail, res.payment_id, fetched, res.outcome
    )
