"""BlnkLedger: the Ledger protocol over Blnk Core's REST API, for books kept in Blnk.

What it relies on, with the Blnk source it comes from (github.com/blnkfinance/blnk, read at
commit cba0072):

- Every request carries the ``X-Blnk-Key`` header (api/middleware/auth.go).  An API key
  needs the scopes ``transactions:read``, ``transactions:write`` (creates, commits, voids,
  and the filter, which is a POST) and ``balances:read`` (api/middleware/scope.go).
- Money is ``precise_amount`` (an integer, JSON number) with ``precision`` (the scale, 100
  for cents; 0 means 1), api/model/transaction.go RecordTransaction and model/model.go
  ApplyPrecision.  We send ``precise_amount`` with ``precision = 10**exponent`` so a precise
  amount is our minor units, and never send the float ``amount``, nor read it as money.
- ``POST /transactions`` with ``skip_queue: true`` records at once and answers 201 INFLIGHT
  or APPLIED (transaction_queue.go QueueTransaction); ``description`` is required
  (api/model/model.go ValidateRecordTransaction); a used reference answers 409
  TXN_DUPLICATE_REFERENCE (transaction_execution.go validateTxn, api/errors.go).  A source
  that may go negative (``@stripe``) needs ``allow_overdraft`` (model/model.go
  canProcessTransaction).
- Balances are named by id (``bln_...``) or by an indicator ``@name``, which Blnk creates
  once per currency on first use (transaction_execution.go getSourceAndDestination,
  balance.go getOrCreateBalanceByIndicator); stored transactions carry balance ids.  Blnk
  does not check a transaction's currency against its balances' (transaction_dryrun.go's
  currency-mismatch note), so this adapter does.
- ``PUT /transactions/inflight/{id}`` ``{"status": "commit"|"void", "precise_amount"?,
  "skip_queue": true}`` answers the child it recorded: APPLIED for a commit (no amount: the
  rest), VOID carrying the remainder for a void, ``parent_transaction`` = the hold.  The
  hold's own row stays INFLIGHT (transaction_inflight.go finalizeCommitment,
  finalizeVoidTransaction, collectInflightLegs), so the hold's committed and voided totals
  are what its children add up to (database/transaction_inflight.go
  GetTotalCommittedTransactions, database/transaction_queries.go IsParentTransactionVoid).
- Error codes (internal/apierror/codes.go, classified in api/errors.go): 409
  TXN_ALREADY_COMMITTED / TXN_ALREADY_VOIDED, 400 TXN_COMMIT_AMOUNT_EXCEEDED, 400
  TXN_NOT_INFLIGHT (also for an id with no inflight leg), 404 TXN_NOT_FOUND, 409
  GEN_CONFLICT (a commit or void already queued, api/transactions.go), 423
  GEN_RESOURCE_LOCKED (lock held), 400 TXN_INSUFFICIENT_FUNDS.  Bodies carry
  ``error_detail.code`` beside the legacy ``error`` string (api/errors.go writeError).
- A transaction created without skip_queue is a QUEUED record; the worker records a copy
  with reference ``<ref>_q`` whose ``parent_transaction`` (and meta_data
  ``QUEUED_PARENT_TRANSACTION``) is the queued record: that copy is the hold, or REJECTED
  (transaction_queue.go createQueueCopy, cmd/workers.go).
- ``POST /transactions/filter`` takes ``filters`` (field/operator/value(s)), ``limit``
  (1..100, else 20), ``offset``, ``sort_by``, ``sort_order`` and answers a JSON array
  (api/filter_helper.go, internal/filter/validation.go: fields include status, created_at,
  parent_transaction, reference and ``meta_data.<key>``).
- ``POST /transactions/inflight/bulk/commit|void`` take up to 100 items, each settled on its
  own, and answer per item ``succeeded`` or ``failed`` with a code such as ALREADY_COMMITTED
  (api/transactions.go BulkCommitInflight, transaction_inflight.go classifyInflightError).
- ``inflight_expiry_date`` is queued, not stored: reads show Go's zero time
  (database/transaction.go, queue.go queueInflightExpiry).

Blnk has no row locks to offer, so concurrent workers are kept off one hold by the service's
own database: ``ledger_blnk_claims`` (owned here) has a row per reference; ``lock=True``
takes that row's lock in the caller's transaction, and the sweep's claims are leases on it.
Writes over HTTP do not roll back with the caller's transaction: when the caller rehearses
(``conn.info[DRY_RUN]``), nothing is sent and the answer is what the write would give.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import requests
from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    String,
    Table,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from ledger.checks import is_amount, to_commit, to_void, validate_new
from ledger.errors import (
    AlreadyCommitted,
    AlreadyVoided,
    CommitAmountExceeded,
    CurrencyMismatch,
    InsufficientFunds,
    InvalidAmount,
    InvalidInput,
    LedgerAccessDenied,
    LedgerBusy,
    LedgerError,
    LedgerUnavailable,
    NotInflight,
    ReferenceConflict,
    TransactionNotFound,
    UnknownBalance,
    UnreadableRecord,
)
from ledger.model import Balance, NewTransaction, Settled, Transaction, TxnStatus, Violation
from ledger.money import exponent, normalize_currency
from ledger.protocol import BULK_MAX, DRY_RUN, LINK_KEY
from ledger.types import UtcDateTime

metadata = MetaData()

# One row per reference this service has locked or claimed.  The row lock is what keeps two
# workers off one hold; ``claimed_until`` is the sweep's lease.
claims = Table(
    "ledger_blnk_claims",
    metadata,
    Column("reference", String(255), primary_key=True),
    Column("claimed_until", UtcDateTime(), nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
)
# Idempotency keys of partial commits (Blnk has none): key -> the child it recorded.
commit_keys = Table(
    "ledger_blnk_commit_keys",
    metadata,
    Column("reference", String(255), primary_key=True),
    Column("idempotency_key", String(255), primary_key=True),
    Column("child_id", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

# meta_data keys Blnk writes for itself (transaction_queue.go setTransactionMetadata,
# api/middleware/auth.go injectAPIKeyToMetadata): not the application's metadata.
BLNK_META = frozenset(
    {"inflight", "allow_overdraft", "atomic", "QUEUED_PARENT_TRANSACTION", "BLNK_GENERATED_BY"}
)
PAGE = 100  # the filter's largest page (api/filter_helper.go)
_ZERO_YEAR = "0001-"
_FRACTION = re.compile(r"(\.\d{6})\d+")
T = TypeVar("T")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# -- HTTP -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A non-5xx answer: status, parsed JSON (None if none), and Blnk's error code."""

    status: int
    data: Any
    code: str | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class _Transient(Exception):
    """5xx, 429, timeouts, refused connections: worth another attempt."""


