"""The customer index: every statement on ``recon_customers``, ``recon_customer_keys`` and
``recon_customer_payments``.

CX starts from a person ("praise@example.com says the wallet never updated"), not from a
PaymentIntent id.  The service already sees who a payment belongs to, so it writes that down
as it goes (:func:`record`), and ``recon customer`` reads it back without calling Stripe.

What identifies a customer, from what the service sees:
- ledger metadata the application writes on the entry (documented keys
  :data:`META_EMAIL`, :data:`META_NAME`, :data:`META_STRIPE_CUSTOMER`) and the entry's
  destination balance;
- the PaymentIntent: ``customer``, ``receipt_email``, the charge's billing email and name, and
  the metadata balance (``ledger_destination``) for a payment with no ledger entry;
- tickets carry the same facts (they are opened from the same payment and entry).

A sighting joins the customer its Stripe customer id, else its email, else its balance
already belongs to; otherwise it starts a new one.  Identities are never merged behind
anyone's back: two customers sharing a name stay two candidates.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from ledger.pgsets import recordset, rows_json
from reconcile.model import Entry, Payment
from reconcile.tables import customer_keys, customer_payments, customers

__all__ = [
    "META_EMAIL",
    "META_NAME",
    "META_STRIPE_CUSTOMER",
    "Sighting",
    "customer_rows",
    "find",
    "keys_of",
    "normalize_email",
    "payment_rows",
    "payments_of",
    "record",
    "sighting",
]

# Ledger metadata keys an application may set on a transaction (README: "Customer lookup").
META_EMAIL = "customer_email"
META_NAME = "customer_name"
META_STRIPE_CUSTOMER = "stripe_customer"

EMAIL = "email"
STRIPE_CUSTOMER = "stripe_customer"
BALANCE = "balance"
NAME = "name"

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_ID = re.compile(r"[A-Za-z0-9_:.@\-]{1,255}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def normalize_email(value: Any) -> str | None:
    """A plausible email, trimmed and lower-cased, or None (absent or not an email)."""
    if not isinstance(value, str):
        return None
    # NFKC: "José" typed composed or decomposed, or in full-width letters, is one address;
    # look-alikes from other scripts (a Cyrillic o) stay different addresses.
    email = unicodedata.normalize("NFKC", value).strip().lower()
    if len(email) > 320 or not _EMAIL.fullmatch(email):
        return None
    return email


def _identifier(value: Any, limit: int = 255) -> str | None:
    if not isinstance(value, str):
        return None
    v = value.strip()
    return v if 0 < len(v) <= limit and _ID.fullmatch(v) else None


def _balance(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    v = value.strip()
    return v if 0 < len(v) <= 200 and not _CONTROL.search(v) else None


def _name(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    v = " ".join(_CONTROL.sub(" ", value).split())
    return v[:200] or None


def name_tokens(name: str) -> list[str]:
    """What a name is found by: each word and the whole name, lower-cased (NFKC, as emails:
    "José" composed or decomposed is one name)."""
    low = " ".join(unicodedata.normalize("NFKC", name).lower().split())
    words = [w for w in low.split() if len(w) <= 100]
    return list(dict.fromkeys([low, *words]))


@dataclass(frozen=True)
class Sighting:
    """What one look at a payment says about whose it is, and its last known Stripe state."""

    payment_id: str
    stripe_customer: str | None = None
    email: str | None = None
    name: str | None = None
    balance: str | None = None
    amount: int | None = None
    currency: str | None = None
    created: datetime | None = None
    payment: Payment | None = None  # what Stripe said, when Stripe was read
    stripe_read: bool = False

    def identities(self) -> list[tuple[str, str]]:
        out = []
        if self.stripe_customer:
            out.append((STRIPE_CUSTOMER, self.stripe_customer))
        if self.email:
            out.append((EMAIL, self.email))
        if self.balance:
            out.append((BALANCE, self.balance))
        return out

    @property
    def primary(self) -> str | None:
        if self.stripe_customer:
            return self.stripe_customer
        if self.email:
            return f"email:{self.email}"
        if self.balance:
            return f"balance:{self.balance}"
        return None


def sighting(
    payment_id: str,
    payment: Payment | None,
    entry: Entry | None,
    *,
    stripe_read: bool,
    destination_key: str = "ledger_destination",
) -> Sighting | None:
    """Who ``payment_id`` belongs to, from the ledger entry and the PaymentIntent.

    The application's own metadata wins over Stripe's (it knows its customer); Stripe fills
    what the metadata leaves out.  None when nothing identifies anyone.
    """
    meta: Mapping[str, str] = entry.metadata if entry is not None else {}
    pmeta: Mapping[str, str] = payment.metadata if payment is not None else {}
    s = Sighting(
        payment_id=payment_id,
        stripe_customer=_identifier(meta.get(META_STRIPE_CUSTOMER))
        or _identifier(payment.customer if payment else None),
        email=normalize_email(meta.get(META_EMAIL))
        or normalize_email(payment.customer_email if payment else None),
        name=_name(meta.get(META_NAME)) or _name(payment.customer_name if payment else None),
        balance=_balance(entry.destination if entry else None)
        or _balance(pmeta.get(destination_key)),
        amount=entry.amount if entry is not None else (payment.amount if payment else None),
        currency=entry.currency if entry is not None else (payment.currency if payment else None),
        created=payment.created if payment is not None else (entry.created_at if entry else None),
        payment=payment,
        stripe_read=stripe_read,
    )
    return s if s.primary is not None else None


# -- writing ------------------------------------------------------------------------------


def _insert(conn: Connection, table: Any) -> Any:
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def record(conn: Connection, sightings: Sequence[Sighting], now: datetime) -> None:
    """Write what these sightings say, on the caller's transaction: a few statements per
    batch, and none beyond the payments upsert when every identity is already known."""
    wanted = [s for s in sightings if s.primary is not None]
    if not wanted:
        return
    if conn.dialect.name == "postgresql":
        _record_pg(conn, wanted, now)
    else:
        _record_rows(conn, wanted, now)


def _record_rows(conn: Connection, wanted: Sequence[Sighting], now: datetime) -> None:
    """The portable path (SQLite; and the reference the PostgreSQL one is tested against)."""
    keys = {k for s in wanted for k in s.identities()}
    owner: dict[tuple[str, str], int] = {}
    for start in range(0, len(keys), 300):
        chunk = list(keys)[start : start + 300]
        rows = conn.execute(
            select(customer_keys.c.kind, customer_keys.c.value, customer_keys.c.customer_id).where(
                tuple_(customer_keys.c.kind, customer_keys.c.value).in_(chunk)
            )
        )
        for kind, value, cid in rows:
            owner[(kind, value)] = int(cid)
    new_keys: list[dict[str, Any]] = []
    payments: dict[str, dict[str, Any]] = {}
    touched: dict[int, Sighting] = {}
    for s in wanted:
        cid = next((owner[k] for k in s.identities() if k in owner), None)
        if cid is None:
            cid = _create(conn, s, now)
        for k in s.identities():
            if k not in owner:
                owner[k] = cid
                new_keys.append({"kind": k[0], "value": k[1], "customer_id": cid})
        if s.name:
            new_keys.extend(
                {"kind": NAME, "value": tok, "customer_id": cid} for tok in name_tokens(s.name)
            )
        touched[cid] = s
        payments[s.payment_id] = _payment_values(s, cid, now)
    if new_keys:
        # Another worker may have claimed an identity meanwhile: its claim stands.
        conn.execute(_insert(conn, customer_keys).on_conflict_do_nothing(), new_keys)
    _fill_display(conn, touched, now)
    _upsert_payments(conn, list(payments.values()))


def _create(conn: Connection, s: Sighting, now: datetime) -> int:
    conn.execute(
        _insert(conn, customers)
        .values(
            key=s.primary,
            name=s.name,
            email=s.email,
            stripe_customer=s.stripe_customer,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["key"])
    )
    return int(
        conn.execute(select(customers.c.id).where(customers.c.key == s.primary)).scalar_one()
    )


def _fill_display(conn: Connection, touched: Mapping[int, Sighting], now: datetime) -> None:
    """Fill in a customer's display name, email and Stripe id where still unknown."""
    if not touched:
        return
    rows = conn.execute(
        select(
            customers.c.id, customers.c.name, customers.c.email, customers.c.stripe_customer
        ).where(customers.c.id.in_(list(touched)))
    ).all()
    for cid, name, email, stripe_customer in rows:
        s = touched[int(cid)]
        values: dict[str, Any] = {}
        if name is None and s.name:
            values["name"] = s.name
        if email is None and s.email:
            values["email"] = s.email
        if stripe_customer is None and s.stripe_customer:
            values["stripe_customer"] = s.stripe_customer
        if values:
            conn.execute(
                update(customers).where(customers.c.id == cid).values(**values, updated_at=now)
            )


