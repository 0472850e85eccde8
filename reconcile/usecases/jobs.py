"""The scheduled jobs (sweep, Events API catch-up, missing-record scan) and their reruns.

Each job records a run (job, window, trigger, dry-run, counts, Stripe calls, errors).  A run
cut short by Stripe (rate limits or errors that outlast the retries) or by the blast-radius
guard ends ``partial``, never ``succeeded``; the next run resumes: the sweep because the
entries are still INFLIGHT, catch-up from its stored cursor, the scan from the resume point
recorded on the partial run.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.errors import TransientError
from ledger.model import Transaction
from reconcile import inbox, runs
from reconcile.engine import Item, Pass, linked_payment_id, load_adjustments
from reconcile.guard import GuardTripped
from reconcile.model import Payment, PaymentStatus
from reconcile.ports import Services
from reconcile.redact import describe
from reconcile.runs import RunResult, RunState
from reconcile.stripe_batch import ReadAhead
from reconcile.stripe_gateway import EVENTS_RETENTION, StripeGateway, StripeUnavailable
from reconcile.tickets import open_kinds
from reconcile.usecases.errors import BadRequest, NotFound
from reconcile.usecases.events import payment_for_event, replay_event
from reconcile.usecases.lifecycle import begin, cut_short, end, fail
from reconcile.usecases.payments import reconcile_payment

Progress = Callable[[int], None]

CATCH_UP_CURSOR = "catch_up.events_created"
# Events overlap this much between catch-up runs: Stripe timestamps are whole seconds and
# events of one second may straddle a run; the inbox drops the repeats.
CURSOR_OVERLAP = 60
# Every event type the service acts on (Stripe takes up to 20 ``types[]``); the README's
# list of events to subscribe the webhook endpoint to is checked against it.
CATCH_UP_TYPES = (
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "payment_intent.processing",
    "payment_intent.requires_action",
    "payment_intent.amount_capturable_updated",
    "payment_intent.partially_funded",
    "charge.refunded",
    "charge.refund.updated",
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
    "refund.created",
    "refund.updated",
    "refund.failed",
    "radar.early_fraud_warning.created",
)


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
    progress: Progress | None = None,
    newer_than: datetime | None = None,
    created_before: datetime | None = None,
) -> RunResult:
    """Inflight entries older than ``older_than``, in claimed batches, decided and applied.

    ``newer_than`` / ``created_before`` narrow the sweep to entries created in
    ``[newer_than, created_before)``: one part of a backlog split over several workers.

    The Stripe state of the coming entries is read ahead (reconcile/stripe_batch.py
    ReadAhead) while the current batch is applied, so that a backlog drains at the pace
    Stripe's rate limit sets rather than at the sum of Stripe's time and ours.
    """
    age = older_than if older_than is not None else svc.sweep_min_age
    now = svc.clock()
    cutoff = now - age
    if created_before is not None:
        cutoff = min(cutoff, created_before)
    params: dict[str, Any] = {"older_than_seconds": int(age.total_seconds()), "limit": limit}
    if newer_than is not None or created_before is not None:
        params["newer_than"] = newer_than.isoformat() if newer_than else None
        params["created_before"] = created_before.isoformat() if created_before else None
    state = begin(
        svc,
        "sweep",
        trigger,
        actor,
        dry_run,
        window=(newer_than, cutoff),
        params=params,
        rerun_of=rerun_of,
    )
    gw = svc.new_gateway()
    p = Pass(svc, run=state, actor=actor, dry_run=dry_run)
    done = 0
    # Keyset position: (created_at, id) > after.  An empty id takes in the first instant.
    start: tuple[datetime, str] | None = (newer_than, "") if newer_than is not None else None
    ahead = _Ahead(svc, ReadAhead(gw, threads=_Ahead.DEPTH), cutoff, start, limit)
    claims = _Claims(svc, state, cutoff, start, limit, dry_run)
    indexer = _Later()
    p.index_later = indexer.submit
    try:
        with _Collections() as collections, ahead.reader, indexer, claims:
            while True:
                try:
                    ahead.feed()
                    # Claimed rows are skipped by other sweepers until the lease ends, so two
                    # workers never take the same entry; a crash lets it lapse.  The next
                    # batch is claimed while this one is applied (_Claims).
                    batch = claims.next()
                except TransientError as exc:
                    # The books could not be read (Blnk down): nothing was decided, the next
                    # sweep finds the same entries.
                    cut_short(state, p, "sweep", exc)
                    break
                if not batch:
                    break
                try:
                    ahead.feed()
                    wanted = [(linked_payment_id(t), t.created_at) for t in batch]
                    fetched = ahead.reader.take(wanted)
                    own, extra = _own_entries(svc, batch)
                    for t, own_ref in extra:
                        pid = linked_payment_id(t)
                        p.duplicate(pid, fetched[pid], t, own_ref)
                    p.handle(
                        [Item(linked_payment_id(t), fetched[linked_payment_id(t)], t) for t in own],
                        claims.open_kinds,
                    )
                except (StripeUnavailable, GuardTripped, TransientError) as exc:
                    cut_short(state, p, "sweep", exc)
                    break
                done += len(batch)
                collections.tick()
                if progress is not None:
                    progress(done)
    except BaseException as exc:
        fail(svc, state, gw, exc)
        raise
    return end(svc, state, gw, p)


# While a sweep runs, the cyclic collector runs between batches, not on allocation counts.
# A backlog sweep allocates millions of containers, and many live a while (listed Stripe
# pages kept for the entries after them, states read ahead): collected on allocation
# counts (even at 50,000 a young collection) they were traversed again and again, 3.7 s of
# CPU per 100,000 payments (tests/bench/backlog.py); at Python's default of 700, a quarter
# of the sweep's CPU.  Cycles are still collected, every SWEEP_GC_EVERY batches, and once
# the last sweep of the process ends the collector is back as it was.
SWEEP_GC_EVERY = 10
_gc_lock = threading.Lock()
_gc_users = 0
_gc_was_enabled = False


class _Collections:
    """The collector paced by the sweep's batches (see SWEEP_GC_EVERY)."""

    def __init__(self) -> None:
        self._batches = 0

    def tick(self) -> None:
        self._batches += 1
        if self._batches % SWEEP_GC_EVERY == 0:
            gc.collect(1)

    def __enter__(self) -> _Collections:
        global _gc_users, _gc_was_enabled
        with _gc_lock:
            if _gc_users == 0:
                _gc_was_enabled = gc.isenabled()
                gc.disable()
            _gc_users += 1
        return self

    def __exit__(self, *exc: object) -> None:
        global _gc_users
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_was_enabled:
                gc.enable()