class BlnkClient:
    """Blnk's REST API with the key, timeouts and tenacity retries; shared by threads.

    Reads are retried on transport errors, 5xx and 429.  Writes are sent once per attempt
    by the ledger, which looks before it repeats one (a lost answer may hide a done write).
    The key only ever goes into the ``X-Blnk-Key`` header: never into a message.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | tuple[float, float] = (3.05, 15.0),
        max_attempts: int = 5,
        backoff_initial: float = 0.1,
        backoff_max: float = 3.0,
        lookback: timedelta | None = timedelta(days=30),
        on_request: Callable[[str, str], None] | None = None,
        session_factory: Callable[[], requests.Session] = requests.Session,
    ) -> None:
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ValueError("the Blnk URL must start with http:// or https://")
        if not api_key:
            raise ValueError("a Blnk API key is required")
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.lookback = lookback
        self.on_request = on_request
        self._session_factory = session_factory
        self._local = threading.local()
        self._names: OrderedDict[str, tuple[str | None, str]] = OrderedDict()
        self._names_lock = threading.Lock()

    def __repr__(self) -> str:
        # No key, and no credentials a URL might carry.
        return f"BlnkClient({self.base_url.split('@')[-1]!r})"

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._session_factory()
        return session

    def retrying(self) -> Retrying:
        return Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_random_exponential(multiplier=self.backoff_initial, max=self.backoff_max),
            retry=retry_if_exception_type(_Transient),
            reraise=False,
        )

    def send(self, method: str, path: str, body: Any = None) -> Reply:
        """One attempt.  Raises _Transient for what may pass, LedgerAccessDenied for 401/403."""
        try:
            resp = self._session().request(
                method,
                self.base_url + path,
                json=body,
                headers={"X-Blnk-Key": self._key, "Accept": "application/json"},
                timeout=self.timeout,
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            self._count(method, path, "error")
            raise _Transient(f"{method} {path}: {type(exc).__name__}") from None
        self._count(method, path, str(resp.status_code))
        if resp.status_code >= 500 or resp.status_code == 429:
            raise _Transient(f"{method} {path}: HTTP {resp.status_code}")
        try:
            data = resp.json() if resp.content else None
        except ValueError:
            data = None
        code = message = None
        if not 200 <= resp.status_code < 300:
            code, message = _error_of(data)
        if resp.status_code in (401, 403):
            raise LedgerAccessDenied(
                f"Blnk refused {method} {path}: {resp.status_code} {code or ''} {message or ''}"
                ".  Check BLNK_API_KEY and its scopes (transactions:read, transactions:write,"
                " balances:read)."
            )
        return Reply(resp.status_code, data, code, message or "")

    def call(self, method: str, path: str, body: Any = None) -> Reply:
        """A read, retried; LedgerUnavailable once the attempts are spent."""
        return self.attempt(lambda: self.send(method, path, body), f"{method} {path}")

    def attempt(self, fn: Callable[[], T], what: str) -> T:
        try:
            for attempt in self.retrying():
                with attempt:
                    return fn()
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise LedgerUnavailable(
                f"Blnk did not answer {what} after {self.max_attempts} attempts: {last}"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _count(self, method: str, path: str, outcome: str) -> None:
        if self.on_request is not None:
            self.on_request(f"{method} {_endpoint(path)}", outcome)

    # Balance id -> (indicator or None, currency): both are fixed at a balance's creation.
    def remember(self, balance_id: str, indicator: str | None, currency: str) -> None:
        with self._names_lock:
            self._names[balance_id] = (indicator, currency)
            self._names.move_to_end(balance_id)
            while len(self._names) > 50_000:
                self._names.popitem(last=False)

    def known(self, balance_id: str) -> tuple[str | None, str] | None:
        with self._names_lock:
            return self._names.get(balance_id)


def _endpoint(path: str) -> str:
    """A path with its ids folded, for metrics: /transactions/inflight/{id}."""
    parts = path.split("/")
    if (
        len(parts) > 3
        and parts[1] == "transactions"
        and parts[2] in ("reference", "inflight")
        and parts[3] != "bulk"
    ):
        return f"/transactions/{parts[2]}/{{id}}"
    if len(parts) == 3 and parts[2] not in ("filter", "bulk"):
        return f"/{parts[1]}/{{id}}"
    return path


def _error_of(data: Any) -> tuple[str | None, str | None]:
    if isinstance(data, dict):
        detail = data.get("error_detail")
        if isinstance(detail, dict):
            code, message = detail.get("code"), detail.get("message")
            return (code if isinstance(code, str) else None), (
                message if isinstance(message, str) else None
            )
        legacy = data.get("error") or data.get("errors")
        if isinstance(legacy, str):
            return None, legacy
    return None, None


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(p, safe="") for p in parts)


# -- reading Blnk's records -------------------------------------------------------------------


def _unreadable(record: Mapping[str, Any], why: str) -> UnreadableRecord:
    tid = record.get("transaction_id")
    return UnreadableRecord(
        f"Blnk transaction {tid!r}: {why}; nothing is decided on it (a person must look)"
    )


def _int(record: Mapping[str, Any], name: str) -> int:
    value = record.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _unreadable(record, f"{name} is {value!r}, not a non-negative integer")
    return value


def _precision(record: Mapping[str, Any]) -> int:
    value = record.get("precision")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _unreadable(record, f"precision is {value!r}")
    if value == 0:
        return 1  # model/model.go ApplyPrecision: 0 means "not given", taken as 1
    if value < 0 or value != int(value):
        raise _unreadable(record, f"precision is {value!r}, not a positive integer")
    return int(value)


def _time(record: Mapping[str, Any], name: str) -> datetime | None:
    value = record.get(name)
    if value is None or (isinstance(value, str) and value.startswith(_ZERO_YEAR)):
        return None
    if not isinstance(value, str):
        raise _unreadable(record, f"{name} is {value!r}")
    try:
        when = datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
    except ValueError:
        raise _unreadable(record, f"{name} is {value!r}, not RFC 3339") from None
    if when.tzinfo is None:
        raise _unreadable(record, f"{name} {value!r} has no time zone")
    return when.astimezone(UTC)


def _str(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise _unreadable(record, f"{name} is {value!r}")
    return value


def _meta(record: Mapping[str, Any]) -> dict[str, Any]:
    meta = record.get("meta_data")
    return dict(meta) if isinstance(meta, dict) else {}


def _currency(record: Mapping[str, Any]) -> str:
    try:
        return normalize_currency(_str(record, "currency"))
    except LedgerError as exc:
        raise _unreadable(record, str(exc)) from None


def _scale(currency: str) -> int:
    """What one major unit is in minor units: 100 for USD, 1 for JPY, 1000 for KWD."""
    return int(10 ** exponent(currency))


def _to_minor(record: Mapping[str, Any], precise: int, currency: str) -> int:
    """Blnk's precise units at the record's precision -> our minor units, exactly."""
    precision = _precision(record)
    scaled = precise * _scale(currency)
    if scaled % precision:
        raise _unreadable(
            record,
            f"{precise} at precision {precision} is not a whole number of {currency} minor units",
        )
    return scaled // precision


def _to_precise(minor: int, precision: int, currency: str) -> int:
    scaled = minor * precision
    scale = _scale(currency)
    if scaled % scale:
        raise InvalidAmount(
            f"{minor} {currency} minor units cannot be written at the hold's precision {precision}"
        )
    return scaled // scale


def _is_queue_copy(record: Mapping[str, Any]) -> bool:
    parent = record.get("parent_transaction")
    return bool(parent) and _meta(record).get("QUEUED_PARENT_TRANSACTION") == parent


@dataclass
class _Hold:
    """A Blnk record as one of our transactions, with what it takes to act on it."""

    txn: Transaction
    hold_id: str  # the id a commit or void is sent to
    precision: int
    children: frozenset[str]  # ids of the children seen when read
    pending: bool = False  # QUEUED in Blnk: nothing reserved yet, nothing to settle yet


# -- the ledger -------------------------------------------------------------------------------


class BlnkLedger:
    """Ledger over Blnk; ``conn`` is the service's own database (claims and locks)."""

    def __init__(
        self,
        conn: Connection,
        client: BlnkClient,
        *,
        clock: Callable[[], datetime] = _utcnow,
        dry_run: bool | None = None,
    ) -> None:
        self.conn = conn
        self.client = client
        self._clock = clock
        # A ledger made on a rehearsing connection rehearses (ledger/protocol.py DRY_RUN).
        self.dry_run = bool(conn.info.get(DRY_RUN, False)) if dry_run is None else dry_run

    # -- the service's own rows: locks, claims, keys -----------------------------------

    def _upsert_claims(self, references: Sequence[str], *, lock: bool) -> None:
        now = self._clock()
        rows = [{"reference": r, "claimed_until": None, "updated_at": now} for r in references]
        if not rows:
            return
        ins: Any = (
            postgresql.insert(claims)
            if self.conn.dialect.name == "postgresql"
            else sqlite.insert(claims)
        )
        if lock:
            # DO UPDATE takes the row lock, inserted or not: one round trip for the lock.
            stmt = ins.on_conflict_do_update(
                index_elements=[claims.c.reference], set_={"updated_at": ins.excluded.updated_at}
            )
        else:
            stmt = ins.on_conflict_do_nothing(index_elements=[claims.c.reference])
        self.conn.execute(stmt, rows)

    def _lock(self, reference: str) -> None:
        self._upsert_claims([reference], lock=True)

    def lock_references(self, references: Sequence[str]) -> dict[str, Transaction]:
        wanted = sorted(set(references))  # one order for every worker: no deadlock
        if not self.dry_run:
            self._upsert_claims(wanted, lock=True)
        out: dict[str, Transaction] = {}
        for start in range(0, len(wanted), PAGE):
            holds = self._holds_by_reference(wanted[start : start + PAGE])
            out.update({ref: hold.txn for ref, hold in holds.items()})
        return out

    def _claim(self, references: Sequence[str], now: datetime, lease: timedelta) -> set[str]:
        self._upsert_claims(references, lock=False)
        c = claims.c
        pick = select(c.reference).where(
            c.reference.in_(list(references)),
            or_(c.claimed_until.is_(None), c.claimed_until < now),
        )
        if self.conn.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            update(claims)
            .where(c.reference.in_(pick.scalar_subquery()))
            .values(claimed_until=now + lease, updated_at=now)
            .returning(c.reference)
        )
        return {r[0] for r in self.conn.execute(stmt)}

    def release(self, references: Sequence[str]) -> None:
        if references:
            self.conn.execute(
                update(claims)
                .where(claims.c.reference.in_(list(references)))
                .values(claimed_until=None)
            )

    # -- reading -----------------------------------------------------------------------

    def _filter(self, filters: list[dict[str, Any]], **extra: Any) -> Iterator[list[Any]]:
        """Pages of ``POST /transactions/filter``, oldest first."""
        offset = 0
        while True:
            body = {
                "filters": filters,
                "limit": PAGE,
                "offset": offset,
                "sort_by": "created_at",
                "sort_order": "asc",
                **extra,
            }
            reply = self.client.call("POST", "/transactions/filter", body)
            page = self._expect_list(reply, "POST /transactions/filter")
            yield page
            if len(page) < PAGE:
                return
            offset += PAGE

    @staticmethod
    def _expect_list(reply: Reply, what: str) -> list[dict[str, Any]]:
        data = reply.data
        if reply.ok and isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not reply.ok or not isinstance(data, list):
            raise LedgerError(
                f"Blnk answered {what} with {reply.status} {reply.code}: "
                f"{reply.message or 'not a list'}"
            )
        return [r for r in data if isinstance(r, dict)]

    def _children_of(self, ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        wanted = list(dict.fromkeys(ids))
        for start in range(0, len(wanted), PAGE):
            chunk = wanted[start : start + PAGE]
            spec = (
                {"field": "parent_transaction", "operator": "eq", "value": chunk[0]}
                if len(chunk) == 1
                else {"field": "parent_transaction", "operator": "in", "values": chunk}
            )
            for page in self._filter([spec]):
                for rec in page:
                    parent = rec.get("parent_transaction")
                    if isinstance(parent, str) and parent in out:
                        out[parent].append(rec)
        return out

    def _names(self, ids: Iterable[str]) -> None:
        """Learn which of these balance ids are indicators (one request per 100 unknown).
        GET, not POST /balances/filter: that one needs balances:write."""
        unknown = [i for i in dict.fromkeys(ids) if i and self.client.known(i) is None]
        for start in range(0, len(unknown), PAGE):
            chunk = unknown[start : start + PAGE]
            query = "balance_id_in=" + quote(",".join(chunk), safe=",")
            reply = self.client.call("GET", f"/balances?{query}&limit={PAGE}")
            for bal in self._expect_list(reply, "GET /balances"):
                self._learn(bal)

    def _learn(self, bal: Mapping[str, Any]) -> None:
        bid, cur = bal.get("balance_id"), bal.get("currency")
        if isinstance(bid, str) and isinstance(cur, str):
            ind = bal.get("indicator")
            self.client.remember(bid, ind if isinstance(ind, str) and ind else None, cur)

    def _name(self, balance_id: str) -> str:
        known = self.client.known(balance_id)
        return known[0] if known and known[0] else balance_id

    def _views(self, records: Sequence[Mapping[str, Any]]) -> list[_Hold]:
        """Our transactions for these records, children and queue copies looked up in bulk."""
        queued = [r for r in records if r.get("status") == "QUEUED"]
        copies: dict[str, Mapping[str, Any]] = {}
        if queued:
            kids = self._children_of([_str(r, "transaction_id") for r in queued])
            for parent, recs in kids.items():
                for kid in recs:
                    if _is_queue_copy(kid):
                        copies[parent] = kid
        holds: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = []  # (root, hold record)
        for rec in records:
            tid = _str(rec, "transaction_id")
            holds.append((rec, copies.get(tid, rec)))
        settle_ids = [_str(h, "transaction_id") for _, h in holds if h.get("status") == "INFLIGHT"]
        children = self._children_of(settle_ids) if settle_ids else {}
        self._names(str(h.get(side) or "") for _, h in holds for side in ("source", "destination"))
        return [
            self._view(root, hold, children.get(_str(hold, "transaction_id"), []))
            for root, hold in holds
        ]

    def _view(
        self,
        root: Mapping[str, Any],
        hold: Mapping[str, Any],
        children: Sequence[Mapping[str, Any]],
    ) -> _Hold:
        status = hold.get("status")
        currency = _currency(hold)
        amount = _to_minor(hold, _int(hold, "precise_amount"), currency)
        created = _time(hold, "created_at")
        if created is None:
            raise _unreadable(hold, "created_at is missing")
        reference = _str(root, "reference")
        if _is_queue_copy(hold) and hold is root and reference.endswith("_q"):
            reference = reference[:-2]  # transaction_queue.go createQueueCopy: "<ref>_q"
        committed = voided = 0
        updated: datetime | None = None
        pending = False
        if status == "INFLIGHT":
            for child in children:
                kind = child.get("status")
                if kind not in ("APPLIED", "VOID"):
                    continue
                part = _to_minor(child, _int(child, "precise_amount"), currency)
                if kind == "APPLIED":
                    committed += part
                else:
                    voided += part
                when = _time(child, "created_at")
                if when and (updated is None or when > updated):
                    updated = when
            if voided:
                ours = TxnStatus.APPLIED if committed else TxnStatus.VOID
            elif committed >= amount:
                ours = TxnStatus.APPLIED
            else:
                ours = TxnStatus.INFLIGHT
        elif status == "QUEUED":
            # api/transactions.go transformTransaction lifts meta_data.inflight to the top.
            if hold.get("inflight") is not True and _meta(hold).get("inflight") is not True:
                raise LedgerBusy(
                    f"{reference}: queued in Blnk and not applied yet; the next pass will see it"
                )
            ours, pending = TxnStatus.INFLIGHT, True
        elif status == "APPLIED":
            ours, committed = TxnStatus.APPLIED, amount
        elif status in ("VOID", "REJECTED"):
            # REJECTED: Blnk refused it (e.g. insufficient funds); nothing moved.
            ours, voided = TxnStatus.VOID, amount
        elif status == "SCHEDULED":
            raise LedgerBusy(f"{reference}: scheduled in Blnk for later; not applied yet")
        else:
            raise _unreadable(hold, f"status is {status!r}")
        meta = {k: v for k, v in _meta(root).items() if k not in BLNK_META}
        txn = Transaction(
            id=_str(hold, "transaction_id"),
            reference=reference,
            source=self._name(_str(hold, "source")),
            destination=self._name(_str(hold, "destination")),
            amount=amount,
            currency=currency,
            status=ours,
            committed_amount=committed,
            voided_amount=voided,
            created_at=created,
            metadata=meta,
            expires_at=_time(hold, "inflight_expiry_date"),
            updated_at=updated,
        )
        return _Hold(
            txn=txn,
            hold_id=_str(hold, "transaction_id"),
            precision=_precision(hold),
            children=frozenset(str(c.get("transaction_id")) for c in children),
            pending=pending,
        )

    def _record(self, reference: str) -> dict[str, Any] | None:
        reply = self.client.call("GET", _path("transactions", "reference", reference))
        if reply.status == 404:
            return None
        if not reply.ok or not isinstance(reply.data, dict):
            raise LedgerError(
                f"Blnk answered GET transaction {reference!r} with {reply.status} "
                f"{reply.code}: {reply.message}"
            )
        return reply.data

    def _hold(self, reference: str) -> _Hold | None:
        record = self._record(reference)
        return self._views([record])[0] if record is not None else None

    def _linked_records(self, links: Sequence[str]) -> list[dict[str, Any]]:
        spec = (
            {"field": f"meta_data.{LINK_KEY}", "operator": "eq", "value": links[0]}
            if len(links) == 1
            else {"field": f"meta_data.{LINK_KEY}", "operator": "in", "values": list(links)}
        )
        # Children and queue copies carry their parent's meta_data: the roots are the
        # records with no parent.
        return [
            rec
            for page in self._filter([spec])
            for rec in page
            if not rec.get("parent_transaction")
        ]

    # -- the protocol: reads -----------------------------------------------------------

    def get(self, reference: str, *, lock: bool = False) -> Transaction | None:
        if lock:
            self._lock(reference)
        hold = self._hold(reference)
        return hold.txn if hold else None

    def find_linked(self, link: str, *, lock: bool = False) -> Transaction | None:
        if lock:
            self._lock(link)
        hold = self._hold(link)
        if hold is None:
            roots = self._linked_records([link])
            if not roots:
                return None
            hold = self._views(roots[:1])[0]
        if lock and hold.txn.reference != link:
            # Locked by its link first, then by its own reference, in that order always.
            self._lock(hold.txn.reference)
            hold = self._hold(hold.txn.reference) or hold
        return hold.txn

    def find_linked_many(self, links: Sequence[str]) -> dict[str, Transaction]:
        out: dict[str, Transaction] = {}
        wanted = list(dict.fromkeys(links))
        for start in range(0, len(wanted), PAGE):
            chunk = wanted[start : start + PAGE]
            spec = {"field": "reference", "operator": "in", "values": chunk}
            by_ref = [r for page in self._filter([spec]) for r in page]
            found = {str(r.get("reference")) for r in by_ref}
            rest = [link for link in chunk if link not in found]
            linked = self._linked_records(rest) if rest else []
            views = self._views(by_ref + linked)
            for view in views[: len(by_ref)]:
                out[view.txn.reference] = view.txn
            for view in views[len(by_ref) :]:
                link = view.txn.metadata.get(LINK_KEY)
                if isinstance(link, str) and link in rest and link not in out:
                    out[link] = view.txn
        return out

    def _unsettled_pages(
        self, older_than: datetime, after: tuple[datetime, str] | None
    ) -> Iterator[list[_Hold]]:
        """Holds still INFLIGHT by their children, created before ``older_than``, oldest
        first, after the keyset ``after``.  Blnk's own status says INFLIGHT for settled
        holds too, so every page's children are read."""
        filters: list[dict[str, Any]] = [
            {"field": "status", "operator": "eq", "value": "INFLIGHT"},
            {"field": "created_at", "operator": "lt", "value": _rfc3339(older_than)},
        ]
        floor = after[0] if after else None
        if self.client.lookback is not None:
            start = self._clock() - self.client.lookback
            floor = max(floor, start) if floor else start
        if floor is not None:
            filters.append({"field": "created_at", "operator": "gte", "value": _rfc3339(floor)})
        for page in self._filter(filters):
            views = [
                v
                for v in self._views(page)
                if v.txn.status is TxnStatus.INFLIGHT
                and (after is None or (v.txn.created_at, v.txn.id) > after)
            ]
            yield sorted(views, key=lambda v: (v.txn.created_at, v.txn.id))

    def list_inflight(
        self, older_than: datetime, limit: int, after: tuple[datetime, str] | None = None
    ) -> Sequence[Transaction]:
        out: list[Transaction] = []
        for page in self._unsettled_pages(older_than, after):
            out.extend(v.txn for v in page)
            if len(out) >= limit:
                break
        return out[:limit]

    def claim_inflight(
        self,
        older_than: datetime,
        limit: int,
        lease: timedelta,
        now: datetime,
        after: tuple[datetime, str] | None = None,
    ) -> Sequence[Transaction]:
        out: list[Transaction] = []
        for page in self._unsettled_pages(older_than, after):
            pos = 0
            while pos < len(page) and len(out) < limit:
                chunk = page[pos : pos + (limit - len(out))]
                pos += len(chunk)
                taken = self._claim([v.txn.reference for v in chunk], now, lease)
                out.extend(v.txn for v in chunk if v.txn.reference in taken)
            if len(out) >= limit:
                break
        return out

    def list_transactions(
        self, status: TxnStatus | None = None, limit: int = 100, offset: int = 0
    ) -> list[Transaction]:
        """Roots (no parent), oldest first, as our transactions; ``status`` is ours."""
        out: list[Transaction] = []
        skipped = 0
        for page in self._filter([]):
            roots = [r for r in page if not r.get("parent_transaction")]
            for view in self._views(roots):
                if status is not None and view.txn.status is not status:
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                out.append(view.txn)
                if len(out) >= limit:
                    return out
        return out

    def balances(self) -> Sequence[Balance]:
        # Pages of GET /balances frozen at this instant, so that a balance created meanwhile
        # cannot shift the offsets.
        frozen = "created_at_lte=" + quote(_rfc3339(self._clock()), safe="")
        seen: dict[str, Balance] = {}
        offset = 0
        while True:
            reply = self.client.call("GET", f"/balances?{frozen}&limit={PAGE}&offset={offset}")
            page = self._expect_list(reply, "GET /balances")
            for bal in page:
                self._learn(bal)
                seen[str(bal.get("balance_id"))] = _balance(bal)
            if len(page) < PAGE:
                break
            offset += PAGE
        return sorted(seen.values(), key=lambda b: (b.name, b.currency))

    def get_balances(self, names: Sequence[str]) -> Sequence[Balance]:
        """Named balances by their Blnk id (GET, not POST /balances/filter: balances:write)."""
        ids = [n for n in dict.fromkeys(names) if n and not n.startswith("@")]
        out: list[Balance] = []
        for start in range(0, len(ids), PAGE):
            chunk = ids[start : start + PAGE]
            query = "balance_id_in=" + quote(",".join(chunk), safe=",")
            reply = self.client.call("GET", f"/balances?{query}&limit={PAGE}")
            for bal in self._expect_list(reply, "GET /balances"):
                self._learn(bal)
                out.append(_balance(bal))
        return sorted(out, key=lambda b: (b.name, b.currency))

    def recent_for_balance(self, balance: str, limit: int = 20) -> Sequence[Transaction]:
        """A balance's latest transactions, newest first (a customer's wallet history)."""
        spec = {"field": "destination", "operator": "eq", "value": balance}
        body = {
            "filters": [spec],
            # Commit and void children are records too; ask for enough to fill ``limit``.
            "limit": min(PAGE, max(1, 3 * limit)),
            "offset": 0,
            "sort_by": "created_at",
            "sort_order": "desc",
        }
        reply = self.client.call("POST", "/transactions/filter", body)
        records = self._expect_list(reply, "POST /transactions/filter")
        roots = [r for r in records if not r.get("parent_transaction")]
        return [view.txn for view in self._views(roots)][:limit]

    def check_invariants(self) -> list[Violation]:
        """What Blnk can tell: per currency the balances sum to zero (applied and inflight);
        no hold in the lookback window is over-settled or both committed and voided in full."""
        out: list[Violation] = []
        totals: dict[str, list[int]] = {}
        for bal in self.balances():
            cur = totals.setdefault(bal.currency, [0, 0])
            cur[0] += bal.balance
            cur[1] += bal.inflight_credit - bal.inflight_debit
        for currency, (total, inflight) in sorted(totals.items()):
            if total:
                out.append(Violation("zero_sum", f"{currency} balances sum to {total}, not 0"))
            if inflight:
                out.append(
                    Violation("zero_sum_inflight", f"{currency} inflight sums to {inflight}")
                )
        filters: list[dict[str, Any]] = [{"field": "status", "operator": "eq", "value": "INFLIGHT"}]
        if self.client.lookback is not None:
            start = self._clock() - self.client.lookback
            filters.append({"field": "created_at", "operator": "gte", "value": _rfc3339(start)})
        for page in self._filter(filters):
            for view in self._views(page):
                t = view.txn
                if t.committed_amount + t.voided_amount > t.amount or (
                    t.committed_amount == t.amount and t.voided_amount == t.amount
                ):
                    out.append(
                        Violation(
                            "transaction_amounts",
                            f"{t.reference}: {t.status.value} amount={t.amount} "
                            f"committed={t.committed_amount} voided={t.voided_amount}",
                        )
                    )
        return out

    # -- the protocol: writes ----------------------------------------------------------

    def _check_balance(self, name: str, currency: str) -> None:
        if name.startswith("@"):
            return  # Blnk keeps one per currency and creates it on first use
        known = self.client.known(name)
        if known is None:
            reply = self.client.call("GET", _path("balances", name))
            if reply.status == 404:
                raise UnknownBalance(
                    f"Blnk has no balance {name!r}: name a Blnk balance by its id (bln_...) "
                    "or by an indicator such as '@stripe'"
                )
            if not reply.ok or not isinstance(reply.data, dict):
                raise LedgerError(f"Blnk answered GET balance {name!r} with {reply.status}")
            self._learn(reply.data)
            known = self.client.known(name)
        if known is not None and known[1].upper() != currency:
            raise CurrencyMismatch(
                f"balance {name!r} holds {known[1]}; it cannot take {currency} (a named balance "
                f"keeps one currency; only indicator balances such as '@stripe' hold several)"
            )

    def create(self, new: NewTransaction) -> Transaction:
        new = validate_new(new)
        if not self.dry_run:
            self._lock(new.reference)
        existing = self._hold(new.reference)
        if existing is not None:
            return _same_terms(existing.txn, new)
        self._check_balance(new.source, new.currency)
        self._check_balance(new.destination, new.currency)
        precision = _scale(new.currency)
        if self.dry_run:
            now = self._clock()
            return Transaction(
                id="txn_dry_run",
                reference=new.reference,
                source=new.source,
                destination=new.destination,
                amount=new.amount,
                currency=new.currency,
                status=TxnStatus.INFLIGHT if new.inflight else TxnStatus.APPLIED,
                committed_amount=0 if new.inflight else new.amount,
                voided_amount=0,
                created_at=now,
                metadata=dict(new.metadata),
                expires_at=new.expires_at,
            )
        description = new.metadata.get("description")
        body: dict[str, Any] = {
            "reference": new.reference,
            "precise_amount": new.amount,
            "precision": precision,
            "currency": new.currency,
            "source": new.source,
            "destination": new.destination,
            "description": description
            if isinstance(description, str) and description
            else f"{new.reference} (recorded by stripe-recon)",
            "inflight": new.inflight,
            "skip_queue": True,
            # External money entering (the top-up's @stripe side) may go negative; a named
            # source must hold the funds.
            "allow_overdraft": new.source.startswith("@"),
        }
        if new.metadata:
            body["meta_data"] = dict(new.metadata)
        if new.inflight and new.expires_at is not None:
            body["inflight_expiry_date"] = (
                new.expires_at.astimezone(UTC)
                .replace(microsecond=0)
                .isoformat()
                .replace("+00:00", "Z")
            )

        def landed() -> Transaction | None:
            hold = self._hold(new.reference)
            return _same_terms(hold.txn, new) if hold else None

        reply = self._write("POST", "/transactions", body, landed)
        if isinstance(reply, Transaction):
            return reply
        if reply.ok and isinstance(reply.data, dict):
            data = reply.data
            for side in ("source", "destination"):
                bid, name = data.get(side), getattr(new, side)
                if isinstance(bid, str) and bid != name and name.startswith("@"):
                    self.client.remember(bid, name, new.currency)
            self._names(str(data.get(side) or "") for side in ("source", "destination"))
            return self._view(data, data, []).txn  # new: no children yet
        if reply.code == "TXN_DUPLICATE_REFERENCE":
            done = landed()
            if done is not None:
                return done
        raise _create_error(reply, new)

    def commit(
        self, reference: str, amount: int | None = None, *, idempotency_key: str | None = None
    ) -> Transaction:
        if amount is not None and not is_amount(amount):
            raise InvalidAmount(f"commit amount must be a positive integer: {amount!r}")
        if not self.dry_run:
            self._lock(reference)
        hold = self._hold(reference)
        if hold is None:
            raise TransactionNotFound(reference)
        if idempotency_key is not None and self._keyed(reference, idempotency_key):
            return hold.txn
        txn = hold.txn
        take = to_commit(txn, amount)
        if take is None:
            return txn  # a full commit retried after it happened: nothing to do
        if hold.pending:
            raise LedgerBusy(f"{reference}: queued in Blnk, not reserved yet; retry later")
        if self.dry_run:
            return _after(txn, committed=take, now=self._clock())
        body: dict[str, Any] = {"status": "commit", "skip_queue": True}
        if amount is not None:
            body["precise_amount"] = _to_precise(amount, hold.precision, txn.currency)
        child = self._settle(hold, body, "APPLIED", amount)
        done = self._after_child(hold, child, "commit", amount)
        if idempotency_key is not None and isinstance(child, Mapping):
            self._remember_key(reference, idempotency_key, str(child.get("transaction_id")))
        return done

    def void(self, reference: str, *, idempotency_key: str | None = None) -> Transaction:
        if not self.dry_run:
            self._lock(reference)
        hold = self._hold(reference)
        if hold is None:
            raise TransactionNotFound(reference)
        txn = hold.txn
        if to_void(txn) is None:
            return txn  # voiding twice releases nothing twice
        if hold.pending:
            raise LedgerBusy(f"{reference}: queued in Blnk, not reserved yet; retry later")
        if self.dry_run:
            return _after(txn, voided=txn.remaining, now=self._clock())
        child = self._settle(hold, {"status": "void", "skip_queue": True}, "VOID", None)
        return self._after_child(hold, child, "void", None)

    def _settle(
        self, hold: _Hold, body: dict[str, Any], kind: str, amount: int | None
    ) -> Mapping[str, Any] | Transaction:
        """PUT the commit or void; the child it recorded, or our transaction when Blnk says
        the wanted outcome is already there.  A lost answer is checked before a resend."""

        def landed() -> Mapping[str, Any] | None:
            fresh = self._children_of([hold.hold_id])[hold.hold_id]
            for child in fresh:
                if str(child.get("transaction_id")) in hold.children:
                    continue
                if child.get("status") != kind:
                    continue
                if kind == "APPLIED" and amount is not None:
                    precise = _int(child, "precise_amount")
                    if precise != _to_precise(amount, hold.precision, hold.txn.currency):
                        continue
                return child
            return None

        path = _path("transactions", "inflight", hold.hold_id)
        reply = self._write("PUT", path, body, landed)
        if not isinstance(reply, Reply):
            return reply
        if reply.ok and isinstance(reply.data, dict):
            return reply.data
        ref = hold.txn.reference
        wanted = "commit" if kind == "APPLIED" else "void"
        if reply.code == "TXN_ALREADY_COMMITTED" and (wanted == "commit" and amount is None):
            return self._reread(ref)
        if reply.code == "TXN_ALREADY_VOIDED" and wanted == "void":
            return self._reread(ref)
        raise _settle_error(reply, ref, wanted)

    def _reread(self, reference: str) -> Transaction:
        hold = self._hold(reference)
        if hold is None:
            raise TransactionNotFound(reference)
        return hold.txn

    def _after_child(
        self, hold: _Hold, child: Mapping[str, Any] | Transaction, op: str, amount: int | None
    ) -> Transaction:
        if isinstance(child, Transaction):
            return child
        part = _to_minor(child, _int(child, "precise_amount"), hold.txn.currency)
        when = _time(child, "created_at") or self._clock()
        if op == "commit":
            return _after(hold.txn, committed=part, now=when)
        return _after(hold.txn, voided=part, now=when)

    def _write(
        self,
        method: str,
        path: str,
        body: Any,
        landed: Callable[[], T | None],
    ) -> Reply | T:
        """Send a write; after a lost answer, look whether it landed before sending again.

        ``body`` may be a function, called before each send (a bulk call resends only the
        items that did not land)."""
        state = {"sent": False}

        def once() -> Reply | T:
            if state["sent"]:
                done = landed()
                if done is not None:
                    return done
            state["sent"] = True
            return self.client.send(method, path, body() if callable(body) else body)

        return self.client.attempt(once, f"{method} {path}")

    def _keyed(self, reference: str, key: str) -> bool:
        row = self.conn.execute(
            select(commit_keys.c.child_id).where(
                commit_keys.c.reference == reference, commit_keys.c.idempotency_key == key
            )
        ).first()
        return row is not None

    def _remember_key(self, reference: str, key: str, child_id: str) -> None:
        self.conn.execute(
            commit_keys.insert().values(
                reference=reference,
                idempotency_key=key,
                child_id=child_id,
                created_at=self._clock(),
            )
        )

    # -- bulk --------------------------------------------------------------------------

    def commit_many(self, items: Sequence[tuple[str, int | None]]) -> list[Settled]:
        return self._bulk("commit", list(items))

    def void_many(self, references: Sequence[str]) -> list[Settled]:
        return self._bulk("void", [(r, None) for r in references])

    def _bulk(self, op: str, items: list[tuple[str, int | None]]) -> list[Settled]:
        results: dict[int, Settled] = {}
        for start in range(0, len(items), BULK_MAX):
            chunk = list(enumerate(items))[start : start + BULK_MAX]
            results.update(self._bulk_chunk(op, chunk))
        return [results[i] for i in range(len(items))]

    def _bulk_chunk(
        self, op: str, chunk: list[tuple[int, tuple[str, int | None]]]
    ) -> dict[int, Settled]:
        out: dict[int, Settled] = {}
        refs = list(dict.fromkeys(ref for _, (ref, _) in chunk))
        if not self.dry_run:
            for ref in sorted(refs):  # one order for every worker: no deadlock
                self._lock(ref)
        holds = self._holds_by_reference(refs)
        to_send: dict[int, tuple[_Hold, int | None]] = {}
        for i, (ref, amount) in chunk:
            if amount is not None and not is_amount(amount):
                out[i] = Settled(
                    ref, error=InvalidAmount(f"commit amount must be positive: {amount!r}")
                )
                continue
            hold = holds.get(ref)
            if hold is None:
                out[i] = Settled(ref, error=TransactionNotFound(ref))
                continue
            try:
                early = _decide(op, hold, amount)
            except LedgerError as exc:
                out[i] = Settled(ref, error=exc)
                continue
            if early is not None:
                out[i] = Settled(ref, transaction=early)
            elif self.dry_run:
                out[i] = Settled(ref, transaction=_after_settle(hold, op, amount, self._clock()))
            else:
                to_send[i] = (hold, amount)
        if to_send:
            out.update(self._bulk_send(op, to_send))
        return out

    def _holds_by_reference(self, refs: Sequence[str]) -> dict[str, _Hold]:
        spec = {"field": "reference", "operator": "in", "values": list(refs)}
        records = [r for page in self._filter([spec]) for r in page]
        return {v.txn.reference: v for v in self._views(records)}

    def _bulk_send(self, op: str, items: dict[int, tuple[_Hold, int | None]]) -> dict[int, Settled]:
        kind = "APPLIED" if op == "commit" else "VOID"
        landed_ids: set[str] = set()

        def body() -> dict[str, Any]:
            todo = [(h, a) for h, a in items.values() if h.hold_id not in landed_ids]
            if op == "void":
                return {"transaction_ids": [h.hold_id for h, _ in todo], "skip_queue": True}
            entries = []
            for hold, amount in todo:
                entry: dict[str, Any] = {"transaction_id": hold.hold_id}
                if amount is not None:
                    entry["precise_amount"] = _to_precise(amount, hold.precision, hold.txn.currency)
                entries.append(entry)
            return {"transactions": entries, "skip_queue": True}

        def landed() -> bool | None:
            # After a lost answer: the holds that got a new child are done; only the rest
            # go in the next attempt's body.
            todo = [h for h, _ in items.values() if h.hold_id not in landed_ids]
            fresh = self._children_of([h.hold_id for h in todo])
            for hold in todo:
                if any(
                    c.get("status") == kind and str(c.get("transaction_id")) not in hold.children
                    for c in fresh[hold.hold_id]
                ):
                    landed_ids.add(hold.hold_id)
            return True if len(landed_ids) == len(items) else None

        reply = self._write("POST", f"/transactions/inflight/bulk/{op}", body, landed)
        outcome: dict[str, tuple[str, str, str]] = {
            tid: ("succeeded", "", "") for tid in landed_ids
        }
        if isinstance(reply, Reply):
            results = reply.data.get("results") if isinstance(reply.data, dict) else None
            if not reply.ok or not isinstance(results, list):
                err = _settle_error(reply, "bulk", op)
                return {
                    i: Settled(h.txn.reference, error=err)
                    for i, (h, _) in items.items()
                    if h.hold_id not in landed_ids
                } | {
                    i: Settled(h.txn.reference, transaction=_after_settle(h, op, a, self._clock()))
                    for i, (h, a) in items.items()
                    if h.hold_id in landed_ids
                }
            for res in results:
                if isinstance(res, dict) and isinstance(res.get("transaction_id"), str):
                    outcome[res["transaction_id"]] = (
                        str(res.get("status") or ""),
                        str(res.get("code") or ""),
                        str(res.get("message") or ""),
                    )
        # The bulk answer names no children: read the holds again for what they now are.
        fresh = self._holds_by_reference([h.txn.reference for h, _ in items.values()])
        out: dict[int, Settled] = {}
        for i, (hold, amount) in items.items():
            ref = hold.txn.reference
            status, code, message = outcome.get(hold.hold_id, ("", "", "no result"))
            now = fresh.get(ref)
            matched = (code == "ALREADY_COMMITTED" and op == "commit" and amount is None) or (
                code == "ALREADY_VOIDED" and op == "void"
            )
            if status == "succeeded" or matched:
                out[i] = (
                    Settled(ref, transaction=now.txn)
                    if now
                    else Settled(ref, error=TransactionNotFound(ref))
                )
            else:
                out[i] = Settled(ref, error=_bulk_error(code, message, ref, op))
        return out


# -- helpers ----------------------------------------------------------------------------------


def _balance(bal: Mapping[str, Any]) -> Balance:
    def num(name: str) -> int:
        value = bal.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise UnreadableRecord(
                f"Blnk balance {bal.get('balance_id')!r}: {name} is {value!r}, not an integer"
            )
        return value

    indicator = bal.get("indicator")
    bid = bal.get("balance_id")
    name = indicator if isinstance(indicator, str) and indicator else bid
    currency = bal.get("currency")
    if not isinstance(name, str) or not isinstance(currency, str):
        raise UnreadableRecord(f"Blnk balance {bid!r} has no id or currency")
    return Balance(
        name=name,
        currency=currency.upper(),
        balance=num("balance"),
        inflight_credit=num("inflight_credit_balance"),
        inflight_debit=num("inflight_debit_balance"),
    )


def _same_terms(existing: Transaction, new: NewTransaction) -> Transaction:
    theirs = (existing.source, existing.destination, existing.amount, existing.currency)
    ours = (new.source, new.destination, new.amount, new.currency)
    if theirs != ours:
        raise ReferenceConflict(
            f"reference {new.reference!r} already exists with other terms "
            f"({existing.amount} {existing.currency} {existing.source}->{existing.destination})"
        )
    return existing


def _after(txn: Transaction, *, committed: int = 0, voided: int = 0, now: datetime) -> Transaction:
    c, v = txn.committed_amount + committed, txn.voided_amount + voided
    if v:
        status = TxnStatus.APPLIED if c else TxnStatus.VOID
    elif c >= txn.amount:
        status = TxnStatus.APPLIED
    else:
        status = TxnStatus.INFLIGHT
    return replace(txn, committed_amount=c, voided_amount=v, status=status, updated_at=now)


def _after_settle(hold: _Hold, op: str, amount: int | None, now: datetime) -> Transaction:
    if op == "commit":
        return _after(hold.txn, committed=hold.txn.remaining if amount is None else amount, now=now)
    return _after(hold.txn, voided=hold.txn.remaining, now=now)


def _decide(op: str, hold: _Hold, amount: int | None) -> Transaction | None:
    """The checks ``commit``/``void`` make before sending: the transaction when there is
    nothing to send, None when there is, a typed error when it cannot be done."""
    left = to_commit(hold.txn, amount) if op == "commit" else to_void(hold.txn)
    if left is None:
        return hold.txn
    if hold.pending:
        raise LedgerBusy(f"{hold.txn.reference}: queued in Blnk, not reserved yet; retry later")
    return None


def _create_error(reply: Reply, new: NewTransaction) -> LedgerError:
    what = f"Blnk refused {new.reference!r} ({reply.status} {reply.code}): {reply.message}"
    if reply.code == "TXN_INSUFFICIENT_FUNDS":
        return InsufficientFunds(what)
    if reply.code in ("TXN_NOT_FOUND", "BAL_NOT_FOUND"):
        return UnknownBalance(what)
    if reply.code in ("GEN_CONFLICT", "GEN_RESOURCE_LOCKED"):
        return LedgerBusy(what)
    if reply.code == "TXN_DUPLICATE_REFERENCE":
        return ReferenceConflict(what)
    if 400 <= reply.status < 500:
        return InvalidInput(what)
    return LedgerError(what)


def _settle_error(reply: Reply, reference: str, op: str) -> LedgerError:
    what = f"{reference}: Blnk refused the {op} ({reply.status} {reply.code}): {reply.message}"
    return {
        "TXN_ALREADY_COMMITTED": AlreadyCommitted,
        "TXN_ALREADY_VOIDED": AlreadyVoided,
        "TXN_COMMIT_AMOUNT_EXCEEDED": CommitAmountExceeded,
        "TXN_NOT_INFLIGHT": NotInflight,
        "TXN_INVALID_AMOUNT": InvalidAmount,
        "GEN_CONFLICT": LedgerBusy,
        "GEN_RESOURCE_LOCKED": LedgerBusy,
        "QUEUE_BACKPRESSURE": LedgerBusy,
    }.get(reply.code or "", LedgerError)(what)


def _bulk_error(code: str, message: str, reference: str, op: str) -> LedgerError:
    """transaction_inflight.go classifyInflightError's codes."""
    what = f"{reference}: Blnk refused the {op} ({code}): {message}"
    if code == "NOT_FOUND":
        return TransactionNotFound(reference)
    return {
        "ALREADY_COMMITTED": AlreadyCommitted,
        "ALREADY_VOIDED": AlreadyVoided,
        "NOT_INFLIGHT": NotInflight,
        "INVALID_AMOUNT": CommitAmountExceeded,
        "LOCKED": LedgerBusy,
        "ALREADY_QUEUED": LedgerBusy,
    }.get(code, LedgerError)(what)


__all__ = [
    "BLNK_META",
    "BlnkClient",
    "BlnkLedger",
    "Reply",
    "claims",
    "commit_keys",
    "metadata",
]
