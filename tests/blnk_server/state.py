"""In-memory Blnk Core: ledgers, balances, transactions, the queue, inflight expiry.

Every behaviour here is Blnk's as its source says (github.com/blnkfinance/blnk, read at
commit cba0072); the file a rule comes from is named where the rule is implemented.  The
essentials:

- A transaction names its source and destination by balance id (``bln_...``) or by an
  indicator starting with ``@``; an indicator balance exists once per currency in the
  General Ledger and is created on first use (transaction_execution.go
  getSourceAndDestination, balance.go getOrCreateBalanceByIndicator).  Stored transactions
  carry the resolved balance ids, never the indicator.
- Money is ``precise_amount`` (an integer) with ``precision`` (the scale: 100 for cents);
  ``amount`` is a float kept for compatibility, ``precise_amount / precision``
  (model/model.go ApplyPrecision, convertPreciseToDecimal).  A precision of 0 means 1.
- ``skip_queue: true`` records the transaction at once, INFLIGHT or APPLIED; otherwise the
  answer is a QUEUED record and a queue copy (reference ``<ref>_q``, parent the queued
  record) is applied later by a worker (transaction_queue.go QueueTransaction,
  createQueueCopy).
- A hold's own row stays INFLIGHT for ever: a commit records an APPLIED child, a void a VOID
  child with the remainder, each with ``parent_transaction`` = the hold
  (transaction_inflight.go finalizeCommitment, finalizeVoidTransaction, and the comment on
  collectInflightLegs).  What is left is ``precise_amount`` minus the APPLIED children
  (database/transaction_inflight.go GetTotalCommittedTransactions); any VOID child means
  voided (database/transaction_queries.go IsParentTransactionVoid).
- Balances: an inflight transaction moves ``inflight_debit_balance`` /
  ``inflight_credit_balance``; a commit moves them into ``debit_balance`` /
  ``credit_balance``; ``balance`` is credit minus debit (model/model.go).  The source needs
  funds unless ``allow_overdraft`` (model/model.go canProcessTransaction).  The apply path
  does not compare a transaction's currency with its balances' (transaction_dryrun.go says
  so in its currency-mismatch note): a client must.
- ``inflight_expiry_date`` is not a stored column (database/transaction.go's INSERT has no
  such column): the queue voids the hold when it falls due (queue.go queueInflightExpiry,
  cmd/workers.go processInflightExpiry) and reads show the zero time.

Thread safety: the server's event loop and the test thread that seeds or inspects state run
concurrently, so every public method takes ``self._lock``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

GENERAL_LEDGER_ID = "general_ledger_id"  # blnk.go GeneralLedgerID
ZERO_TIME = "0001-01-01T00:00:00Z"  # how Go renders a zero time.Time (omitempty keeps it)
MAX_BULK_INFLIGHT = 100  # api/model/transaction.go MaxBulkInflightItems


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """model/model.go GenerateUUIDWithSuffix: ``txn_<uuid4>``, ``bln_<uuid4>``..."""
    return f"{prefix}_{uuid.uuid4()}"


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


class BlnkError(Exception):
    """An error answer: HTTP status, catalog code (internal/apierror/codes.go), message.

    ``legacy_key`` is the flat field Blnk keeps beside ``error_detail`` (api/errors.go
    writeError): "error" for most endpoints, "errors" for validation failures.
    """

    def __init__(self, status: int, code: str, message: str, legacy_key: str = "error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.legacy_key = legacy_key

    def body(self) -> dict[str, Any]:
        return {
            self.legacy_key: self.message,
            "error_detail": {"code": self.code, "message": self.message},
        }


def _not_found(message: str, code: str = "TXN_NOT_FOUND") -> BlnkError:
    return BlnkError(404, code, message)


@dataclass
class Balance:
    balance_id: str
    ledger_id: str
    currency: str
    created_at: datetime
    indicator: str | None = None
    meta_data: dict[str, Any] | None = None
    credit: int = 0
    debit: int = 0
    inflight_credit: int = 0
    inflight_debit: int = 0
    version: int = 0

    @property
    def balance(self) -> int:
        return self.credit - self.debit

    def render(self) -> dict[str, Any]:
        """model/balance.go Balance; big.Int fields are JSON numbers."""
        out: dict[str, Any] = {
            "balance": self.balance,
            "version": self.version,
            "inflight_balance": self.inflight_credit - self.inflight_debit,
            "credit_balance": self.credit,
            "inflight_credit_balance": self.inflight_credit,
            "debit_balance": self.debit,
            "inflight_debit_balance": self.inflight_debit,
            "ledger_id": self.ledger_id,
            "identity_id": "",
            "balance_id": self.balance_id,
            "currency": self.currency,
            "created_at": rfc3339(self.created_at),
            "inflight_expires_at": ZERO_TIME,
            "meta_data": self.meta_data,
            "track_fund_lineage": False,
            "allocation_strategy": "FIFO",
        }
        if self.indicator:
            out["indicator"] = self.indicator
        return out


@dataclass
class Txn:
    seq: int
    transaction_id: str
    reference: str
    source: str
    destination: str
    currency: str
    description: str
    precise_amount: int
    precision: float
    status: str
    created_at: datetime
    meta_data: dict[str, Any] = field(default_factory=dict)
    parent_transaction: str = ""
    allow_overdraft: bool = False
    inflight_flag: bool = False  # the request's `inflight`; stored only as meta_data.inflight
    expiry: datetime | None = None

    @property
    def amount_string(self) -> str:
        value = Decimal(self.precise_amount) / Decimal(str(self.precision))
        return format(value.normalize(), "f")

    def render(self, *, echo_expiry: bool = False) -> dict[str, Any]:
        """model/transaction.go Transaction, after api/transactions.go transformTransaction:
        ``meta_data.inflight`` becomes the top-level ``inflight`` (so a commit child, whose
        meta_data was copied from its hold, shows ``inflight: true``), and an empty
        meta_data is left out."""
        meta = dict(self.meta_data)
        inflight = meta.pop("inflight", None) is True
        out: dict[str, Any] = {
            "precise_amount": self.precise_amount,
            "amount": float(Decimal(self.amount_string)),
            "amount_string": self.amount_string,
            "precision": self.precision,
            "overdraft_limit": 0,
            "transaction_id": self.transaction_id,
            "parent_transaction": self.parent_transaction,
            "source": self.source,
            "destination": self.destination,
            "reference": self.reference,
            "currency": self.currency,
            "description": self.description,
            "status": self.status,
            "hash": hashlib.sha256(
                f"{self.transaction_id}{self.reference}{self.precise_amount}".encode()
            ).hexdigest(),
            "allow_overdraft": self.allow_overdraft,
            "inflight": inflight,
            "skip_queue": False,
            "atomic": False,
            "created_at": rfc3339(self.created_at),
            "effective_date": rfc3339(self.created_at),
            "scheduled_for": ZERO_TIME,
            "inflight_expiry_date": (
                rfc3339(self.expiry) if echo_expiry and self.expiry else ZERO_TIME
            ),
            "inflight_commit_date": ZERO_TIME,
        }
        if meta:
            out["meta_data"] = meta
        return out


@dataclass
class QueuedAction:
    """An inflight commit/void accepted without skip_queue (queue.go InflightActionPayload)."""

    target: str
    action: str
    precise_amount: int | None
    action_id: str
    due: datetime


class BlnkState:
    """The books.  ``clock`` and each method's ``at`` let tests backdate what they seed."""

    def __init__(self, clock: Callable[[], datetime] = utcnow) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._seq = itertools.count(1)
            self.ledgers: dict[str, dict[str, Any]] = {
                GENERAL_LEDGER_ID: {
                    "ledger_id": GENERAL_LEDGER_ID,
                    "name": "General Ledger",
                    "created_at": rfc3339(self.clock()),
                    "meta_data": None,
                }
            }
            self.balances: dict[str, Balance] = {}
            self._indicators: dict[tuple[str, str], str] = {}
            self.txns: dict[str, Txn] = {}
            self._by_ref: dict[str, str] = {}
            self._children: dict[str, list[str]] = {}
            self._queued_creates: list[tuple[datetime, str]] = []
            self._queued_actions: dict[str, QueuedAction] = {}
            self.queue_delay_s = 0.0

    def now(self, at: datetime | None = None) -> datetime:
        return at or self.clock()

    # -- ledgers and balances ------------------------------------------------------------

    def create_ledger(self, name: str, meta_data: Mapping[str, Any] | None = None) -> dict:
        with self._lock:
            ledger = {
                "ledger_id": new_id("ldg"),
                "name": name,
                "created_at": rfc3339(self.clock()),
                "meta_data": dict(meta_data) if meta_data else None,
            }
            self.ledgers[ledger["ledger_id"]] = ledger
            return dict(ledger)

    def create_balance(
        self,
        currency: str,
        ledger_id: str = GENERAL_LEDGER_ID,
        *,
        indicator: str | None = None,
        meta_data: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> Balance:
        """POST /balances (api/balance.go CreateBalance, api/model/model.go
        ValidateCreateBalance): ledger_id and currency required; an indicator only on the
        General Ledger, starting with '@'."""
        with self._lock:
            if not ledger_id or not currency:
                raise BlnkError(
                    400, "GEN_VALIDATION_ERROR", "ledger_id and currency are required", "errors"
                )
            if ledger_id not in self.ledgers:
                raise _not_found(f"Ledger with ID '{ledger_id}' not found", "LGR_NOT_FOUND")
            if indicator:
                if ledger_id != GENERAL_LEDGER_ID:
                    raise BlnkError(
                        400,
                        "GEN_VALIDATION_ERROR",
                        "indicator: indicator is only allowed for General Ledger balances "
                        "(ledger_id = general_ledger_id).",
                        "errors",
                    )
                if not indicator.startswith("@") or any(c.isspace() for c in indicator):
                    raise BlnkError(
                        400,
                        "GEN_VALIDATION_ERROR",
                        "indicator: indicator must start with '@' and contain no whitespace "
                        "(e.g. '@cash').",
                        "errors",
                    )
                if (indicator, currency) in self._indicators:
                    raise BlnkError(409, "GEN_CONFLICT", "balance already exists")
            bal = Balance(
                balance_id=new_id("bln"),
                ledger_id=ledger_id,
                currency=currency,
                created_at=self.now(at),
                indicator=indicator,
                meta_data=dict(meta_data) if meta_data else None,
            )
            self.balances[bal.balance_id] = bal
            if indicator:
                self._indicators[(indicator, currency)] = bal.balance_id
            return bal

    def get_balance(self, balance_id: str) -> Balance:
        with self._lock:
            bal = self.balances.get(balance_id)
            if bal is None:
                raise _not_found(f"Balance with ID '{balance_id}' not found", "BAL_NOT_FOUND")
            return bal

    def balance_by_indicator(self, indicator: str, currency: str) -> Balance:
        with self._lock:
            bid = self._indicators.get((indicator, currency))
            if bid is None:
                raise _not_found(f"balance with indicator '{indicator}' not found", "BAL_NOT_FOUND")
            return self.balances[bid]

    def list_balances(self) -> list[Balance]:
        with self._lock:
            return sorted(self.balances.values(), key=lambda b: b.created_at)

    def _resolve(self, name: str, currency: str, at: datetime) -> Balance:
        if name.startswith("@"):
            bid = self._indicators.get((name, currency))
            if bid is None:
                return self.create_balance(currency, indicator=name, at=at)
            return self.balances[bid]
        bal = self.balances.get(name)
        if bal is None:
            # database/balance.go GetBalanceByIDLite: an APIError NOT_FOUND that the
            # transactions handler upgrades to TXN_NOT_FOUND.
            raise _not_found(f"Balance with ID '{name}' not found")
        return bal

    # -- transactions: create ------------------------------------------------------------

    def create_transaction(
        self, body: Mapping[str, Any], *, at: datetime | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST /transactions: (status, JSON) as api/transactions.go QueueTransaction."""
        with self._lock:
            now = self.now(at)
            self.tick(now)
            req = _validate_record(body)
            precision = req["precision"] or 1
            precise = req["precise_amount"]
            if precise is None:
                precise = int(
                    (Decimal(str(req["amount"])) * Decimal(str(precision))).to_integral_value()
                )
            meta = dict(req["meta_data"] or {})
            if req["inflight"]:
                meta["inflight"] = True
            if req["allow_overdraft"]:
                meta["allow_overdraft"] = True
            expiry = _parse_rfc3339(req["inflight_expiry_date"], "inflight_expiry_date")
            if req["skip_queue"]:
                if req["reference"] in self._by_ref:
                    # transaction_execution.go validateTxn; api/errors.go maps
                    # "has already been used" to TXN_DUPLICATE_REFERENCE (409).
                    raise BlnkError(
                        409,
                        "TXN_DUPLICATE_REFERENCE",
                        "transaction validation failed: reference "
                        f"{req['reference']} has already been used",
                    )
                src = self._resolve(req["source"], req["currency"], now)
                dst = self._resolve(req["destination"], req["currency"], now)
                txn = Txn(
                    seq=next(self._seq),
                    transaction_id=new_id("txn"),
                    reference=req["reference"],
                    source=src.balance_id,
                    destination=dst.balance_id,
                    currency=req["currency"],
                    description=req["description"],
                    precise_amount=precise,
                    precision=precision,
                    status="INFLIGHT" if req["inflight"] else "APPLIED",
                    created_at=now,
                    meta_data=meta,
                    allow_overdraft=req["allow_overdraft"],
                    inflight_flag=req["inflight"],
                    expiry=expiry,
                )
                self._apply_new(txn, src, dst)
                self._store(txn)
                return 201, txn.render(echo_expiry=True)
            # The queued path: the answer is the QUEUED record; a worker applies its copy.
            txn = Txn(
                seq=next(self._seq),
                transaction_id=new_id("txn"),
                reference=req["reference"],
                source=req["source"],
                destination=req["destination"],
                currency=req["currency"],
                description=req["description"],
                precise_amount=precise,
                precision=precision,
                status="QUEUED",
                created_at=now,
                meta_data=meta,
                allow_overdraft=req["allow_overdraft"],
                inflight_flag=req["inflight"],
                expiry=expiry,
            )
            meta["QUEUED_PARENT_TRANSACTION"] = txn.transaction_id
            answer = txn.render(echo_expiry=True)
            # transaction_queue.go processTransactionAsync: a duplicate reference or an
            # unknown balance only fails in the background goroutine; the client already
            # holds its 201.
            if req["reference"] in self._by_ref:
                return 201, answer
            try:
                src = self._resolve(req["source"], req["currency"], now)
                dst = self._resolve(req["destination"], req["currency"], now)
            except BlnkError:
                return 201, answer
            txn.source, txn.destination = src.balance_id, dst.balance_id
            self._store(txn)
            due = now + _seconds(self.queue_delay_s)
            self._queued_creates.append((due, txn.transaction_id))
            return 201, answer

    def _apply_new(self, txn: Txn, src: Balance, dst: Balance) -> None:
        """model/model.go UpdateBalances with canProcessTransaction on the source."""
        amount = txn.precise_amount
        if not txn.allow_overdraft:
            available = src.balance - src.inflight_debit
            if available < amount:
                raise BlnkError(
                    400, "TXN_INSUFFICIENT_FUNDS", "insufficient funds in source balance"
                )
        if txn.status == "INFLIGHT":
            src.inflight_debit += amount
            dst.inflight_credit += amount
        else:
            src.debit += amount
            dst.credit += amount
        src.version += 1
        dst.version += 1

    def _store(self, txn: Txn) -> None:
        self.txns[txn.transaction_id] = txn
        self._by_ref[txn.reference] = txn.transaction_id
        if txn.parent_transaction:
            self._children.setdefault(txn.parent_transaction, []).append(txn.transaction_id)

    # -- transactions: read --------------------------------------------------------------

    def get_transaction(self, transaction_id: str) -> Txn:
        with self._lock:
            self.tick()
            txn = self.txns.get(transaction_id)
            if txn is None:
                raise _not_found(f"Transaction with ID '{transaction_id}' not found")
            return txn

    def get_by_reference(self, reference: str) -> Txn:
        """database/transaction_queries.go GetTransactionByRef: 404 TXN_NOT_FOUND."""
        with self._lock:
            self.tick()
            tid = self._by_ref.get(reference)
            if tid is None:
                raise _not_found(f"Transaction with reference '{reference}' not found")
            return self.txns[tid]

    def all_transactions(self) -> list[Txn]:
        with self._lock:
            self.tick()
            return sorted(self.txns.values(), key=lambda t: t.seq)

    def children(self, transaction_id: str) -> list[Txn]:
        with self._lock:
            return [self.txns[c] for c in self._children.get(transaction_id, [])]

    # -- inflight commit / void ----------------------------------------------------------

    def _committed(self, hold: Txn) -> int:
        return sum(
            c.precise_amount for c in self.children(hold.transaction_id) if c.status == "APPLIED"
        )

    def _is_voided(self, hold: Txn) -> bool:
        return any(c.status == "VOID" for c in self.children(hold.transaction_id))

    @staticmethod
    def _is_inflight(txn: Txn) -> bool:
        """transaction_inflight.go IsInflightTransaction."""
        return txn.status == "INFLIGHT" or (
            txn.status == "QUEUED" and txn.meta_data.get("inflight") is True
        )

    def _legs(self, target: str) -> list[Txn]:
        """database/transaction_grouping.go GetInflightTransactionsByParentID: INFLIGHT rows
        that are the target, its children or its queue copies; failing those, QUEUED
        inflight ones whose copy has not been rejected."""
        rows = [
            t
            for t in self.txns.values()
            if (
                t.transaction_id == target
                or t.parent_transaction == target
                or t.meta_data.get("QUEUED_PARENT_TRANSACTION") == target
            )
        ]
        inflight = [t for t in rows if t.status == "INFLIGHT"]
        if inflight:
            return sorted(inflight, key=lambda t: t.created_at, reverse=True)
        queued = [
            t
            for t in rows
            if (t.transaction_id == target or t.parent_transaction == target)
            and t.status == "QUEUED"
            and t.meta_data.get("inflight") is True
            and not any(c.status == "INFLIGHT" for c in self.children(t.transaction_id))
            and not (
                (rid := self._by_ref.get(t.reference + "_q"))
                and self.txns[rid].status == "REJECTED"
            )
        ]
        return sorted(queued, key=lambda t: t.created_at, reverse=True)

    def _validate_hold(self, transaction_id: str) -> Txn:
        """transaction_inflight.go fetchAndValidateInflightTransaction."""
        txn = self.txns.get(transaction_id)
        if txn is None:
            raise _not_found("transaction not found")
        if not self._is_inflight(txn):
            raise BlnkError(400, "TXN_NOT_INFLIGHT", "transaction is not in inflight status")
        if self._is_voided(txn):
            raise BlnkError(409, "TXN_ALREADY_VOIDED", "transaction has already been voided")
        return txn

    def _commit_one(
        self, transaction_id: str, amount: int | None, now: datetime, reference: str = ""
    ) -> Txn:
        """transaction_inflight.go CommitInflightTransactionWithRef: remaining = amount minus
        APPLIED children; zero/absent amount commits the rest; the child is APPLIED."""
        hold = self._validate_hold(transaction_id)
        left = hold.precise_amount - self._committed(hold)
        if left == 0:
            raise BlnkError(
                409, "TXN_ALREADY_COMMITTED", "cannot commit. Transaction already committed"
            )
        take = amount or left
        if take > hold.precise_amount:
            raise BlnkError(
                400,
                "TXN_COMMIT_AMOUNT_EXCEEDED",
                "cannot commit more than the original transaction amount. "
                f"Original: {hold.currency}{self._major(hold, hold.precise_amount)}, "
                f"Requested: {hold.currency}{self._major(hold, take)}",
            )
        if take > left:
            raise BlnkError(
                400,
                "TXN_COMMIT_AMOUNT_EXCEEDED",
                "cannot commit more than the remaining amount. "
                f"Available: {hold.currency}{self._major(hold, left)}, "
                f"Requested: {hold.currency}{self._major(hold, take)}",
            )
        src, dst = self.balances[hold.source], self.balances[hold.destination]
        # model/model.go CommitInflightDebit / CommitInflightCredit check the hold is there.
        if src.inflight_debit < take or dst.inflight_credit < take:
            raise BlnkError(
                400,
                "GEN_BAD_REQUEST",
                "commit inflight debit failed: insufficient inflight debit balance: "
                f"have {src.inflight_debit}, need {take}",
            )
        src.inflight_debit -= take
        src.debit += take
        dst.inflight_credit -= take
        dst.credit += take
        src.version += 1
        dst.version += 1
        child = self._child(hold, "APPLIED", take, now, reference)
        self._store(child)
        return child

    def _void_one(self, transaction_id: str, now: datetime, reference: str = "") -> Txn:
        """transaction_inflight.go VoidInflightTransactionWithRef: the VOID child carries
        what is left; nothing left means already committed."""
        hold = self._validate_hold(transaction_id)
        left = hold.precise_amount - self._committed(hold)
        if left == 0:
            raise BlnkError(
                409, "TXN_ALREADY_COMMITTED", "cannot void. Transaction already committed"
            )
        src, dst = self.balances.get(hold.source), self.balances.get(hold.destination)
        if src is None or dst is None or src.inflight_debit < left or dst.inflight_credit < left:
            raise BlnkError(
                400,
                "GEN_BAD_REQUEST",
                "void inflight debit failed: insufficient inflight debit balance",
            )
        src.inflight_debit -= left
        dst.inflight_credit -= left
        src.version += 1
        dst.version += 1
        child = self._child(hold, "VOID", left, now, reference)
        self._store(child)
        return child

    def _child(self, hold: Txn, status: str, amount: int, now: datetime, reference: str) -> Txn:
        return Txn(
            seq=next(self._seq),
            transaction_id=new_id("txn"),
            reference=reference or new_id("ref"),
            source=hold.source,
            destination=hold.destination,
            currency=hold.currency,
            description=hold.description,
            precise_amount=amount,
            precision=hold.precision,
            status=status,
            created_at=now,
            meta_data=dict(hold.meta_data),
            parent_transaction=hold.transaction_id,
            allow_overdraft=hold.allow_overdraft,
        )

    @staticmethod
    def _major(hold: Txn, precise: int) -> str:
        return f"{float(Decimal(precise) / Decimal(str(hold.precision))):.2f}"

    def resolve_amount(self, transaction_id: str, amount: Any, precise_amount: Any) -> int | None:
        """api/transactions.go UpdateInflightStatus: precise_amount wins; a float amount is
        scaled by the precision found in the database for that id (or 1)."""
        if precise_amount is not None:
            if not _is_int(precise_amount) or precise_amount <= 0:
                raise BlnkError(400, "TXN_INVALID_AMOUNT", "precise_amount must be positive")
            return int(precise_amount)
        if amount in (None, 0):
            return None
        with self._lock:
            txn = self.txns.get(transaction_id)
            precision = txn.precision if txn else 1
        return int((Decimal(str(amount)) * Decimal(str(precision))).to_integral_value())

    def update_inflight(
        self,
        transaction_id: str,
        action: str,
        amount: int | None,
        *,
        skip_queue: bool,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        """PUT /transactions/inflight/{id}: the child (skip_queue) or the queued parent."""
        if action not in ("commit", "void"):
            raise BlnkError(
                400, "TXN_INVALID_STATUS_ACTION", "status not supported. use either commit or void"
            )
        with self._lock:
            now = self.now(at)
            self.tick(now)
            if not skip_queue:
                return self._queue_action(transaction_id, action, amount, now)
            legs = self._legs(transaction_id)
            if not legs:
                raise BlnkError(400, "TXN_NOT_INFLIGHT", f"no transaction to {action}")
            done: list[Txn] = []
            errors: list[BlnkError] = []
            for leg in legs:
                try:
                    if action == "commit":
                        done.append(self._commit_one(leg.transaction_id, amount, now))
                    else:
                        done.append(self._void_one(leg.transaction_id, now))
                except BlnkError as exc:
                    errors.append(exc)
            if errors:
                # transaction_batch_processing.go: "error occurred during processing: [...]",
                # classified again by message (api/errors.go messagePatterns).
                first = errors[0]
                raise BlnkError(
                    first.status,
                    first.code,
                    "error occurred during processing: ["
                    + " ".join(e.message for e in errors)
                    + "]",
                )
            return done[0].render()

    def _queue_action(
        self, transaction_id: str, action: str, amount: int | None, now: datetime
    ) -> dict[str, Any]:
        """transaction_inflight.go QueueInflightAction + queue.go EnqueueInflightAction: the
        checks a commit/void would make, then one pending task per id (409 GEN_CONFLICT for
        a second)."""
        hold = self._prevalidate(transaction_id, action, amount)
        if transaction_id in self._queued_actions:
            raise BlnkError(
                409, "GEN_CONFLICT", "a commit or void is already queued for this transaction"
            )
        self._queued_actions[transaction_id] = QueuedAction(
            target=transaction_id,
            action=action,
            precise_amount=amount,
            action_id=new_id("act"),
            due=now + _seconds(self.queue_delay_s),
        )
        return {**hold.render(), "queued": True}

    def _prevalidate(self, transaction_id: str, action: str, amount: int | None) -> Txn:
        try:
            hold = self._validate_hold(transaction_id)
        except BlnkError as exc:
            if exc.code not in ("TXN_NOT_FOUND", "TXN_NOT_INFLIGHT"):
                raise
            legs = self._legs(transaction_id)
            if not legs:
                raise
            if all(leg.precise_amount - self._committed(leg) == 0 for leg in legs):
                raise BlnkError(
                    409,
                    "TXN_ALREADY_COMMITTED",
                    f"cannot {action}. Transaction already committed",
                ) from None
            return legs[0]
        left = hold.precise_amount - self._committed(hold)
        if left == 0:
            raise BlnkError(
                409, "TXN_ALREADY_COMMITTED", "cannot commit. Transaction already committed"
            )
        if action == "commit" and amount and amount > left:
            raise BlnkError(
                400,
                "TXN_COMMIT_AMOUNT_EXCEEDED",
                "cannot commit more than the remaining amount. "
                f"Available: {hold.currency}{self._major(hold, left)}, "
                f"Requested: {hold.currency}{self._major(hold, amount)}",
            )
        return hold

    def bulk_inflight(
        self, action: str, items: Sequence[tuple[str, int | None]], *, skip_queue: bool
    ) -> dict[str, Any]:
        """POST /transactions/inflight/bulk/commit|void (api/transactions.go, api/model/
        transaction.go BulkInflightResponse; codes from transaction_inflight.go
        classifyInflightError).  Each item stands alone; the answer is 200 whatever fails."""
        if not items:
            field_name = "transactions" if action == "commit" else "transaction_ids"
            raise BlnkError(400, "TXN_BULK_EMPTY", f"{field_name} cannot be empty")
        if len(items) > MAX_BULK_INFLIGHT:
            what = "transactions" if action == "commit" else "transaction_ids"
            raise BlnkError(
                400, "TXN_BULK_LIMIT_EXCEEDED", f"too many {what}; max is {MAX_BULK_INFLIGHT}"
            )
        results: list[dict[str, Any]] = []
        succeeded = failed = 0
        with self._lock:
            now = self.now()
            self.tick(now)
            for tid, amount in items:
                if not skip_queue:
                    try:
                        self._queue_action(tid, action, amount, now)
                        results.append(
                            {"transaction_id": tid, "status": "queued", "code": "QUEUED"}
                        )
                        succeeded += 1
                    except BlnkError as exc:
                        if exc.code == "GEN_CONFLICT":
                            results.append(
                                {
                                    "transaction_id": tid,
                                    "status": "queued",
                                    "code": "ALREADY_QUEUED",
                                    "message": exc.message,
                                }
                            )
                            succeeded += 1
                        else:
                            results.append(_bulk_failure(tid, exc))
                            failed += 1
                    continue
                try:
                    if action == "commit":
                        self._commit_one(tid, amount, now)
                    else:
                        self._void_one(tid, now)
                    results.append({"transaction_id": tid, "status": "succeeded"})
                    succeeded += 1
                except BlnkError as exc:
                    results.append(_bulk_failure(tid, exc))
                    failed += 1
        return {"succeeded": succeeded, "failed": failed, "results": results}

    # -- the worker: queued work and inflight expiry -------------------------------------

    def tick(self, now: datetime | None = None) -> None:
        """Run what the Blnk workers would have run by ``now``."""
        with self._lock:
            now = now or self.clock()
            due = [item for item in self._queued_creates if item[0] <= now]
            self._queued_creates = [item for item in self._queued_creates if item[0] > now]
            for _, tid in sorted(due):
                self._apply_queued_create(self.txns[tid], now)
            for target, act in list(self._queued_actions.items()):
                if act.due <= now:
                    del self._queued_actions[target]
                    self._run_action(act, now)
            for hold in list(self.txns.values()):
                if (
                    hold.expiry is not None
                    and hold.expiry <= now
                    and hold.status == "INFLIGHT"
                    and not self._is_voided(hold)
                    and hold.precise_amount - self._committed(hold) > 0
                ):
                    # cmd/workers.go processInflightExpiry: VoidInflightTransaction.
                    self._void_one(hold.transaction_id, hold.expiry)

    def drain(self) -> None:
        """Apply every queued create and action now, whatever their delay."""
        with self._lock:
            now = self.clock()
            self._queued_creates = [(now, tid) for _, tid in self._queued_creates]
            for act in self._queued_actions.values():
                act.due = now
            self.tick(now)

    def _apply_queued_create(self, queued: Txn, now: datetime) -> None:
        """The worker records the queue copy (createQueueCopy): reference ``<ref>_q``,
        parent the QUEUED record; insufficient funds make it REJECTED (cmd/workers.go)."""
        copy = Txn(
            seq=next(self._seq),
            transaction_id=new_id("txn"),
            reference=f"{queued.reference}_q",
            source=queued.source,
            destination=queued.destination,
            currency=queued.currency,
            description=queued.description,
            precise_amount=queued.precise_amount,
            precision=queued.precision,
            status="INFLIGHT" if queued.inflight_flag else "APPLIED",
            created_at=now,
            meta_data=dict(queued.meta_data),
            parent_transaction=queued.transaction_id,
            allow_overdraft=queued.allow_overdraft,
            inflight_flag=queued.inflight_flag,
            expiry=queued.expiry,
        )
        try:
            self._apply_new(copy, self.balances[copy.source], self.balances[copy.destination])
        except BlnkError:
            copy.status = "REJECTED"
            copy.expiry = None
        self._store(copy)

    def _run_action(self, act: QueuedAction, now: datetime) -> None:
        """transaction_inflight.go RunInflightActionByParent: every inflight leg, with the
        deterministic reference ``<leg>_<action>_<action_id>``; finalised legs skipped."""
        for leg in self._legs(act.target):
            ref = f"{leg.transaction_id}_{act.action}_{act.action_id}"
            try:
                if act.action == "commit":
                    self._commit_one(leg.transaction_id, act.precise_amount, now, ref)
                else:
                    self._void_one(leg.transaction_id, now, ref)
            except BlnkError:
                continue

    # -- filter --------------------------------------------------------------------------

    def filter_transactions(self, body: Mapping[str, Any]) -> Any:
        """POST /transactions/filter (api/filter_helper.go ParseFiltersFromBody,
        internal/filter): AND of the filters; limit 1..100 else 20; sort_by a valid field
        (default created_at), sort_order asc|desc (default desc); include_count wraps the
        page in {"data", "total_count"}."""
        with self._lock:
            self.tick()
            rows = self._filtered(self.txns.values(), body, TXN_FIELDS, _txn_value)
            return _page(body, rows, lambda t: t.render(), TXN_FIELDS)

    def filter_balances(self, body: Mapping[str, Any]) -> Any:
        with self._lock:
            rows = self._filtered(self.balances.values(), body, BALANCE_FIELDS, _balance_value)
            return _page(body, rows, lambda b: b.render(), BALANCE_FIELDS)

    @staticmethod
    def _filtered(
        items: Iterable[Any],
        body: Mapping[str, Any],
        fields: frozenset[str],
        value_of: Callable[[Any, str], Any],
    ) -> list[Any]:
        filters = body.get("filters") or []
        if not isinstance(filters, list):
            raise BlnkError(400, "GEN_VALIDATION_ERROR", "filters must be a list")
        logical = str(body.get("logical_operator") or "and").strip().lower()
        if logical not in ("and", "or"):
            raise BlnkError(
                400, "GEN_VALIDATION_ERROR", "invalid logical_operator: must be 'and' or 'or'"
            )
        checks = [_compile_filter(f, fields) for f in filters]
        combine = all if logical == "and" else any
        return [it for it in items if not checks or combine(c(it, value_of) for c in checks)]


# -- request validation -----------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _validate_record(body: Mapping[str, Any]) -> dict[str, Any]:
    """api/model/model.go ValidateRecordTransaction (the failures answer 400
    TXN_VALIDATION_ERROR with the legacy key "errors", api/transactions.go)."""
    if not isinstance(body, Mapping):
        raise BlnkError(400, "GEN_MALFORMED_REQUEST", "Invalid input")
    types = {
        "amount": _is_number,
        "precision": _is_number,
        "precise_amount": _is_int,
        "inflight": lambda v: isinstance(v, bool),
        "skip_queue": lambda v: isinstance(v, bool),
        "allow_overdraft": lambda v: isinstance(v, bool),
        "meta_data": lambda v: isinstance(v, dict),
    }
    for name, ok in types.items():
        if body.get(name) is not None and not ok(body[name]):
            # gin's ShouldBindJSON fails on a wrong JSON type: api/transactions.go answers
            # GEN_MALFORMED_REQUEST "Invalid input".
            raise BlnkError(400, "GEN_MALFORMED_REQUEST", "Invalid input")
    req = {
        "amount": body.get("amount") or 0,
        "precision": body.get("precision") or 0,
        "precise_amount": body.get("precise_amount"),
        "inflight": bool(body.get("inflight")),
        "skip_queue": bool(body.get("skip_queue")),
        "allow_overdraft": bool(body.get("allow_overdraft")),
        "meta_data": body.get("meta_data"),
        "currency": body.get("currency") or "",
        "reference": body.get("reference") or "",
        "description": body.get("description") or "",
        "source": body.get("source") or "",
        "destination": body.get("destination") or "",
        "inflight_expiry_date": body.get("inflight_expiry_date") or "",
    }
    problems: list[str] = []
    if req["amount"] and req["precise_amount"] is not None:
        problems.append("amount: either amount or precise_amount should be provided, not both.")
    elif not req["amount"] and req["precise_amount"] is None:
        problems.append("amount: either amount or precise_amount is required.")
    if req["amount"] < 0 or (req["precise_amount"] is not None and req["precise_amount"] < 0):
        problems.append("amount: amount cannot be negative.")
    if req["precision"] != int(req["precision"]):
        raise BlnkError(400, "TXN_PRECISION_NOT_INTEGER", "precision must be an integer value")
    if req["precision"] < 0:
        problems.append("precision: precision cannot be negative.")
    for name in ("currency", "reference", "description"):
        if not req[name]:
            problems.append(f"{name}: cannot be blank.")
    if body.get("sources") or body.get("destinations"):
        problems.append("sources/destinations: not supported by this stand-in.")
    if not req["source"]:
        problems.append("source: either source or sources is required, not both.")
    if not req["destination"]:
        problems.append("destination: either destination or destinations is required, not both.")
    elif req["source"] == req["destination"]:
        problems.append("destination: source and destination cannot be the same balance.")
    if req["inflight_expiry_date"]:
        _parse_rfc3339(req["inflight_expiry_date"], "inflight_expiry_date")
    if problems:
        raise BlnkError(400, "TXN_VALIDATION_ERROR", "; ".join(sorted(problems)), "errors")
    return req


def _parse_rfc3339(value: str, name: str) -> datetime | None:
    """Go's time.Parse with "2006-01-02T15:04:05Z07:00" (fractional seconds accepted)."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None or "T" not in value:
        raise BlnkError(
            400,
            "TXN_VALIDATION_ERROR",
            f"{name}: invalid date format, expected 2006-01-02T15:04:05Z07:00.",
            "errors",
        )
    return when.astimezone(UTC)


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def _bulk_failure(tid: str, exc: BlnkError) -> dict[str, Any]:
    """transaction_inflight.go classifyInflightError's stable codes."""
    code = {
        "TXN_NOT_FOUND": "NOT_FOUND",
        "TXN_ALREADY_VOIDED": "ALREADY_VOIDED",
        "TXN_ALREADY_COMMITTED": "ALREADY_COMMITTED",
        "TXN_NOT_INFLIGHT": "NOT_INFLIGHT",
        "TXN_COMMIT_AMOUNT_EXCEEDED": "INVALID_AMOUNT",
        "GEN_RESOURCE_LOCKED": "LOCKED",
    }.get(exc.code, "INTERNAL_ERROR")
    return {"transaction_id": tid, "status": "failed", "code": code, "message": exc.message}


# -- filters ----------------------------------------------------------------------------------

# internal/filter/validation.go GetValidFieldsForTable
TXN_FIELDS = frozenset(
    {
        "transaction_id",
        "parent_transaction",
        "amount",
        "currency",
        "source",
        "destination",
        "balance_id",
        "reference",
        "status",
        "created_at",
        "effective_date",
        "indicator",
        "description",
        "precision",
        "meta_data",
    }
)
BALANCE_FIELDS = frozenset(
    {
        "balance_id",
        "ledger_id",
        "identity_id",
        "indicator",
        "currency",
        "balance",
        "credit_balance",
        "debit_balance",
        "inflight_balance",
        "inflight_credit_balance",
        "inflight_debit_balance",
        "created_at",
        "meta_data",
    }
)
OPERATORS = frozenset(
    {"eq", "ne", "gt", "gte", "lt", "lte", "in", "between", "like", "ilike", "isnull", "isnotnull"}
)
_TIME_FIELDS = frozenset({"created_at", "effective_date"})


def _txn_value(txn: Txn, name: str) -> Any:
    if name.startswith("meta_data."):
        value = txn.meta_data.get(name.split(".", 1)[1])
        # meta_data->>'key': the JSON value as text.
        if value is None:
            return None
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    if name in ("created_at", "effective_date"):
        return txn.created_at
    if name == "amount":
        return float(Decimal(txn.amount_string))
    return getattr(txn, name, None)


def _balance_value(bal: Balance, name: str) -> Any:
    if name.startswith("meta_data."):
        value = (bal.meta_data or {}).get(name.split(".", 1)[1])
        return None if value is None else str(value)
    if name == "inflight_balance":
        return bal.inflight_credit - bal.inflight_debit
    if name == "credit_balance":
        return bal.credit
    if name == "debit_balance":
        return bal.debit
    if name == "inflight_credit_balance":
        return bal.inflight_credit
    if name == "inflight_debit_balance":
        return bal.inflight_debit
    if name == "identity_id":
        return ""
    return getattr(bal, name, None)


def _parse_time(value: Any) -> datetime:
    """internal/filter/datetime.go ParseDateTime (RFC 3339 and the zone-less forms, UTC)."""
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T", 1))
        except ValueError:
            when = None
        if when is not None:
            return when if when.tzinfo else when.replace(tzinfo=UTC)
    raise BlnkError(400, "GEN_VALIDATION_ERROR", f"unable to parse date: {value}")


def _compile_filter(spec: Any, fields: frozenset[str]) -> Callable[[Any, Any], bool]:
    """internal/filter/validation.go Validate, then the comparison sql_builder.go makes."""
    if not isinstance(spec, Mapping):
        raise BlnkError(400, "GEN_VALIDATION_ERROR", "each filter must be an object")
    name, op = spec.get("field"), spec.get("operator")
    if op not in OPERATORS:
        raise BlnkError(
            400,
            "GEN_VALIDATION_ERROR",
            f"invalid operator '{op}' for field '{name}': must be one of eq, ne, gt, gte, lt, "
            "lte, in, between, like, ilike, isnull, isnotnull",
        )
    if not isinstance(name, str):
        raise BlnkError(400, "GEN_VALIDATION_ERROR", "field is required")
    if name.startswith("meta_data.") and "meta_data" in fields:
        key = name.split(".", 1)[1]
        if not key or not key[0].isalpha() or not all(c.isalnum() or c == "_" for c in key):
            raise BlnkError(
                400,
                "GEN_VALIDATION_ERROR",
                f"invalid JSON key '{key}' in field '{name}': must match pattern "
                "^[a-zA-Z][a-zA-Z0-9_]*$",
            )
    elif name not in fields:
        table = "transactions" if "transaction_id" in fields else "balances"
        raise BlnkError(400, "GEN_VALIDATION_ERROR", f"invalid field '{name}' for table '{table}'")
    values = spec.get("values") or []
    if op == "in" and not values:
        raise BlnkError(
            400,
            "GEN_VALIDATION_ERROR",
            f"operator 'in' for field '{name}' requires at least one value in 'values'",
        )
    if op == "between" and len(values) != 2:
        raise BlnkError(
            400,
            "GEN_VALIDATION_ERROR",
            f"operator 'between' for field '{name}' requires exactly two values in 'values', "
            f"got {len(values)}",
        )
    is_time = name in _TIME_FIELDS
    is_txn = "transaction_id" in fields
    raw = spec.get("value")
    wanted: Any = (
        _parse_time(raw)
        if is_time and op not in ("in", "isnull", "isnotnull") and op != "between"
        else raw
    )
    span = [_parse_time(v) for v in values] if is_time and op == "between" else values

    def check(item: Any, value_of: Callable[[Any, str], Any]) -> bool:
        have = value_of(item, name)
        if name == "balance_id" and is_txn:
            # internal/filter/sql_special.go buildBalanceIdCondition: source or destination.
            have_any = [getattr(item, "source", None), getattr(item, "destination", None)]
            if op == "eq":
                return raw in have_any
            if op == "ne":
                return raw not in have_any
            if op == "in":
                return any(h in values for h in have_any)
        if op == "isnull":
            return have is None
        if op == "isnotnull":
            return have is not None
        if have is None:
            return False
        try:
            if op == "eq":
                return have == wanted
            if op == "ne":
                return have != wanted
            if op == "gt":
                return have > wanted
            if op == "gte":
                return have >= wanted
            if op == "lt":
                return have < wanted
            if op == "lte":
                return have <= wanted
            if op == "in":
                return have in values
            if op == "between":
                return span[0] <= have <= span[1]
            if op in ("like", "ilike"):
                pattern = str(wanted).replace("%", "*").replace("_", "?")
                text = str(have)
                if op == "ilike":
                    return fnmatch.fnmatchcase(text.lower(), pattern.lower())
                return fnmatch.fnmatchcase(text, pattern)
        except TypeError:
            return False
        return False

    return check


def _page(
    body: Mapping[str, Any],
    rows: list[Any],
    render: Callable[[Any], dict[str, Any]],
    fields: frozenset[str],
) -> Any:
    limit = body.get("limit") or 0
    limit = limit if _is_int(limit) and 0 < limit <= 100 else 20
    offset = body.get("offset") or 0
    offset = offset if _is_int(offset) and offset >= 0 else 0
    order = str(body.get("sort_order") or "").strip().lower()
    order = order if order in ("asc", "desc") else "desc"
    sort_by = str(body.get("sort_by") or "").strip().lower()
    if sort_by not in fields or sort_by == "meta_data":
        sort_by = "created_at"
    # PostgreSQL leaves the order of equal keys open; insertion order stands in for it.
    rows = sorted(
        rows,
        key=lambda r: (getattr(r, sort_by, None) or 0, getattr(r, "seq", 0)),
        reverse=order == "desc",
    )
    page = [render(r) for r in rows[offset : offset + limit]]
    if body.get("include_count") is True:
        return {"data": page, "total_count": len(rows)}
    return page
