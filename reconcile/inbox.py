"""The inbox: Stripe events as received, keyed by event id, and their processing state.

Every function runs on the caller's connection and inside the caller's transaction; the
caller commits.  Both dialects (PostgreSQL, SQLite) are served by the same statements.

Row lifecycle: ``pending`` (stored, waiting for a worker) -> ``processed`` | ``ignored``,
or ``failed`` (error recorded, ``attempts`` counted; redrive retries it until
``max_attempts``).  Events whose type this service does not act on, or that name no
PaymentIntent, are stored straight away as ``ignored``: they are kept for the record but
never queued.

Storing is ``INSERT ... ON CONFLICT (event_id) DO NOTHING``: Stripe delivers at least
once, and the same event may also arrive through the Events API catch-up, so a second
copy must be a no-op rather than a second row or an error that aborts the caller's
transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from sqlalchemy import Connection, and_, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from reconcile.redact import redact
from reconcile.tables import inbox

__all__ = [
    "HANDLED_PREFIXES",
    "MAX_ERROR_CHARS",
    "InboxRow",
    "InvalidEvent",
    "Status",
    "due_for_redrive",
    "event_payment_id",
    "initial_status",
    "is_handled",
    "is_thin",
    "lag",
    "load",
    "mark_enqueued",
    "mark_failed",
    "mark_ignored",
    "mark_processed",
    "parse_event",
    "related_object",
    "store_event",
    "store_events",
    "stored_error",
    "v1_type",
]

Status = Literal["pending", "processed", "ignored", "failed"]

# Event families that carry (or point at) a PaymentIntent.  ``charge.`` also covers
# ``charge.refund.*`` and ``charge.dispute.*``; an early fraud warning names its payment.
HANDLED_PREFIXES: Final = ("payment_intent.", "charge.", "refund.", "radar.early_fraud_warning.")
_SELF_ID_PREFIXES: Final = ("payment_intent.",)
# Thin events (event destinations, ``object: "v2.core.event"``) name v1 events ``v1.<type>``
# and carry no object, only ``related_object`` {id, type, url} to fetch it by.
THIN: Final = "v2.core.event"
_THIN_PREFIX: Final = "v1."

MAX_ERROR_CHARS: Final = 2000
_ID_MAX: Final = 255
_TYPE_MAX: Final = 100


class InvalidEvent(ValueError):
    """The body is not a Stripe event (never valid, however often it is retried)."""


@dataclass(frozen=True)
class InboxRow:
    event_id: str
    type: str
    payment_id: str | None
    livemode: bool
    event_created: int
    payload: Mapping[str, Any]
    source: str
    status: Status
    attempts: int
    last_error: str | None
    received_at: datetime
    enqueued_at: datetime | None
    processed_at: datetime | None

    @property
    def data_object(self) -> Mapping[str, Any]:
        data = self.payload.get("data")
        obj = data.get("object") if isinstance(data, Mapping) else None
        return obj if isinstance(obj, Mapping) else {}


# --------------------------------------------------------------------------- parsing


def parse_event(body: bytes | str) -> dict[str, Any]:
    """The event in a webhook body, or :class:`InvalidEvent` saying what is wrong."""
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"body is not JSON: {exc.__class__.__name__}") from None
    if not isinstance(event, dict):
        raise InvalidEvent("body is not a JSON object")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id.startswith("evt_"):
        raise InvalidEvent("missing or malformed event id (expected 'evt_...')")
    if len(event_id) > _ID_MAX:
        raise InvalidEvent("event id too long")
    event_type = event.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise InvalidEvent("missing event type")
    if len(event_type) > _TYPE_MAX:
        raise InvalidEvent("event type too long")
    if event.get("object") == THIN:
        return _thin(event)
    created = event.get("created")
    if not isinstance(created, int) or isinstance(created, bool):
        raise InvalidEvent("missing or non-integer 'created'")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise InvalidEvent("missing data.object")
    if event.get("object", "event") != "event":
        raise InvalidEvent("object is not an event")
    return event


def _thin(event: dict[str, Any]) -> dict[str, Any]:
    created = event.get("created")
    try:
        when = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        raise InvalidEvent("thin event: 'created' is not an ISO 8601 time") from None
    if not isinstance(created, str) or when.tzinfo is None:
        raise InvalidEvent("thin event: 'created' is not an ISO 8601 time")
    related = event.get("related_object")
    if related is not None and not (
        isinstance(related, dict)
        and isinstance(related.get("id"), str)
        and isinstance(related.get("type"), str)
        and len(related["id"]) <= _ID_MAX
    ):
        raise InvalidEvent("thin event: malformed related_object")
    # The inbox keys its time on Unix seconds, like every v1 event.
    return {**event, "created": int(when.timestamp()), "created_iso": created}


def is_thin(event: Mapping[str, Any]) -> bool:
    return event.get("object") == THIN


def v1_type(event_type: str) -> str:
    """A thin event's type without its ``v1.`` prefix; a v1 event's type as it is."""
    return event_type.removeprefix(_THIN_PREFIX)


def is_handled(event_type: str) -> bool:
    return v1_type(event_type).startswith(HANDLED_PREFIXES)


def related_object(event: Mapping[str, Any]) -> tuple[str, str] | None:
    """A thin event's (related object type, id)."""
    related = event.get("related_object")
    if isinstance(related, Mapping):
        kind, ref = related.get("type"), related.get("id")
        if isinstance(kind, str) and isinstance(ref, str):
            return kind, ref
    return None


