"""Stripe events: process one stored event, replay one on demand (``recon replay EVT``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconcile import inbox
from reconcile.engine import Pass, PaymentOutcome
from reconcile.model import EntryStatus, Payment, PaymentStatus
from reconcile.ports import Services
from reconcile.runs import RunResult, RunState, finish_run
from reconcile.stripe_gateway import StripeGateway
from reconcile.stripe_objects import payment_from_stripe
from reconcile.usecases.errors import NotFound
from reconcile.usecases.lifecycle import begin
from reconcile.usecases.payments import reconcile_payment


@dataclass(frozen=True)
class ProcessOutcome:
    status: str  # processed | ignored | failed | missing | already
    detail: str = ""
    payment_id: str | None = None
    outcome: PaymentOutcome | None = None


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

    Safe to run twice, concurrently or out of order: it never acts on the event's payload
    alone unless the payload is terminal (succeeded/canceled) and the entry still INFLIGHT;
    otherwise it re-reads the PaymentIntent, so a stale event acts on today's state.
    """
    now = svc.clock()
    with svc.engine.connect() as conn:
        row = inbox.load(conn, event_id)
    if row is None:
        return ProcessOutcome("missing", f"no inbox row for {event_id}")
    if row.status in ("processed", "ignored") and not force:
        return ProcessOutcome("already", row.status, row.payment_id)
    pid = row.payment_id
    if pid is None or not inbox.is_handled(row.type):
        if not dry_run:
            with svc.engine.begin() as conn:
                inbox.mark_ignored(conn, event_id, now)
        return ProcessOutcome("ignored", f"event type {row.type} names no PaymentIntent", pid)
    try:
        payment = payment_for_event(svc, row.payload, pid, gateway)
        p = Pass(
            svc,
            run=run,
            actor=actor,
            dry_run=dry_run,
            guarded=False,
            evidence={"event_id": event_id, "event_type": row.type},
        )
        outcome = p.apply(pid, payment)
        if outcome.error:
            raise RuntimeError(outcome.error)
    except Exception as exc:
        if not dry_run:
            with svc.engine.begin() as conn:
                inbox.mark_failed(conn, event_id, f"{type(exc).__name__}: {exc}", svc.clock())
        raise
    if not dry_run:
        with svc.engine.begin() as conn:
            inbox.mark_processed(conn, event_id, svc.clock())
    return ProcessOutcome("processed", str(outcome.decision.reason), pid, outcome)


def payment_for_event(
    svc: Services, payload: Mapping[str, Any], pid: str, gateway: StripeGateway | None
) -> Payment | None:
    """What Stripe says about the event's payment: the payload when it is authoritative
    (terminal, entry still INFLIGHT), else a fresh read."""
    obj = (payload.get("data") or {}).get("object") or {}
    if obj.get("object") == "payment_intent" and obj.get("id") == pid:
        status = obj.get("status")
        if status in (PaymentStatus.SUCCEEDED.value, PaymentStatus.CANCELED.value):
            # A terminal status never changes again, so the payload is authoritative for
            # acting on an INFLIGHT entry.  Once the entry is settled we re-read instead:
            # refunds and disputes live on the charge, which the payload does not expand.
            with svc.engine.connect() as conn:
                txn = svc.ledger_for(conn).find_linked(pid)
            if txn is None or txn.status.value == EntryStatus.INFLIGHT.value:
                return payment_from_stripe(obj)
    return (gateway or svc.new_gateway()).retrieve(pid)


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
        state.errors.append(f"{type(exc).__name__}: {exc}")
        res = None
    if res is not None:
        state.counts["events_" + res.status] += 1
    status = finish_run(svc.engine, state, now=svc.clock(), stripe=gw.snapshot())
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
