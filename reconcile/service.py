"""The use cases: process one event, reconcile one payment, and the three scheduled jobs.

Each job records a run (job, window, trigger, dry-run, counts, Stripe calls, errors).  A run
cut short by Stripe (rate limits or errors that outlast the retries) or by the blast-radius
guard ends ``partial``, never ``succeeded``; the next run resumes: the sweep because the
entries are still INFLIGHT, catch-up from its stored cursor, the scan from the resume point
recorded on the partial run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from reconcile import inbox
from reconcile.engine import GuardTripped, Item, Outcome, Pass, Services, payment_id_of
from reconcile.model import EntryStatus, PaymentStatus
from reconcile.runs import FAILED, RunResult, RunState, finish_run, last_run, start_run
from reconcile.stripe_gateway import (
    StripeGateway,
    StripeGatewayError,
    StripeUnavailable,
    payment_from_stripe,
)
from reconcile.tables import cursors

__all__ = [
    "ProcessOutcome",
    "RunResult",
    "Services",
    "process_event",
    "reconcile_payment",
    "run_catch_up",
    "run_scan",
    "run_sweep",
]

CATCH_UP_CURSOR = "catch_up.events_created"
# Events overlap this much between catch-up runs: Stripe timestamps are whole seconds and
# events of one second may straddle a run; the inbox drops the repeats.
CURSOR_OVERLAP = 60
CATCH_UP_TYPES = (
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "payment_intent.processing",
    "payment_intent.requires_action",
    "payment_intent.amount_capturable_updated",
    "payment_intent.partially_funded",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
)


@dataclass(frozen=True)
class ProcessOutcome:
    status: str  # processed | ignored | failed | missing | already
    detail: str = ""
    payment_id: str | None = None
    outcome: Outcome | None = None


def _begin(svc: Services, job: str, trigger: str, actor: str, dry_run: bool, **kw: Any) -> RunState:
    return start_run(
        svc.engine, job=job, trigger=trigger, actor=actor, dry_run=dry_run, now=svc.clock(), **kw
    )


def _end(
    svc: Services, state: RunState, gateway: StripeGateway | None, p: Pass | None
) -> RunResult:
    status = finish_run(
        svc.engine, state, now=svc.clock(), stripe=gateway.snapshot() if gateway else None
    )
    svc.hooks.run(state.job, status)
    return RunResult(
        run_id=state.id,
        status=status,
        counts=dict(state.counts),
        errors=list(state.errors),
        plan=p.plan() if p else [],
    )


def _fail(
    svc: Services, state: RunState, gateway: StripeGateway | None, exc: BaseException
) -> None:
    state.errors.append(f"{type(exc).__name__}: {exc}")
    finish_run(
        svc.engine,
        state,
        now=svc.clock(),
        stripe=gateway.snapshot() if gateway else None,
        status=FAILED,
    )
    svc.hooks.run(state.job, FAILED)


def _cut(state: RunState, p: Pass, job: str, exc: Exception) -> None:
    if isinstance(exc, GuardTripped):
        state.cut_short = f"blast-radius guard: {exc.why}"
        p.open_incident(job, exc.why)
    else:
        state.cut_short = f"stripe: {exc}"
        state.errors.append(f"{type(exc).__name__}: {exc}")


# -- one payment ----------------------------------------------------------------------------


def reconcile_payment(
    svc: Services,
    payment_id: str,
    *,
    actor: str = "system",
    dry_run: bool = False,
    trigger: str = "cli",
    gateway: StripeGateway | None = None,
    rerun_of: int | None = None,
) -> tuple[RunResult, Outcome]:
    """Re-read one payment on Stripe and reconcile it (``recon payment PI_ID``)."""
    gw = gateway or svc.new_gateway()
    state = _begin(
        svc,
        "payment",
        trigger,
        actor,
        dry_run,
        params={"payment_id": payment_id},
        rerun_of=rerun_of,
    )
    p = Pass(svc, run=state, actor=actor, dry_run=dry_run, guarded=False)
    try:
        payment = gw.retrieve(payment_id)
        outcome = p.apply(payment_id, payment)
    except StripeGatewayError as exc:
        _fail(svc, state, gw, exc)
        raise
    except BaseException as exc:
        _fail(svc, state, gw, exc)
        raise
    return _end(svc, state, gw, p), outcome


# -- events ---------------------------------------------------------------------------------


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
        payment = _payment_for_event(svc, row.payload, pid, gateway)
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


def _payment_for_event(
    svc: Services, payload: Mapping[str, Any], pid: str, gateway: StripeGateway | None
) -> Any:
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


# -- sweep ----------------------------------------------------------------------------------


def run_sweep(
    svc: Services,
    *,
    trigger: str,
    actor: str,
    dry_run: bool = False,
    older_than: timedelta | None = None,
    limit: int | None = None,
    rerun_of: int | None = None,
    progress: Any = None,
) -> RunResult:
    """Inflight entries older than ``older_than``, in claimed batches, decided and applied."""
    age = older_than if older_than is not None else svc.sweep_min_age
    now = svc.clock()
    cutoff = now - age
    state = _begin(
        svc,
        "sweep",
        trigger,
        actor,
        dry_run,
        window=(None, cutoff),
        params={"older_than_seconds": int(age.total_seconds()), "limit": limit},
        rerun_of=rerun_of,
    )
    gw = svc.new_gateway()
    p = Pass(svc, run=state, actor=actor, dry_run=dry_run)
    done = 0
    after: tuple[datetime, str] | None = None
    try:
        while limit is None or done < limit:
            size = svc.sweep_batch if limit is None else min(svc.sweep_batch, limit - done)
            with svc.engine.begin() as conn:
                ledger = svc.ledger_for(conn)
                if dry_run:
                    batch = list(ledger.list_inflight(cutoff, size, after))
                else:
                    # Claimed rows are skipped by other sweepers until the lease ends, so
                    # two workers never take the same entry; a crash just lets it lapse.
                    batch = list(
                        ledger.claim_inflight(cutoff, size, svc.claim_lease, svc.clock(), after)
                    )
            if not batch:
                break
            after = (batch[-1].created_at, batch[-1].id)
            try:
                fetched = gw.fetch_many([(payment_id_of(t), t.created_at) for t in batch])
                p.handle([Item(payment_id_of(t), fetched[payment_id_of(t)], t) for t in batch])
            except (StripeUnavailable, GuardTripped) as exc:
                _release(svc, batch, dry_run)
                _cut(state, p, "sweep", exc)
                break
            _release(svc, batch, dry_run)
            done += len(batch)
            if progress is not None:
                progress(done)
    except BaseException as exc:
        _fail(svc, state, gw, exc)
        raise
    return _end(svc, state, gw, p)


def _release(svc: Services, batch: Sequence[Any], dry_run: bool) -> None:
    # Give the claims back at once rather than let them lapse: an on-call rerun right after
    # a sweep must see the entries that are still waiting.
    if dry_run:
        return
    with svc.engine.begin() as conn:
        svc.ledger_for(conn).release([txn.reference for txn in batch])


# -- catch-up -------------------------------------------------------------------------------


def _get_cursor(svc: Services, name: str) -> str | None:
    with svc.engine.connect() as conn:
        value = conn.execute(select(cursors.c.value).where(cursors.c.name == name)).scalar()
    return str(value) if value is not None else None


def _set_cursor(svc: Services, name: str, value: str) -> None:
    now = svc.clock()
    with svc.engine.begin() as conn:
        changed = conn.execute(
            update(cursors).where(cursors.c.name == name).values(value=value, updated_at=now)
        ).rowcount
        if not changed:
            conn.execute(cursors.insert().values(name=name, value=value, updated_at=now))


def run_catch_up(
    svc: Services,
    *,
    trigger: str,
    actor: str,
    dry_run: bool = False,
    since: datetime | None = None,
    rerun_of: int | None = None,
    progress: Any = None,
) -> RunResult:
    """Events from Stripe's Events API since the cursor, fed into the same inbox."""
    now = svc.clock()
    if since is None:
        stored = _get_cursor(svc, CATCH_UP_CURSOR)
        since = (
            datetime.fromtimestamp(int(stored) - CURSOR_OVERLAP, UTC)
            if stored
            else now - timedelta(hours=2)
        )
    # Stripe keeps 30 days of events; asking for older ones silently returns fewer.
    since = max(since, now - timedelta(days=30))
    state = _begin(svc, "catch_up", trigger, actor, dry_run, window=(since, now), rerun_of=rerun_of)
    gw = svc.new_gateway()
    p = Pass(svc, run=state, actor=actor, dry_run=dry_run, guarded=False)
    newest = int(since.timestamp())
    seen = 0
    try:
        try:
            for event in gw.events_since(int(since.timestamp()), CATCH_UP_TYPES):
                seen += 1
                state.counts["events_listed"] += 1
                with svc.engine.begin() as conn:
                    nested = conn.begin_nested()
                    is_new = inbox.store_event(conn, event, source="catch_up", now=svc.clock())
                    if dry_run:
                        nested.rollback()
                    else:
                        nested.commit()
                if is_new:
                    state.counts["events_new"] += 1
                    if not dry_run:
                        _process_inline(svc, event["id"], actor, gw, state)
                newest = max(newest, int(event.get("created", 0)))
                if progress is not None:
                    progress(seen)
        except StripeUnavailable as exc:
            _cut(state, p, "catch_up", exc)
        if not dry_run:
            # Only as far as what was really read: a partial run resumes from here.
            _set_cursor(svc, CATCH_UP_CURSOR, str(newest))
        state.resume = {"events_created_after": newest}
    except BaseException as exc:
        _fail(svc, state, gw, exc)
        raise
    return _end(svc, state, gw, p)