def event_payment_id(event: Mapping[str, Any]) -> str | None:
    """The PaymentIntent an event is about, when the event itself names one."""
    event_type = event.get("type")
    if not isinstance(event_type, str) or not is_handled(event_type):
        return None
    if is_thin(event):
        related = related_object(event)
        if related is not None and related[0] == "payment_intent":
            return related[1]
        return None
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if not isinstance(obj, Mapping):
        return None
    if event_type.startswith(_SELF_ID_PREFIXES):
        ref: Any = obj.get("id")
    else:
        # Charges, refunds, disputes and fraud warnings point at their PaymentIntent, as an
        # id or (when the event was built from an expanded object) as the object itself.
        ref = obj.get("payment_intent")
        if isinstance(ref, Mapping):
            ref = ref.get("id")
    if isinstance(ref, str) and ref and len(ref) <= _ID_MAX:
        return ref
    return None


def initial_status(event: Mapping[str, Any]) -> Status:
    """``pending`` when a worker has something to do with the event, else ``ignored``.

    A thin event about a charge, refund, dispute or fraud warning names no PaymentIntent
    itself: the worker fetches its related object to find it."""
    event_type = event.get("type")
    if not isinstance(event_type, str) or not is_handled(event_type):
        return "ignored"
    if event_payment_id(event) or (is_thin(event) and related_object(event)):
        return "pending"
    return "ignored"


# --------------------------------------------------------------------------- writes


def _row_values(event: Mapping[str, Any], source: str, now: datetime) -> dict[str, Any]:
    status = initial_status(event)
    return {
        "event_id": event["id"],
        "type": event["type"],
        "payment_id": event_payment_id(event),
        "livemode": bool(event.get("livemode", False)),
        "event_created": int(event["created"]),
        "payload": dict(event),
        "source": source,
        "status": status,
        "attempts": 0,
        "last_error": None,
        "received_at": now,
        "enqueued_at": None,
        # Ignored rows are final from the start; giving them a processed_at keeps every
        # final row answering "when did we finish with it" the same way.
        "processed_at": now if status == "ignored" else None,
    }