_STRIPE_FIELDS = (
    "status",
    "amount_received",
    "amount_refunded",
    "disputed",
    "last_payment_error",
    "livemode",
    "stripe_seen_at",
)


def _payment_values(s: Sighting, cid: int, now: datetime) -> dict[str, Any]:
    p = s.payment if s.stripe_read else None
    return {
        "payment_id": s.payment_id,
        "customer_id": cid,
        "balance": s.balance,
        "amount": s.amount,
        "currency": s.currency,
        "created": s.created,
        "status": p.status.value if p and p.status else None,
        "amount_received": p.amount_received if p else None,
        "amount_refunded": p.amount_refunded if p else None,
        "disputed": p.disputed if p else None,
        "last_payment_error": (p.last_payment_error or "")[:200] or None if p else None,
        "livemode": p.livemode if p else None,
        "stripe_seen_at": now if s.stripe_read else None,
        "updated_at": now,
    }


def _upsert_payments(conn: Connection, rows: list[dict[str, Any]]) -> None:
    # Two statements at most: rows that read Stripe overwrite its fields, the others keep
    # the last known Stripe state (a sighting from the ledger alone says nothing of it).
    for read in (True, False):
        part = [r for r in rows if (r["stripe_seen_at"] is not None) is read]
        if not part:
            continue
        stmt = _insert(conn, customer_payments)
        fields = ["customer_id", "balance", "amount", "currency", "created", "updated_at"]
        if read:
            fields += list(_STRIPE_FIELDS)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["payment_id"],
                set_={f: getattr(stmt.excluded, f) for f in fields},
            ),
            part,
        )