def _own_entries(
    svc: Services, batch: Sequence[Transaction]
) -> tuple[list[Transaction], list[tuple[Transaction, str]]]:
    """The entries that are their payment's own (what ``find_linked`` answers for it), and
    the others with the reference of the payment's own entry: a second entry linked to a
    PaymentIntent would otherwise be decided as that payment and never settle."""
    # An entry whose reference is its payment's id is that payment's own without asking:
    # a reference match wins over any link, and references are unique in every ledger.
    # Only the others (linked by metadata) are looked up.
    own: list[Transaction] = []
    extra: list[tuple[Transaction, str]] = []
    linked = [t for t in batch if linked_payment_id(t) != t.reference]
    if not linked:
        return list(batch), extra
    with svc.engine.connect() as conn:
        ledger = svc.ledger_for(conn)
        found = ledger.find_linked_many([linked_payment_id(t) for t in linked])
        for t in batch:
            pid = linked_payment_id(t)
            if pid == t.reference:
                own.append(t)
                continue
            first = found.get(pid)
            if first is not None and first.reference != t.reference:
                # find_linked_many may pick another of several links: ask the way a pass does.
                first = ledger.find_linked(pid)
            if first is None or first.reference == t.reference:
                own.append(t)
            else:
                extra.append((t, first.reference))
    return own, extra


SweepPart = tuple[datetime | None, datetime | None]


def split_sweep(
    svc: Services, *, parts: int, older_than: timedelta | None = None
) -> list[SweepPart]:
    """Cut the backlog of inflight entries into ``parts`` creation windows of about equal
    size, ``[newer_than, created_before)`` each (None: open), for as many workers.

    A ledger that cannot count its entries (Blnk) gives one part: the whole backlog.
    """
    cutoff = svc.clock() - (older_than if older_than is not None else svc.sweep_min_age)
    with svc.engine.connect() as conn:
        quantiles = getattr(svc.ledger_for(conn), "inflight_quantiles", None)
        bounds: list[datetime] = list(quantiles(cutoff, parts)) if quantiles else []
    edges: list[datetime | None] = [None, *bounds, None]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