def _insert_ignoring_duplicates(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    name = conn.dialect.name
    if name in ("postgresql", "sqlite"):
        ins = postgresql.insert(inbox) if name == "postgresql" else sqlite.insert(inbox)
        stmt = ins.on_conflict_do_nothing(index_elements=[inbox.c.event_id]).returning(
            inbox.c.event_id
        )
        # RETURNING rather than rowcount: psycopg reports -1 for ON CONFLICT statements
        # sent through SQLAlchemy's insertmanyvalues path.
        return {r[0] for r in conn.execute(stmt, list(rows))}
    new: set[str] = set()
    for row in rows:
        savepoint = conn.begin_nested()
        try:
            conn.execute(inbox.insert(), dict(row))
        except IntegrityError:
            savepoint.rollback()
        else:
            savepoint.commit()
            new.add(str(row["event_id"]))
    return new


def store_event(conn: Connection, event: Mapping[str, Any], *, source: str, now: datetime) -> bool:
    """Store a (parsed, verified) event; True only when this call created the row."""
    return bool(_insert_ignoring_duplicates(conn, [_row_values(event, source, now)]))


# PostgreSQL: one short statement whatever the batch size, the rows sent as ONE json
# parameter that the server unpacks.  A multi-row VALUES list is a new, long SQL text per
# batch size, which psycopg does not cache and re-parses each time; text[] parameters make
# psycopg regex-escape every quote of every payload.  Both cost more CPU than the insert.
# Rows go in id order so two concurrent batches sharing ids cannot deadlock on the index.
_PG_BATCH_INSERT: Final = text(
    """
    INSERT INTO recon_inbox (event_id, type, payment_id, livemode, event_created, payload,
                             source, status, attempts, received_at, processed_at)
    SELECT u.e, u.t, u.p, u.l, u.c, u.j, :source, u.s, 0, :now,
           CASE WHEN u.s = 'ignored' THEN CAST(:now AS timestamptz) END
    FROM json_to_recordset(CAST(:rows AS json))
         AS u(e text, t text, p text, l boolean, c bigint, j json, s text)
    ORDER BY u.e
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
    """
)


def store_events(
    conn: Connection, events: Sequence[Mapping[str, Any]], *, source: str, now: datetime
) -> set[str]:
    """Store several events in one statement; the ids of the rows this call created.

    An id repeated within ``events`` is stored once (the first copy) and counted once."""
    if not events:
        return set()
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for event in events:
        if event["id"] in seen:
            continue
        seen.add(event["id"])
        rows.append(_row_values(event, source, now))
    rows.sort(key=lambda r: str(r["event_id"]))
    if conn.dialect.name != "postgresql":
        return _insert_ignoring_duplicates(conn, rows)
    packed = json.dumps(
        [
            {
                "e": r["event_id"],
                "t": r["type"],
                "p": r["payment_id"],
                "l": r["livemode"],
                "c": r["event_created"],
                "j": r["payload"],
                "s": r["status"],
            }
            for r in rows
        ]
    )
    params = {"source": source, "now": now, "rows": packed}
    return {r[0] for r in conn.execute(_PG_BATCH_INSERT, params)}


def stored_error(error: str) -> str:
    """An error text as the inbox keeps it: secrets masked, bounded in length."""
    # Error texts are shown by the CLI and in tickets: mask whatever an exception quoted.
    error = redact(error)
    if len(error) <= MAX_ERROR_CHARS:
        return error
    return error[: MAX_ERROR_CHARS - 3] + "..."


def mark_processed(conn: Connection, event_id: str, now: datetime) -> bool:
    result = conn.execute(
        update(inbox)
        .where(inbox.c.event_id == event_id)
        .values(
            status="processed",
            attempts=inbox.c.attempts + 1,
            last_error=None,
            processed_at=now,
        )
    )
    return bool(result.rowcount)


def mark_ignored(conn: Connection, event_id: str, now: datetime, reason: str | None = None) -> bool:
    result = conn.execute(
        update(inbox)
        .where(inbox.c.event_id == event_id, inbox.c.status != "processed")
        .values(
            status="ignored",
            attempts=inbox.c.attempts + 1,
            last_error=stored_error(reason) if reason else None,
            processed_at=now,
        )
    )
    return bool(result.rowcount)


def mark_failed(conn: Connection, event_id: str, error: str, now: datetime) -> bool:
    """Record a failed attempt (the text is masked for secrets and truncated)."""
    # A concurrent run may have processed the event meanwhile; its result stands.
    result = conn.execute(
        update(inbox)
        .where(inbox.c.event_id == event_id, inbox.c.status.in_(("pending", "failed")))
        .values(status="failed", attempts=inbox.c.attempts + 1, last_error=stored_error(error))
    )
    return bool(result.rowcount)


def mark_enqueued(conn: Connection, ids: Iterable[str], now: datetime) -> int:
    id_list = list(ids)
    if not id_list:
        return 0
    result = conn.execute(
        update(inbox).where(inbox.c.event_id.in_(id_list)).values(enqueued_at=now)
    )
    return int(result.rowcount or 0)


# --------------------------------------------------------------------------- reads


def _to_row(row: RowMapping) -> InboxRow:
    received = row["received_at"]
    assert received is not None
    payload = row["payload"]
    if isinstance(payload, str):
        payload = json.loads(payload)
    return InboxRow(
        event_id=row["event_id"],
        type=row["type"],
        payment_id=row["payment_id"],
        livemode=bool(row["livemode"]),
        event_created=int(row["event_created"]),
        payload=payload,
        source=row["source"],
        status=row["status"],
        attempts=int(row["attempts"]),
        last_error=row["last_error"],
        received_at=received,
        enqueued_at=row["enqueued_at"],
        processed_at=row["processed_at"],
    )


def load(conn: Connection, event_id: str, *, lock: bool = False) -> InboxRow | None:
    """One inbox row; ``lock`` takes a row lock (PostgreSQL ``FOR UPDATE``) so two workers
    handed the same event serialise on it (SQLite serialises writers already)."""
    stmt = select(inbox).where(inbox.c.event_id == event_id)
    if lock:
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).mappings().first()
    return _to_row(row) if row is not None else None