# -- writing, PostgreSQL: one statement per step, whatever the batch size ---------------------
# The sweep writes the index for every payment it sees, so this is on its hot path: arrays
# bound once and unnested by the server, instead of a statement (or a compiled row) per
# customer, key or payment.  Same decisions as the portable path above, in the same order.

_OWNERS = (("kind", "text"), ("value", "text"))
_PG_OWNERS = (
    "SELECT k.kind, k.value, k.customer_id FROM recon_customer_keys k"
    f" JOIN {recordset(_OWNERS)} ON k.kind = u.kind AND k.value = u.value"
    " WHERE k.kind <> 'name'"
)
_NEW = (("key", "text"), ("name", "text"), ("email", "text"), ("sc", "text"))
_PG_CREATE = (
    "INSERT INTO recon_customers (key, name, email, stripe_customer, created_at, updated_at)"
    f" SELECT u.key, u.name, u.email, u.sc, %(now)s, %(now)s FROM {recordset(_NEW)}"
    " ON CONFLICT (key) DO NOTHING"
)
_PG_IDS = "SELECT key, id FROM recon_customers WHERE key = ANY(%(keys)s::text[])"
# Another worker may have claimed an identity meanwhile: its claim stands.
_CLAIMS = (("kind", "text"), ("value", "text"), ("customer_id", "int"))
_PG_KEYS = (
    "INSERT INTO recon_customer_keys (kind, value, customer_id)"
    f" SELECT u.kind, u.value, u.customer_id FROM {recordset(_CLAIMS)} ON CONFLICT DO NOTHING"
)
# Only customers with a display field still unknown that this batch knows are written.
_FILL = (("id", "int"), ("name", "text"), ("email", "text"), ("sc", "text"))
_PG_FILL = (
    "UPDATE recon_customers c SET name = coalesce(c.name, u.name),"
    " email = coalesce(c.email, u.email),"
    " stripe_customer = coalesce(c.stripe_customer, u.sc), updated_at = %(now)s"
    f" FROM {recordset(_FILL)} WHERE c.id = u.id AND ((c.name IS NULL AND u.name IS NOT NULL)"
    " OR (c.email IS NULL AND u.email IS NOT NULL)"
    " OR (c.stripe_customer IS NULL AND u.sc IS NOT NULL))"
)
_PG_PAYMENT_COLS = (
    ("payment_id", "text"),
    ("customer_id", "int"),
    ("balance", "text"),
    ("amount", "bigint"),
    ("currency", "text"),
    ("created", "timestamptz"),
    ("status", "text"),
    ("amount_received", "bigint"),
    ("amount_refunded", "bigint"),
    ("disputed", "boolean"),
    ("last_payment_error", "text"),
    ("livemode", "boolean"),
)


