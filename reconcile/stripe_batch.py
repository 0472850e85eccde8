"""Reading many PaymentIntents in few calls: the batch-fetch planner behind the sweep.

The sweep knows its entries' ids and (roughly) when each payment was created.  Listing a
time window costs one call per 100 PaymentIntents Stripe holds in it; retrieving costs one
call per id.  :func:`fetch_many` chooses between them as it learns Stripe's density.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reconcile.model import Payment
from reconcile.stripe_gateway import (
    PAGE_SIZE,
    InvalidStripeId,
    StripeGateway,
    StripeRequestError,
    epoch_seconds,
)
from reconcile.stripe_objects import payment_from_stripe

__all__ = ["ReadAhead", "fetch_many"]


def fetch_many(
    gateway: StripeGateway, items: Sequence[tuple[str, datetime]]
) -> dict[str, Payment | None]:
    """The Stripe state of many payments in as few API calls as the data allows.

    ``items`` are (PaymentIntent id, approximate creation time from the ledger).  Dense
    runs of items are read by listing their time window, 100 PaymentIntents a call;
    sparse ones and whatever the lists did not find are retrieved one by one (and come
    back None when Stripe really has no such object).  Every requested id is a key of
    the result.  See :class:`_BatchFetch` for the plan.
    """
    wanted: dict[str, float] = {}
    for payment_id, when in items:
        ts = epoch_seconds(when)
        wanted[payment_id] = min(ts, wanted.get(payment_id, ts))
    fetch = _BatchFetch(
        gateway, wanted, gateway.slack_before.total_seconds(), gateway.slack_after.total_seconds()
    )
    fetch.run()
    retrieve_rest(gateway, fetch.results, wanted)
    return {payment_id: fetch.results[payment_id] for payment_id in wanted}


def retrieve_rest(
    gateway: StripeGateway, results: dict[str, Payment | None], wanted: Iterable[str]
) -> None:
    """Retrieve, one by one, every wanted id that no list brought."""
    for payment_id in wanted:
        if payment_id not in results:
            try:
                results[payment_id] = gateway.retrieve(payment_id)
            except InvalidStripeId:
                # A ledger reference that is no PaymentIntent id: Stripe cannot know it, and
                # it must not stop the rest of the batch (it is decided as not found).
                results[payment_id] = None
            except StripeRequestError as exc:
                # Stripe refused to read this one object (a 4xx that is neither auth, rate
                # limit nor "no such object"): its state is unknown, so it gets a ticket and
                # no money moves, while the rest of the batch proceeds.
                results[payment_id] = unreadable(payment_id, str(exc))


def unreadable(payment_id: str, why: str) -> Payment:
    """A payment Stripe would not let us read: every field unknown, and why."""
    return Payment(
        id=payment_id,
        status=None,
        amount=None,
        amount_received=None,
        currency=None,
        created=None,
        problems=(f"Stripe refused to read it: {why}"[:300],),
    )


@dataclass
class _Segment:
    ids: list[str]
    lo: int  # created[gte]
    hi: int  # created[lte]


@dataclass
class _BatchFetch:
    """The plan behind :func:`fetch_many`.

    Cost model: listing a window costs one call per 100 PaymentIntents that Stripe holds in
    it (ours or not); retrieving costs one call per id.  Stripe's density (PaymentIntents
    per second) is unknown until a list shows it, and the ledger's own density is only a
    lower bound for it, so:

    1. Items sorted by time are grouped into runs: while the density is unknown, items whose
       windows ``[t - slack_before, t + slack_after]`` overlap; once it is known, items
       closer to the previous one than a page's worth of Stripe's payments (so that a dense
       burst is not drowned in a sparse chain that happens to link it to others).
    2. A segment is listed when it is expected to cost fewer pages than it has ids (with an
       unknown density: when it has at least two ids; the biggest goes first, so the one
       page that may be wasted exploring is spent where listing is most likely to pay).
    3. While listing (newest first), after each page: ids whose window lies wholly above
       the page's oldest item and that were not seen are given up to retrieval; the rest
       ("ahead") can still appear.  The listing stops as soon as the pages it is expected
       to need exceed the ids still ahead, or the pages spent exceed what it could still
       save.  The ids still ahead are then planned again with the density now known,
       below the point reached.
    4. Whatever is left is retrieved one by one.

    List pages in total never exceed the number of ids, so the worst case costs at most
    twice the retrieves; the dense case costs about one call per 100 payments.
    """

    gateway: StripeGateway
    wanted: Mapping[str, float]
    slack_before: float
    slack_after: float
    results: dict[str, Payment | None] = field(default_factory=dict)
    # ids whose window has been listed without finding them: only a retrieve can tell
    given_up: set[str] = field(default_factory=set)
    # upper bound of what is left to list for an id whose listing stopped part-way
    caps: dict[str, int] = field(default_factory=dict)
    seen_items: int = 0
    seen_seconds: float = 0.0
    budget: int = 0
    # told of every PaymentIntent a list brings, wanted or not (the sweep's read-ahead keeps
    # them: the next stretch's entries may have been created in this one's window)
    on_listed: Callable[[dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        self.budget = len(self.wanted)

    @property
    def density(self) -> float | None:
        """PaymentIntents per second on Stripe, as far as the lists have shown."""
        if self.seen_seconds <= 0:
            return None
        return self.seen_items / self.seen_seconds

    def _pending(self) -> list[tuple[float, str]]:
        return sorted(
            (t, pid)
            for pid, t in self.wanted.items()
            if pid not in self.results and pid not in self.given_up
        )

    def _window(self, pid: str) -> tuple[int, int]:
        t = self.wanted[pid]
        hi = math.ceil(t + self.slack_after)
        cap = self.caps.get(pid)
        return math.floor(t - self.slack_before), hi if cap is None else min(hi, cap)

    def segments(self) -> list[_Segment]:
        return self.runs(self._pending(), self.density)

    def runs(self, items: Iterable[tuple[float, str]], density: float | None) -> list[_Segment]:
        """``items`` (time, id) sorted by time, grouped into runs worth one window each."""
        # Taking the next item into the run extends the window by the time between the two:
        # worth it while that costs less than the one retrieve it saves, i.e. while the
        # spacing holds less than a page of Stripe's payments.  Before the density is known,
        # only items whose windows overlap are run together.
        max_spacing = None
        if density is not None:
            max_spacing = math.inf if density == 0 else PAGE_SIZE / density
        segments: list[_Segment] = []
        last_t = -math.inf
        for t, pid in items:
            lo, hi = self._window(pid)
            last = segments[-1] if segments else None
            joins = last is not None and (
                lo <= last.hi if max_spacing is None else t - last_t <= max_spacing
            )
            if last is not None and joins:
                last.ids.append(pid)
                last.lo = min(last.lo, lo)
                last.hi = max(last.hi, hi)
            else:
                segments.append(_Segment([pid], lo, hi))
            last_t = t
        return segments

    def estimated_pages(self, seconds: float) -> int | None:
        density = self.density
        if density is None:
            return None
        return math.ceil(density * max(0.0, seconds) / PAGE_SIZE)

    def worth_listing(self, segment: _Segment) -> bool:
        count = sum(1 for pid in segment.ids if pid not in self.results)
        if count < 2:
            return False
        pages = self.estimated_pages(segment.hi - segment.lo)
        return max(1, pages or 1) < count

    def run(self) -> None:
        while self.budget > 0:
            candidates = [s for s in self.segments() if self.worth_listing(s)]
            if not candidates:
                return
            candidates.sort(key=lambda s: len(s.ids), reverse=True)
            density_before = self.density
            for segment in candidates:
                if self.budget <= 0:
                    return
                if not self.worth_listing(segment):
                    continue
                stopped_early = self.list_segment(segment)
                if stopped_early or _moved(density_before, self.density):
                    break  # plan the rest again with what was learnt
            else:
                return

    def list_segment(self, segment: _Segment) -> bool:
        """List one segment's window; True when it stopped before the window's end."""
        own = set(segment.ids)
        found = 0
        pages = 0
        items = 0
        planned_with = self.density
        for page in self.gateway.payment_pages(segment.lo, segment.hi):
            pages += 1
            self.budget -= 1
            items += len(page.data)
            for obj in page.data:
                pid = str(obj.get("id"))
                if self.on_listed is not None:
                    self.on_listed(obj)
                if pid in self.wanted and pid not in self.results:
                    self.results[pid] = payment_from_stripe(obj)
                    found += pid in own
            if not page.has_more:
                self._observe(items, segment.hi - segment.lo)
                self.given_up.update(pid for pid in own if pid not in self.results)
                return False
            oldest = int(page.data[-1]["created"])
            ahead = []
            for pid in own:
                if pid in self.results:
                    continue
                if self._window(pid)[0] <= oldest:
                    ahead.append(pid)
                else:
                    self.given_up.add(pid)
            covered = segment.hi - oldest
            if not ahead:
                self._observe(items, covered)
                return False
            density_here = (self.seen_items + items) / max(1.0, self.seen_seconds + covered)
            expected = math.ceil(density_here * max(0, oldest - segment.lo) / PAGE_SIZE)
            stop = expected > len(ahead) or pages > found + len(ahead) or self.budget <= 0
            if not stop and _moved(planned_with, density_here):
                # This window was planned blind (or on a very different density): if what
                # is left of it would now be planned as several runs, plan it again.
                planned_with = density_here
                rest = sorted((self.wanted[pid], pid) for pid in ahead)
                stop = len(self.runs(rest, density_here)) > 1
            if stop:
                self._observe(items, covered)
                for pid in ahead:
                    self.caps[pid] = oldest
                return True
        return False  # pragma: no cover - a page always answers has_more

    def _observe(self, items: int, seconds: float) -> None:
        self.seen_items += items
        self.seen_seconds += max(1.0, seconds)


def _moved(before: float | None, after: float | None) -> bool:
    """Whether a density estimate changed enough (or at all from unknown) to plan again."""
    if before is None or after is None:
        return before is not after
    low, high = sorted((before, after))
    return high > 2 * low if low > 0 else high > 0


# -- reading ahead of the sweep ---------------------------------------------------------------


@dataclass
class _Chunk:
    index: int
    wanted: dict[str, float]  # id -> approximate creation (Unix seconds)
    first: float
    future: Future[dict[str, Payment | None]]


class ReadAhead:
    """The Stripe state of a sweep's entries, read while the sweep applies earlier ones.

    The sweep hands over its coming entries in creation order, a chunk at a time
    (:meth:`submit`), and takes the state of the ones it has claimed (:meth:`take`).  Reads
    run on a small pool of threads, so that the next chunk's calls go out while the current
    batch is applied and two calls can be in flight when Stripe's latency, not its rate
    limit, would bind.

    Where entries are dense the chunks are read as *stretches*: consecutive, disjoint time
    windows, each listed whole, so that every second of Stripe's history is listed once
    (one call per 100 PaymentIntents, plus one part-filled page per stretch).  A stretch
    starts where the previous one ended; an entry whose payment was created just before its
    own stretch is found among what the previous stretch listed (every listed PaymentIntent
    is kept until no later entry can need it).  Until the density is known (the first
    chunk), and wherever listing would not pay, a chunk goes through the planner of
    :func:`fetch_many` instead.  Whatever no list brought is retrieved one by one, so the
    plan decides only the cost, never what is found.

    A state read more than ``max_age`` seconds before it is taken is read again.
    """

    def __init__(
        self,
        gateway: StripeGateway,
        *,
        threads: int = 2,
        max_age: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gateway = gateway
        self.max_age = max_age
        self._clock = clock
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="read-ahead")
        self._lock = threading.Lock()
        self._chunks: deque[_Chunk] = deque()
        self._owner: dict[str, int] = {}  # id -> index of the chunk that reads it
        self._ready: dict[str, tuple[Payment | None, float]] = {}
        self._listed: dict[str, dict[str, Any]] = {}  # listed PaymentIntents, by id
        self._listed_hi: int | None = None  # stretches planned up to here (inclusive)
        self._seen_items = 0
        self._seen_seconds = 0.0
        self._count = 0
        self._before = gateway.slack_before.total_seconds()
        self._after = gateway.slack_after.total_seconds()

    # -- feeding --------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Chunks submitted and not yet taken."""
        return len(self._chunks)

    def density(self) -> float | None:
        with self._lock:
            if self._seen_seconds <= 0:
                return None
            return self._seen_items / self._seen_seconds

    def submit(self, items: Sequence[tuple[str, datetime]]) -> None:
        """Start reading the next chunk of entries (id, approximate creation time)."""
        wanted: dict[str, float] = {}
        for payment_id, when in items:
            if payment_id in self._owner or payment_id in self._ready:
                continue
            ts = epoch_seconds(when)
            wanted[payment_id] = min(ts, wanted.get(payment_id, ts))
        if not wanted:
            return
        if self.density() is None and self._chunks:
            # The first chunk teaches the density that the rest are planned with.
            self._resolve_through(self._chunks[-1].index)
        first, last = min(wanted.values()), max(wanted.values())
        lo = math.floor(first - self._before)
        hi = math.ceil(last + self._after)
        if self._listed_hi is not None:
            lo = max(lo, self._listed_hi + 1)
        density = self.density()
        future: Future[dict[str, Payment | None]]
        if density is not None and lo <= hi and self._worth_stretch(density, hi - lo, wanted):
            future = self._pool.submit(self._stretch, wanted, lo, hi)
        else:
            future = self._pool.submit(self._planned, wanted)
        self._listed_hi = hi if self._listed_hi is None else max(self._listed_hi, hi)
        chunk = _Chunk(self._count, wanted, first, future)
        self._count += 1
        self._chunks.append(chunk)
        for payment_id in wanted:
            self._owner[payment_id] = chunk.index

    @staticmethod
    def _worth_stretch(density: float, seconds: float, wanted: Mapping[str, float]) -> bool:
        pages = math.ceil(density * max(1.0, seconds) / PAGE_SIZE)
        return 2 * pages <= len(wanted)

    # -- taking ---------------------------------------------------------------------------

    def take(self, items: Sequence[tuple[str, datetime]]) -> dict[str, Payment | None]:
        """The Stripe state of these entries: what was read ahead, the rest read now."""
        ids = [pid for pid, _ in items]
        upto = max((self._owner[pid] for pid in ids if pid in self._owner), default=None)
        if upto is not None:
            self._resolve_through(upto)
        now = self._clock()
        out: dict[str, Payment | None] = {}
        for pid in ids:
            got = self._ready.pop(pid, None)
            if got is not None and now - got[1] <= self.max_age:
                out[pid] = got[0]
        missing = [(pid, when) for pid, when in items if pid not in out]
        if missing:
            out.update(fetch_many(self.gateway, missing))
        return out

    def _resolve_through(self, index: int) -> None:
        while self._chunks and self._chunks[0].index <= index:
            chunk = self._chunks.popleft()
            found = chunk.future.result()  # a read's failure is the sweep's, raised here
            rest = [pid for pid in chunk.wanted if pid not in found]
            for pid in rest:
                obj = self._listed.get(pid)
                if obj is not None:
                    found[pid] = payment_from_stripe(obj)
            retrieve_rest(self.gateway, found, chunk.wanted)
            now = self._clock()
            for pid in chunk.wanted:
                self._ready[pid] = (found[pid], now)
                self._owner.pop(pid, None)
            # Entries another worker claimed are never taken here: forget them once stale.
            stale = [pid for pid, (_, at) in self._ready.items() if now - at > self.max_age]
            for pid in stale:
                del self._ready[pid]
            self._prune()

    def _prune(self) -> None:
        # Listed PaymentIntents are kept while an entry not yet resolved may need one.
        if self._chunks:
            keep_from = self._chunks[0].first - self._before - 1
        elif self._listed_hi is not None:
            keep_from = self._listed_hi - self._before - self._after - 1
        else:
            return
        with self._lock:
            old = [
                pid
                for pid, obj in self._listed.items()
                if not isinstance(obj.get("created"), int) or obj["created"] < keep_from
            ]
            for pid in old:
                del self._listed[pid]

    def close(self) -> None:
        """Stop reading ahead: what is queued is dropped, a read under way finishes."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._chunks.clear()
        self._owner.clear()
        self._ready.clear()
        self._listed.clear()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the reads (on the pool's threads) --------------------------------------------------

    def _keep(self, obj: dict[str, Any]) -> None:
        pid = obj.get("id")
        if isinstance(pid, str):
            with self._lock:
                self._listed[pid] = obj

    def _observe(self, items: int, seconds: float) -> None:
        with self._lock:
            self._seen_items += items
            self._seen_seconds += max(1.0, seconds)

    def _stretch(self, wanted: Mapping[str, float], lo: int, hi: int) -> dict[str, Payment | None]:
        found: dict[str, Payment | None] = {}
        items = 0
        for page in self.gateway.payment_pages(lo, hi):
            items += len(page.data)
            for obj in page.data:
                self._keep(obj)
                pid = str(obj.get("id"))
                if pid in wanted:
                    found[pid] = payment_from_stripe(obj)
        self._observe(items, hi - lo + 1)
        return found

    def _planned(self, wanted: Mapping[str, float]) -> dict[str, Payment | None]:
        fetch = _BatchFetch(self.gateway, wanted, self._before, self._after, on_listed=self._keep)
        with self._lock:
            fetch.seen_items, fetch.seen_seconds = self._seen_items, self._seen_seconds
        seen_items, seen_seconds = fetch.seen_items, fetch.seen_seconds
        fetch.run()
        if fetch.seen_seconds > seen_seconds:  # retrieves alone teach nothing of density
            self._observe(fetch.seen_items - seen_items, fetch.seen_seconds - seen_seconds)
        return dict(fetch.results)