def _unprocessed(max_attempts: int | None = None) -> Any:
    if max_attempts is None:
        return inbox.c.status.in_(("pending", "failed"))
    return and_(inbox.c.status.in_(("pending", "failed")), inbox.c.attempts < max_attempts)


def due_for_redrive(
    conn: Connection, *, older_than: datetime, limit: int, max_attempts: int
) -> list[str]:
    """Unfinished rows last handed to the queue (or received) before ``older_than``.

    Covers a broker that was down between commit and enqueue, a message lost with a dead
    worker, and failed attempts that still have attempts left; oldest first."""
    last_handed = func.coalesce(inbox.c.enqueued_at, inbox.c.received_at)
    stmt = (
        select(inbox.c.event_id)
        .where(
            _unprocessed(max_attempts),
            or_(
                and_(inbox.c.enqueued_at.is_(None), inbox.c.received_at < older_than),
                inbox.c.enqueued_at < older_than,
            ),
        )
        .order_by(last_handed, inbox.c.event_id)
        .limit(limit)
    )
    return [r[0] for r in conn.execute(stmt)]


def lag(conn: Connection, now: datetime) -> tuple[int, float]:
    """(number of unfinished rows, age in seconds of the oldest one; 0 when none)."""
    count, oldest = conn.execute(
        select(func.count(), func.min(inbox.c.received_at)).where(_unprocessed())
    ).one()
    if not count or oldest is None:
        return 0, 0.0
    return int(count), max(0.0, (now - oldest).total_seconds())


def known_ids(conn: Connection, event_ids: Sequence[str]) -> set[str]:
    """Which of these events the inbox already holds (whatever their status)."""
    out: set[str] = set()
    for start in range(0, len(event_ids), 500):
        chunk = list(event_ids[start : start + 500])
        out.update(
            r[0] for r in conn.execute(select(inbox.c.event_id).where(inbox.c.event_id.in_(chunk)))
        )
    return out