def _process_inline(
    svc: Services, event_id: str, actor: str, gw: StripeGateway, state: RunState
) -> None:
    try:
        res = process_event(svc, event_id, actor=actor, gateway=gw, run=state)
    except StripeUnavailable:
        raise
    except Exception as exc:  # one bad event must not stop the catch-up
        state.errors.append(f"{event_id}: {type(exc).__name__}: {exc}")
        state.counts["errors"] += 1
        return
    state.counts["events_" + res.status] += 1


# -- missing-record scan --------------------------------------------------------------------


def run_scan(
    svc: Services,
    *,
    trigger: str,
    actor: str,
    dry_run: bool = False,
    since: datetime,
    until: datetime,
    rerun_of: int | None = None,
    resume: bool = True,
    progress: Any = None,
) -> RunResult:
    """Succeeded PaymentIntents created in ``[since, until]``, each looked up in the ledger."""
    if until <= since:
        raise ValueError(
            f"--until ({until.isoformat()}) must be after --since ({since.isoformat()})"
        )
    if resume and trigger == "beat":
        # A partial scan left the part of its window it never reached; take it in now.
        with svc.engine.connect() as conn:
            prev = last_run(conn, "scan_missing")
        if prev and prev["status"] == "partial" and prev.get("resume"):
            left = prev["resume"].get("until")
            if left:
                since = min(since, datetime.fromisoformat(left))
    state = _begin(
        svc, "scan_missing", trigger, actor, dry_run, window=(since, until), rerun_of=rerun_of
    )
    gw = svc.new_gateway()
    p = Pass(svc, run=state, actor=actor, dry_run=dry_run)
    page: list[Any] = []
    seen = 0
    # Stripe lists newest first: what has been handled is everything at or after the
    # oldest payment seen, so a cut-short run records that as where to resume.
    oldest_done: datetime | None = None

    def flush() -> None:
        nonlocal oldest_done
        if not page:
            return
        with svc.engine.connect() as conn:
            found = svc.ledger_for(conn).find_linked_many([pay.id for pay in page])
        p.handle([Item(pay.id, pay, found.get(pay.id)) for pay in page])
        oldest_done = min(pay.created for pay in page)
        page.clear()

    try:
        try:
            for payment in gw.list_created(since, until):
                seen += 1
                if payment.status is PaymentStatus.SUCCEEDED:
                    page.append(payment)
                if len(page) >= 100:
                    flush()
                if progress is not None:
                    progress(seen)
            flush()
        except (StripeUnavailable, GuardTripped) as exc:
            page.clear()
            _cut(state, p, "scan_missing", exc)
            state.resume = {
                "since": since.isoformat(),
                "until": (oldest_done or until).isoformat(),
            }
        state.counts["payments_listed"] = seen
    except BaseException as exc:
        _fail(svc, state, gw, exc)
        raise
    return _end(svc, state, gw, p)