class _Later:
    """One thread that runs, in order, what may trail the batch that asked for it."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sweep-index")
        self._pending: deque[Future[None]] = deque()

    def submit(self, fn: Callable[[], None]) -> None:
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()
        if len(self._pending) >= 2:  # never more than a batch or two behind
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn))

    def __enter__(self) -> _Later:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True)


class _Ahead:
    """Hands the sweep's coming entries to its ReadAhead, a chunk or two ahead."""

    # Chunks read ahead of the one being applied, each on a thread of its own.  A chunk's
    # stretch is listed page after page (each page names the next), so one stream of pages
    # goes no faster than a call's latency and our share of the interpreter lock allow:
    # about 20 calls/s here, against Stripe's 25.  With 2 streams a 50,000 backlog took
    # 1.27-1.31x its floor; with 3, 1.10-1.12x (tests/bench/backlog.py, side by side).
    DEPTH = 3
    FIRST = 300  # the first chunk, small: it teaches the density the others are planned with

    def __init__(
        self,
        svc: Services,
        reader: ReadAhead,
        cutoff: datetime,
        after: tuple[datetime, str] | None,
        limit: int | None,
    ) -> None:
        self.svc = svc
        self.reader = reader
        self.cutoff = cutoff
        self.after = after
        self.left = limit
        self.done = False
        self.first = True

    def feed(self) -> None:
        while not self.done and self.reader.pending < self.DEPTH:
            size = self.svc.sweep_read_ahead
            if self.first:
                size, self.first = min(size, self.FIRST), False
            if self.left is not None:
                size = min(size, self.left)
            if size <= 0:
                self.done = True
                return
            with self.svc.engine.connect() as conn:
                rows = self.svc.ledger_for(conn).list_inflight(self.cutoff, size, self.after)
            if not rows:
                self.done = True
                return
            self.after = (rows[-1].created_at, rows[-1].id)
            if self.left is not None:
                self.left -= len(rows)
            self.reader.submit([(linked_payment_id(t), t.created_at) for t in rows])


class _Claims:
    """The sweep's batches, each claimed while the one before it is applied.

    Claiming (an UPDATE of a batch of rows and the run's note of them) and giving claims
    back were a quarter of a backlog sweep's time spent waiting on PostgreSQL between two
    batches; done one batch ahead, in a thread of its own, they overlap the apply.  One job
    at a time, in order: give back the batch applied before, claim the next, and write on
    the run every reference still held (the batch being applied and the one claimed), all in
    one transaction, so a run that dies always says which entries it held; the kinds of
    ticket open for the claimed payments are read in it too (Pass.handle would read them
    on the sweep's own thread; a ticket opened in between is resolved by the next pass, as
    with any read before the lock).  Claims are given
    back at once rather than left to lapse: an on-call rerun right after a sweep must see
    the entries that are still waiting.  A dry run lists instead and claims nothing.
    """

    def __init__(
        self,
        svc: Services,
        state: RunState,
        cutoff: datetime,
        after: tuple[datetime, str] | None,
        limit: int | None,
        dry_run: bool,
    ) -> None:
        self.svc = svc
        self.state = state
        self.cutoff = cutoff
        self.after = after
        self.left = limit
        self.dry_run = dry_run
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sweep-claim")
        self._current: list[str] = []  # references of the batch being applied
        self._next: Future[tuple[list[Transaction], dict[str, set[str]]]] | None = None
        self.open_kinds: dict[str, set[str]] = {}  # of the batch being applied

    def next(self) -> list[Transaction]:
        """The next batch (empty at the end), the one after it already being claimed."""
        if self._next is None:
            self._next = self._pool.submit(self._job, [], [])
        future, self._next = self._next, None
        batch, self.open_kinds = future.result()
        applied, self._current = self._current, [t.reference for t in batch]
        if batch:
            self._next = self._pool.submit(self._job, applied, self._current)
        elif applied:
            self._pool.submit(self._job, applied, [], claim=False).result()
        return batch

    def _job(
        self, give_back: list[str], holding: list[str], *, claim: bool = True
    ) -> tuple[list[Transaction], dict[str, set[str]]]:
        svc = self.svc
        size = svc.sweep_batch if self.left is None else min(svc.sweep_batch, self.left)
        batch: list[Transaction] = []
        with svc.engine.begin() as conn:
            ledger = svc.ledger_for(conn)
            if self.dry_run:
                if claim and size > 0:
                    batch = list(ledger.list_inflight(self.cutoff, size, self.after))
            else:
                if give_back:
                    ledger.release(give_back)
                if claim and size > 0:
                    batch = list(
                        ledger.claim_inflight(
                            self.cutoff, size, svc.claim_lease, svc.clock(), self.after
                        )
                    )
                runs.note_claims(conn, self.state.id, [*holding, *(t.reference for t in batch)])
            kinds = open_kinds(conn, [linked_payment_id(t) for t in batch]) if batch else {}
        if batch:
            self.after = (batch[-1].created_at, batch[-1].id)
            if self.left is not None:
                self.left -= len(batch)
        return batch, kinds

    def close(self) -> None:
        """Wait for the claim under way, then give back all that is held."""
        try:
            held = list(self._current)
            if self._next is not None:
                # A claim that failed rolled back: it holds nothing.
                with contextlib.suppress(Exception):
                    held += [t.reference for t in self._next.result()[0]]
            self._current, self._next = [], None
            if held and not self.dry_run:
                self._pool.submit(self._job, held, [], claim=False).result()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> _Claims:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- catch-up -------------------------------------------------------------------------------