def _pg_payments_sql(read: bool) -> str:
    # A sighting that read Stripe overwrites its fields; one from the ledger alone keeps the
    # last known Stripe state (it says nothing of it).
    cols = _PG_PAYMENT_COLS if read else _PG_PAYMENT_COLS[:6]
    names = ", ".join(c for c, _ in cols)
    picked = ", ".join(f"u.{c}" for c, _ in cols)
    fields = ["customer_id", "balance", "amount", "currency", "created", "updated_at"]
    extra = ", stripe_seen_at" if read else ""
    if read:
        fields += list(_STRIPE_FIELDS)
    sets = ", ".join(f"{f} = excluded.{f}" for f in fields)
    return (
        f"INSERT INTO recon_customer_payments ({names}{extra}, updated_at)"
        f" SELECT {picked}{', %(now)s' if read else ''}, %(now)s::timestamptz"
        f" FROM {recordset(cols)} ON CONFLICT (payment_id) DO UPDATE SET {sets}"
    )


_PG_PAYMENTS = {True: _pg_payments_sql(True), False: _pg_payments_sql(False)}


def _record_pg(conn: Connection, wanted: Sequence[Sighting], now: datetime) -> None:
    idents = [s.identities() for s in wanted]
    keys = list({k for ids in idents for k in ids})
    owner: dict[tuple[str, str], int] = {}
    if keys:
        rows = conn.exec_driver_sql(
            _PG_OWNERS,
            {
                "rows": rows_json(
                    _OWNERS, {"kind": [k for k, _ in keys], "value": [v for _, v in keys]}
                )
            },
        )
        for kind, value, cid in rows:
            owner[(kind, value)] = int(cid)
    # Customers new to the index get a placeholder (a negative number) until the batch's
    # creations are written together; what they claim is kept in the same order as before.
    fresh: dict[str, tuple[int, Sighting]] = {}
    claims: list[tuple[str, str, int]] = []
    chosen: list[int] = []
    for s, ids in zip(wanted, idents, strict=True):
        cid = next((owner[k] for k in ids if k in owner), None)
        if cid is None:
            key = s.primary or ""
            if key not in fresh:
                fresh[key] = (-1 - len(fresh), s)
            cid = fresh[key][0]
        for k in ids:
            if k not in owner:
                owner[k] = cid
                claims.append((k[0], k[1], cid))
        if s.name:
            claims.extend((NAME, tok, cid) for tok in name_tokens(s.name))
        chosen.append(cid)
    real: dict[int, int] = {}
    if fresh:
        made = [s for _, s in fresh.values()]
        conn.exec_driver_sql(
            _PG_CREATE,
            {
                "now": now,
                "rows": rows_json(
                    _NEW,
                    {
                        "key": list(fresh),
                        "name": [s.name for s in made],
                        "email": [s.email for s in made],
                        "sc": [s.stripe_customer for s in made],
                    },
                ),
            },
        )
        ids_by_key = {
            str(k): int(i) for k, i in conn.exec_driver_sql(_PG_IDS, {"keys": list(fresh)})
        }
        real = {tmp: ids_by_key[key] for key, (tmp, _) in fresh.items()}

    def resolve(cid: int) -> int:
        return real[cid] if cid < 0 else cid

    if claims:
        unique = list(dict.fromkeys((k, v, resolve(c)) for k, v, c in claims))
        conn.exec_driver_sql(
            _PG_KEYS,
            {
                "rows": rows_json(
                    _CLAIMS,
                    {
                        "kind": [k for k, _, _ in unique],
                        "value": [v for _, v, _ in unique],
                        "customer_id": [c for _, _, c in unique],
                    },
                )
            },
        )
    touched: dict[int, Sighting] = {}
    payments: dict[str, tuple[Sighting, int]] = {}
    for s, cid in zip(wanted, chosen, strict=True):
        cid = resolve(cid)
        touched[cid] = s
        payments[s.payment_id] = (s, cid)
    fill = [(cid, s) for cid, s in touched.items() if s.name or s.email or s.stripe_customer]
    if fill:
        conn.exec_driver_sql(
            _PG_FILL,
            {
                "now": now,
                "rows": rows_json(
                    _FILL,
                    {
                        "id": [cid for cid, _ in fill],
                        "name": [s.name for _, s in fill],
                        "email": [s.email for _, s in fill],
                        "sc": [s.stripe_customer for _, s in fill],
                    },
                ),
            },
        )
    for read in (True, False):
        part = [(s, cid) for s, cid in payments.values() if s.stripe_read is read]
        if not part:
            continue
        cols: dict[str, list[Any]] = {
            "payment_id": [s.payment_id for s, _ in part],
            "customer_id": [cid for _, cid in part],
            "balance": [s.balance for s, _ in part],
            "amount": [s.amount for s, _ in part],
            "currency": [s.currency for s, _ in part],
            "created": [s.created for s, _ in part],
        }
        if read:
            ps = [s.payment for s, _ in part]
            cols["status"] = [p.status.value if p and p.status else None for p in ps]
            cols["amount_received"] = [p.amount_received if p else None for p in ps]
            cols["amount_refunded"] = [p.amount_refunded if p else None for p in ps]
            cols["disputed"] = [p.disputed if p else None for p in ps]
            cols["last_payment_error"] = [
                (p.last_payment_error or "")[:200] or None if p else None for p in ps
            ]
            cols["livemode"] = [p.livemode if p else None for p in ps]
        conn.exec_driver_sql(
            _PG_PAYMENTS[read],
            {
                "now": now,
                "rows": rows_json(_PG_PAYMENT_COLS if read else _PG_PAYMENT_COLS[:6], cols),
            },
        )


