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
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import orjson
from sqlalchemy import (
    Connection,
    Text,
    and_,
    bindparam,
    cast,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from reconcile.redact import redact
from reconcile.tables import inbox

__all__ = [
    "FUTURE_SLACK",
    "HANDLED_PREFIXES",
    "INVALID_REASONS",
    "MAX_DEPTH",
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
_BIGINT_END: Final = 2**63


class InvalidEvent(ValueError):
    """The body is not a Stripe event (never valid, however often it is retried).

    ``reason`` names the kind of fault from :data:`INVALID_REASONS`, a small fixed set (a
    metric label); the message may say more."""

    def __init__(self, message: str, reason: str = "not_event") -> None:
        super().__init__(message)
        self.reason = reason if reason in INVALID_REASONS else "not_event"


INVALID_REASONS: Final = frozenset(
    {
        "not_json",
        "not_object",
        "not_event",
        "bad_id",
        "bad_type",
        "bad_created",
        "future_event",
        "too_deep",
    }
)


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


# Stripe ids are letters, digits and underscores; a few more are let through, never
# a NUL, a space, a slash, '?', '#' or '%' (ids are put in URLs and VARCHAR columns).
_ID_CHARS: Final = re.compile(r"[A-Za-z0-9_.:\-]+")
# Event types are lower-case ASCII words joined by dots (``v1.`` before thin v1 types,
# brackets in some v2 ones: ``v2.core.account[requirements].updated``) [H5]: a homoglyph
# or an escape sequence is no type of Stripe's.
_TYPE_CHARS: Final = re.compile(r"[a-z0-9_.\[\]]+")
# Deeper than any Stripe object (an event is a handful of levels, expanded or not), and
# far below the recursion limits of the parsers that read the payload again later.
MAX_DEPTH: Final = 32
# How far ahead of our clock an event's ``created`` may be: Stripe's clock and ours.
FUTURE_SLACK: Final = 300.0


def parse_event(
    body: bytes | str, *, now: float | None = None, future: float = FUTURE_SLACK
) -> dict[str, Any]:
    """The event in a webhook body, or :class:`InvalidEvent` saying what is wrong.

    orjson is strict RFC 8259 (no NaN, no lone surrogates, no byte-order mark), so what it
    accepts PostgreSQL's json type accepts too and the body can be stored as it came.  It
    reads an integer past 64 bits as a float: never store the parsed object, store the
    body (``store_events(..., raw=...)``).

    Beyond JSON, what every later step must be able to store, send and show: ids of
    Stripe's alphabet (no NUL, no path characters: they go into URLs and VARCHAR columns),
    an ASCII event type, no nesting deeper than any Stripe object, ``created`` in range
    and, given ``now`` (Unix seconds), no more than ``future`` seconds ahead of it.  A NUL
    elsewhere (a ``\\u0000`` in metadata) is stored as received: the json column takes it,
    and reconcile/stripe_objects.py keeps it out of every text column."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"body is not JSON: {exc.__class__.__name__}", "not_json") from None
    if not isinstance(event, dict):
        raise InvalidEvent("body is not a JSON object", "not_object")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id.startswith("evt_"):
        raise InvalidEvent("missing or malformed event id (expected 'evt_...')", "bad_id")
    if len(event_id) > _ID_MAX:
        raise InvalidEvent("event id too long", "bad_id")
    if not _ID_CHARS.fullmatch(event_id):
        raise InvalidEvent("event id has characters no Stripe id has", "bad_id")
    event_type = event.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise InvalidEvent("missing event type", "bad_type")
    if len(event_type) > _TYPE_MAX:
        raise InvalidEvent("event type too long", "bad_type")
    if not _TYPE_CHARS.fullmatch(event_type):
        raise InvalidEvent("event type has characters no Stripe event type has", "bad_type")
    if "livemode" in event and not isinstance(event["livemode"], bool):
        raise InvalidEvent("'livemode' is not true or false")
    _check_depth(event, body)
    if event.get("object") == THIN:
        return _thin(event, now, future)
    created = event.get("created")
    if not isinstance(created, int) or isinstance(created, bool):
        raise InvalidEvent("missing or non-integer 'created'", "bad_created")
    if not 0 <= created < _BIGINT_END:
        raise InvalidEvent("'created' out of range", "bad_created")
    if now is not None and created > now + future:
        raise InvalidEvent("'created' is in the future", "future_event")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise InvalidEvent("missing data.object")
    if event.get("object", "event") != "event":
        raise InvalidEvent("object is not an event")
    _check_payment_ref(event_type, data["object"])
    return event


def _check_depth(event: dict[str, Any], body: bytes | str) -> None:
    """No nesting deeper than :data:`MAX_DEPTH`; walked only when the body has more
    brackets than that, so the common webhook costs two substring counts."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    if raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH:
        return
    stack: list[tuple[Any, int]] = [(event, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidEvent(f"nested deeper than {MAX_DEPTH} levels", "too_deep")
        for item in value.values() if isinstance(value, dict) else value:
            if isinstance(item, (dict, list)):
                stack.append((item, depth + 1))


def _check_payment_ref(event_type: str, obj: Mapping[str, Any]) -> None:
    """The PaymentIntent id an event names goes into URLs and columns: Stripe's alphabet
    and length, or the event is refused (an absent one leaves the event ignored)."""
    if not is_handled(event_type):
        return
    ref: Any = obj.get("id") if event_type.startswith(_SELF_ID_PREFIXES) else None
    if ref is None:
        ref = obj.get("payment_intent")
        if isinstance(ref, Mapping):
            ref = ref.get("id")
    if ref is None:
        return
    if not isinstance(ref, str) or len(ref) > _ID_MAX or not _ID_CHARS.fullmatch(ref):
        raise InvalidEvent("malformed PaymentIntent id", "bad_id")


def _thin(event: dict[str, Any], now: float | None, future: float) -> dict[str, Any]:
    created = event.get("created")
    try:
        when = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        raise InvalidEvent("thin event: 'created' is not an ISO 8601 time", "bad_created") from None
    if not isinstance(created, str) or when.tzinfo is None:
        raise InvalidEvent("thin event: 'created' is not an ISO 8601 time", "bad_created")
    if now is not None and when.timestamp() > now + future:
        raise InvalidEvent("thin event: 'created' is in the future", "future_event")
    related = event.get("related_object")
    if related is not None and not (
        isinstance(related, dict)
        and isinstance(related.get("id"), str)
        and isinstance(related.get("type"), str)
    ):
        raise InvalidEvent("thin event: malformed related_object")
    if related is not None and (
        len(related["id"]) > _ID_MAX or not _ID_CHARS.fullmatch(related["id"])
    ):
        raise InvalidEvent("thin event: malformed related object id", "bad_id")
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


def _fields(event: Mapping[str, Any]) -> dict[str, Any]:
    """The columns an event's own content decides."""
    return {
        "event_id": event["id"],
        "type": event["type"],
        "payment_id": event_payment_id(event),
        "livemode": bool(event.get("livemode", False)),
        "event_created": int(event["created"]),
        "status": initial_status(event),
    }


def _row_values(
    event: Mapping[str, Any], source: str, now: datetime, raw: bytes | None = None
) -> dict[str, Any]:
    fields = _fields(event)
    return {
        **fields,
        # The body as received when there is one: the inbox keeps what Stripe sent.
        "payload": dict(event) if raw is None else raw.decode("utf-8"),
        "source": source,
        "attempts": 0,
        "last_error": None,
        "received_at": now,
        "enqueued_at": None,
        # Ignored rows are final from the start; giving them a processed_at keeps every
        # final row answering "when did we finish with it" the same way.
        "processed_at": now if fields["status"] == "ignored" else None,
    }


def _insert_ignoring_duplicates(
    conn: Connection, rows: Sequence[Mapping[str, Any]], *, raw: bool = False
) -> set[str]:
    """``raw``: each row's payload is JSON text to store as it is (not an object to encode)."""
    name = conn.dialect.name
    as_text: Any = bindparam("raw_payload", type_=Text())
    if name == "postgresql":
        as_text = cast(as_text, postgresql.JSON)
    if raw:
        rows = [{**r, "raw_payload": r["payload"]} for r in rows]
    if name in ("postgresql", "sqlite"):
        ins = postgresql.insert(inbox) if name == "postgresql" else sqlite.insert(inbox)
        if raw:
            ins = ins.values(payload=as_text)
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
            conn.execute(inbox.insert().values(payload=as_text) if raw else inbox.insert(), row)
        except IntegrityError:
            savepoint.rollback()
        else:
            savepoint.commit()
            new.add(str(row["event_id"]))
    return new


def store_event(
    conn: Connection,
    event: Mapping[str, Any],
    *,
    source: str,
    now: datetime,
    raw: bytes | None = None,
) -> bool:
    """Store a (parsed, verified) event; True only when this call created the row.

    ``raw`` as in :func:`store_events`.  A plain INSERT, so it also takes the payloads
    that PostgreSQL's json functions refuse to unpack (a ``\\u0000`` escape) and that
    the set-based :func:`store_events` therefore cannot."""
    row = _row_values(event, source, now, raw)
    return bool(_insert_ignoring_duplicates(conn, [row], raw=raw is not None))


# PostgreSQL: one short statement whatever the batch size, the rows sent as ONE json
# parameter that the server unpacks (each payload spliced in as received).  A multi-row
# VALUES list is a new, long SQL text per batch size, which psycopg does not cache and
# re-parses each time; text[] parameters make psycopg regex-escape every quote of every
# payload.  Both cost more CPU than the insert.  Sent with exec_driver_sql (psycopg's own
# placeholders): nothing for SQLAlchemy to compile or process per call.
# Rows go in id order so two concurrent batches sharing ids cannot deadlock on the index.
_PG_BATCH_INSERT: Final = """
    INSERT INTO recon_inbox (event_id, type, payment_id, livemode, event_created, payload,
                             source, status, attempts, received_at, processed_at)
    SELECT u.event_id, u.type, u.payment_id, u.livemode, u.event_created, u.payload,
           %(source)s, u.status, 0, %(now)s,
           CASE WHEN u.status = 'ignored' THEN CAST(%(now)s AS timestamptz) END
    FROM json_to_recordset(CAST(%(rows)s AS json))
         AS u(event_id text, type text, payment_id text, livemode boolean,
              event_created bigint, payload json, status text)
    ORDER BY u.event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
"""


def _distinct(
    events: Sequence[Mapping[str, Any]], raw: Sequence[bytes] | None
) -> list[tuple[Mapping[str, Any], bytes | None]]:
    """Each id once (its first copy), with its body, in id order."""
    if raw is not None and len(raw) != len(events):
        raise ValueError("raw must hold one body per event")
    seen: set[str] = set()
    chosen: list[tuple[Mapping[str, Any], bytes | None]] = []
    for n, event in enumerate(events):
        if event["id"] not in seen:
            seen.add(event["id"])
            chosen.append((event, None if raw is None else raw[n]))
    chosen.sort(key=lambda pair: str(pair[0]["id"]))
    return chosen


def _pg_batch_params(
    events: Sequence[Mapping[str, Any]],
    *,
    source: str,
    now: datetime,
    raw: Sequence[bytes] | None = None,
) -> dict[str, Any]:
    """The parameters of ``_PG_BATCH_INSERT`` for ``events`` (at least one)."""
    parts = []
    for event, body in _distinct(events, raw):
        if body is None:
            body = json.dumps(event).encode("utf-8")
        # A body is one whole JSON value already: spliced in as it is, never re-encoded.
        parts.append(orjson.dumps(_fields(event))[:-1] + b',"payload":' + body + b"}")
    if not parts:
        raise ValueError("no events to store")
    return {"source": source, "now": now, "rows": (b"[" + b",".join(parts) + b"]").decode()}


def store_events(
    conn: Connection,
    events: Sequence[Mapping[str, Any]],
    *,
    source: str,
    now: datetime,
    raw: Sequence[bytes] | None = None,
) -> set[str]:
    """Store several events in one statement; the ids of the rows this call created.

    ``raw``, when given, holds each event's body exactly as it was received and parsed
    (valid JSON, UTF-8): that is what is stored, so nothing is encoded again and the
    payload keeps every digit Stripe sent.  An id repeated within ``events`` is stored
    once (the first copy) and counted once."""
    if not events:
        return set()
    if conn.dialect.name == "postgresql":
        params = _pg_batch_params(events, source=source, now=now, raw=raw)
        return {r[0] for r in conn.exec_driver_sql(_PG_BATCH_INSERT, params)}
    rows = [_row_values(event, source, now, body) for event, body in _distinct(events, raw)]
    return _insert_ignoring_duplicates(conn, rows, raw=raw is not None)


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