CATCH_UP_BATCH = 100  # events planned, guarded and acted on together (one list page)


def run_catch_up(
    svc: Services,
    *,
    trigger: str,
    actor: str,
    dry_run: bool = False,
    since: datetime | None = None,
    rerun_of: int | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Events from Stripe's Events API since the cursor, fed into the same inbox.

    Guarded like the sweep: each page of new events is planned first (which payments would
    be committed, voided, ticketed), checked against the blast-radius guard, and only then
    acted on and stored.  A page the guard stops is neither acted on nor stored, and the
    cursor stays before it, so the next run meets it again.

    With no stored cursor (a first run) it reads ``svc.catch_up_first_window`` back.  The
    cursor moves only forward and only as far as events were really handled: a run that
    lists none leaves it where it was, and a partial run resumes from the last page it
    stored.
    """
    now = svc.clock()
    notes: list[str] = []
    with svc.engine.connect() as conn:
        cursor = runs.get_cursor(conn, CATCH_UP_CURSOR)
    # Only ever forward: an on-call catch-up of an older window leaves the cursor alone.
    stored = int(cursor) if cursor else None
    if since is None:
        since = (
            datetime.fromtimestamp(stored - CURSOR_OVERLAP, UTC)
            if stored is not None
            else now - svc.catch_up_first_window
        )
    elif since > now:
        raise BadRequest(f"--since {since.isoformat(timespec='seconds')} is in the future")
    # Stripe keeps 30 days of events; asking for older ones silently returns fewer.
    oldest = now - EVENTS_RETENTION
    if since < oldest:
        notes.append(
            f"window clamped to 30 days: Stripe keeps events for 30 days, so the catch-up "
            f"starts at {oldest.isoformat(timespec='seconds')}, not "
            f"{since.isoformat(timespec='seconds')}"
        )
        since = oldest
    state = begin(svc, "catch_up", trigger, actor, dry_run, window=(since, now), rerun_of=rerun_of)
    state.notes.extend(notes)
    gw = svc.new_gateway()
    p = Pass(svc, run=state, actor=actor, dry_run=dry_run, evidence={"source": "catch_up"})
    newest: int | None = None
    batch: list[dict[str, Any]] = []
    seen = 0

    def flush() -> None:
        nonlocal newest
        if batch:
            _catch_up_batch(svc, p, gw, state, batch, dry_run)
            created = [e["created"] for e in batch if isinstance(e.get("created"), int)]
            newest = max([*created, *([newest] if newest is not None else [])], default=None)
            batch.clear()

    try:
        try:
            for event in gw.events_since(int(since.timestamp()), CATCH_UP_TYPES):
                seen += 1
                state.counts["events_listed"] += 1
                batch.append(event)
                if len(batch) >= CATCH_UP_BATCH:
                    flush()
                if progress is not None:
                    progress(seen)
            flush()
        except (StripeUnavailable, GuardTripped) as exc:
            batch.clear()
            cut_short(state, p, "catch_up", exc)
        advanced = newest is not None and (stored is None or newest > stored)
        if advanced and not dry_run:
            assert newest is not None
            with svc.engine.begin() as conn:
                runs.set_cursor(conn, CATCH_UP_CURSOR, str(newest), now=svc.clock())
        last = newest if advanced else stored
        state.resume = {"events_created_after": last} if last is not None else None
    except BaseException as exc:
        fail(svc, state, gw, exc)
        raise
    return end(svc, state, gw, p)


def _catch_up_batch(
    svc: Services,
    p: Pass,
    gw: StripeGateway,
    state: RunState,
    batch: Sequence[dict[str, Any]],
    dry_run: bool,
) -> None:
    """Plan, guard and act on one page of events, then store them (raises GuardTripped)."""
    with svc.engine.connect() as conn:
        known = inbox.known_ids(conn, [str(e["id"]) for e in batch])
    fresh: dict[str, dict[str, Any]] = {}
    for event in batch:
        if str(event["id"]) not in known:
            fresh.setdefault(str(event["id"]), event)
    state.counts["events_new"] += len(fresh)
    # Events come oldest first: the last one of a payment is the one that counts.
    latest: dict[str, dict[str, Any]] = {}
    for event in fresh.values():
        pid = inbox.event_payment_id(event)
        if pid is not None and inbox.initial_status(event) == "pending":
            latest[pid] = event
    payments: dict[str, Payment | None] = {}
    unread: dict[str, str] = {}
    for pid, event in latest.items():
        try:
            payments[pid] = payment_for_event(svc, event, pid, gw)
        except StripeUnavailable:
            raise
        except Exception as exc:  # one bad payment must not stop the catch-up
            unread[pid] = f"{pid}: {describe(exc)}"
            state.errors.append(unread[pid])
            state.counts["errors"] += 1
    for pid in unread:
        del latest[pid]
    with svc.engine.connect() as conn:
        ledger = svc.ledger_for(conn)
        found = ledger.find_linked_many(list(latest))
        adjusted = load_adjustments(ledger, found)
    done = len(p.outcomes)
    p.handle(
        [Item(pid, payments[pid], found.get(pid), tuple(adjusted.get(pid, ()))) for pid in latest]
    )
    errors = {o.payment_id: o.error for o in p.outcomes[done:] if o.error} | unread
    for event in fresh.values():
        pid = inbox.event_payment_id(event)
        acted = pid is not None and (pid in latest or pid in unread)
        status = "failed" if acted and pid in errors else "processed" if acted else "ignored"
        state.counts["events_" + status] += 1
    if dry_run or not fresh:
        return
    with svc.engine.begin() as conn:
        now = svc.clock()
        inbox.store_events(conn, list(fresh.values()), source="catch_up", now=now)
        for event_id, event in fresh.items():
            pid = inbox.event_payment_id(event)
            if pid is None or (pid not in latest and pid not in unread):
                continue
            if pid in errors:
                inbox.mark_failed(conn, event_id, str(errors[pid]), now)
            else:
                inbox.mark_processed(conn, event_id, now)


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
    progress: Progress | None = None,
) -> RunResult:
    """Succeeded PaymentIntents created in ``[since, until]``, each looked up in the ledger."""
    if until <= since:
        raise BadRequest(
            f"--until ({until.isoformat()}) must be after --since ({since.isoformat()})"
        )
    if resume and trigger == "beat":
        # A partial scan left the part of its window it never reached; take it in now.
        with svc.engine.connect() as conn:
            prev = runs.last_run(conn, "scan_missing")
        if prev and prev["status"] == runs.PARTIAL and prev.get("resume"):
            left = prev["resume"].get("until")
            if left:
                since = min(since, datetime.fromisoformat(left))
    state = begin(
        svc, "scan_missing", trigger, actor, dry_run, window=(since, until), rerun_of=rerun_of
    )
    gw = svc.new_gateway()
    p = Pass(svc, run=state, actor=actor, dry_run=dry_run)
    page: list[Payment] = []
    seen = 0
    # Stripe lists newest first: what has been handled is everything at or after the
    # oldest payment seen, so a cut-short run records that as where to resume.
    oldest_done: datetime | None = None

    def flush() -> None:
        nonlocal oldest_done
        if not page:
            return
        with svc.engine.connect() as conn:
            ledger = svc.ledger_for(conn)
            found = ledger.find_linked_many([pay.id for pay in page])
            adjusted = load_adjustments(ledger, found)
        p.handle(
            [Item(pay.id, pay, found.get(pay.id), tuple(adjusted.get(pay.id, ()))) for pay in page]
        )
        oldest_done = min((pay.created for pay in page if pay.created), default=oldest_done)
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
        except (StripeUnavailable, GuardTripped, TransientError) as exc:
            page.clear()
            cut_short(state, p, "scan_missing", exc)
            state.resume = {
                "since": since.isoformat(),
                "until": (oldest_done or until).isoformat(),
            }
        state.counts["payments_listed"] = seen
    except BaseException as exc:
        fail(svc, state, gw, exc)
        raise
    return end(svc, state, gw, p)


# -- reruns ---------------------------------------------------------------------------------

RERUNNABLE = ("sweep", "catch_up", "scan_missing", "payment", "replay")


@dataclass(frozen=True)
class RerunSpec:
    """A recorded run's job and parameters, ready to run again."""

    run_id: int
    job: str
    older_than: timedelta | None = None
    limit: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    payment_id: str | None = None
    event_id: str | None = None
    created_before: datetime | None = None


def plan_rerun(svc: Services, run_id: int) -> RerunSpec:
    """What ``rerun`` would run again; NotFound / BadRequest when it cannot."""
    with svc.engine.connect() as conn:
        row = runs.get_run(conn, run_id)
    if row is None:
        raise NotFound(f"no run {run_id}")
    job, params = str(row["job"]), dict(row["params"] or {})
    if job not in RERUNNABLE:
        raise BadRequest(f"run {run_id} is a {job!r} run, which cannot be rerun")
    spec = RerunSpec(run_id, job, since=row["window_start"], until=row["window_end"])
    if job == "sweep":
        secs = params.get("older_than_seconds")
        age = timedelta(seconds=int(secs)) if secs is not None else None
        part = {k: params.get(k) for k in ("newer_than", "created_before")}
        return RerunSpec(
            run_id,
            job,
            older_than=age,
            limit=params.get("limit"),
            since=datetime.fromisoformat(part["newer_than"]) if part["newer_than"] else None,
            created_before=(
                datetime.fromisoformat(part["created_before"]) if part["created_before"] else None
            ),
        )
    if job == "scan_missing" and (spec.since is None or spec.until is None):
        raise BadRequest(f"run {run_id} recorded no window to scan")
    if job == "payment":
        return RerunSpec(run_id, job, payment_id=str(params["payment_id"]))
    if job == "replay":
        return RerunSpec(run_id, job, event_id=str(params["event_id"]))
    return spec


def rerun(
    svc: Services,
    spec: RerunSpec,
    *,
    actor: str,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> RunResult:
    """Run a recorded run's job again with the same window and parameters."""
    common: dict[str, Any] = {"actor": actor, "dry_run": dry_run, "rerun_of": spec.run_id}
    if spec.job == "sweep":
        return run_sweep(
            svc,
            trigger="rerun",
            older_than=spec.older_than,
            limit=spec.limit,
            progress=progress,
            newer_than=spec.since,
            created_before=spec.created_before,
            **common,
        )
    if spec.job == "catch_up":
        return run_catch_up(svc, trigger="rerun", since=spec.since, progress=progress, **common)
    if spec.job == "scan_missing":
        assert spec.since is not None and spec.until is not None
        return run_scan(
            svc, trigger="rerun", since=spec.since, until=spec.until, progress=progress, **common
        )
    if spec.job == "payment":
        assert spec.payment_id is not None
        result, _ = reconcile_payment(svc, spec.payment_id, trigger="rerun", **common)
        return result
    assert spec.job == "replay" and spec.event_id is not None
    return replay_event(svc, spec.event_id, **common).run