# -- reading ------------------------------------------------------------------------------


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def find(conn: Connection, query: str, *, limit: int = 50) -> tuple[str, list[int]]:
    """(what the query was taken for, the ids of the customers it matches).

    ``pi_...`` a payment, ``cus_...`` a Stripe customer, anything with ``@`` an email
    (exact, any case), else a ledger balance (exact) or a name (case-insensitive: the start
    of any word of the name, or of the whole name; then anywhere in it).
    """
    q = query.strip()
    k = customer_keys.c

    def by_key(kind: str, value: str) -> list[int]:
        stmt = select(k.customer_id).where(k.kind == kind, k.value == value).limit(limit)
        return [int(r) for r in conn.execute(stmt).scalars()]

    if q.startswith("pi_"):
        row = conn.execute(
            select(customer_payments.c.customer_id).where(customer_payments.c.payment_id == q)
        ).scalar()
        return "payment", [int(row)] if row is not None else []
    if "@" in q:
        email = normalize_email(q)
        return "email", by_key(EMAIL, email) if email else []
    if q.startswith("cus_"):
        return "stripe customer", by_key(STRIPE_CUSTOMER, q)
    found = by_key(BALANCE, q)
    if found:
        return "balance", found
    low = " ".join(unicodedata.normalize("NFKC", q).lower().split())
    if not low:
        return "name", []
    for pattern in (_like_prefix(low), "%" + _like_prefix(low)):
        stmt = (
            select(k.customer_id)
            .where(k.kind == NAME, k.value.like(pattern, escape="\\"))
            .distinct()
            .limit(limit)
        )
        ids = sorted(int(r) for r in conn.execute(stmt).scalars())
        if ids:
            return "name", ids
    return "name", []


def customer_rows(conn: Connection, ids: Sequence[int]) -> list[dict[str, Any]]:
    if not ids:
        return []
    rows = conn.execute(
        select(customers).where(customers.c.id.in_(list(ids))).order_by(customers.c.id)
    )
    return [dict(r) for r in rows.mappings()]


def keys_of(conn: Connection, customer_id: int) -> dict[str, list[str]]:
    """Every identifier of one customer, by kind (email, stripe_customer, balance, name)."""
    out: dict[str, list[str]] = {}
    rows = conn.execute(
        select(customer_keys.c.kind, customer_keys.c.value)
        .where(customer_keys.c.customer_id == customer_id)
        .order_by(customer_keys.c.kind, customer_keys.c.value)
    )
    for kind, value in rows:
        out.setdefault(str(kind), []).append(str(value))
    return out


def payments_of(conn: Connection, customer_id: int, *, limit: int = 100) -> list[dict[str, Any]]:
    """The customer's payments the service has seen, newest first."""
    cp = customer_payments.c
    rows = conn.execute(
        select(customer_payments)
        .where(cp.customer_id == customer_id)
        .order_by(cp.created.desc(), cp.payment_id)
        .limit(limit)
    )
    return [dict(r) for r in rows.mappings()]


def payment_rows(conn: Connection, payment_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not payment_ids:
        return {}
    rows = conn.execute(
        select(customer_payments).where(customer_payments.c.payment_id.in_(list(payment_ids)))
    )
    return {str(r["payment_id"]): dict(r) for r in rows.mappings()}
