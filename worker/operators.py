"""Console operators: the people who may sign in to the CX console, their sessions and their
sign-in attempts.  This module owns these three tables; no other module touches them.

A session is a row here, not only a cookie: signing out, disabling an operator or the idle
timeout end it on the server, so a copied cookie stops working with it.  The cookie holds a
random token; the row is keyed by the token's SHA-256, so a read of this table does not
hand anyone a live session.

Failed sign-ins are rows too, so the rate limit holds across processes and restarts.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    desc,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from ledger.types import UtcDateTime

metadata = MetaData()

NAME_MAX = 64
EMAIL_MAX = 320
PASSWORD_MIN = 12
PASSWORD_MAX = 1024  # argon2 hashes anything, but a megabyte "password" is an attack

operators = Table(
    "recon_operators",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(NAME_MAX), nullable=False, unique=True),
    # Stored lower-case: the proxy's header and the sign-in form match it case-insensitively.
    Column("email", String(EMAIL_MAX), nullable=False, unique=True),
    Column("role", String(10), nullable=False),
    # None: no password sign-in (the operator signs in through the proxy only).
    Column("password_hash", String(255), nullable=True),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("disabled_at", UtcDateTime(), nullable=True),
)

sessions = Table(
    "recon_console_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column(
        "operator_id", Integer, ForeignKey("recon_operators.id", ondelete="CASCADE"), nullable=False
    ),
    Column("csrf", String(64), nullable=False),
    Column("via", String(10), nullable=False),  # password | proxy
    Column("address", String(64), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("last_seen_at", UtcDateTime(), nullable=False),
    Index("ix_recon_console_sessions_operator", "operator_id"),
)

login_attempts = Table(
    "recon_console_login_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # What was typed, folded to lower case: unknown names count too.
    Column("login", String(EMAIL_MAX), nullable=False),
    Column("address", String(64), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Index("ix_recon_console_login_attempts_login", "login", "at"),
    Index("ix_recon_console_login_attempts_address", "address", "at"),
)


class Role(enum.StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def can_act(self) -> bool:
        return self is not Role.VIEWER


class OperatorError(ValueError):
    """Bad input about an operator: a one-line message fit to show the person who typed it."""


class DuplicateOperator(OperatorError):
    pass


class NoSuchOperator(OperatorError):
    pass


@dataclass(frozen=True)
class Operator:
    id: int
    name: str
    email: str
    role: Role
    disabled: bool
    has_password: bool
    created_at: datetime
    disabled_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "role": self.role.value,
            "disabled": self.disabled,
            "password": self.has_password,
            "created_at": self.created_at.isoformat(),
            "disabled_at": self.disabled_at.isoformat() if self.disabled_at else None,
        }


@dataclass(frozen=True)
class Session:
    token_hash: str
    operator: Operator
    csrf: str
    via: str
    created_at: datetime
    last_seen_at: datetime


# -- validation -----------------------------------------------------------------------------

_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")


def _no_controls(text: str) -> bool:
    return not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text)


def check_name(name: str) -> str:
    if name != name.strip():
        raise OperatorError("the operator name must not start or end with spaces")
    if not name:
        raise OperatorError("the operator name must not be blank")
    if len(name) > NAME_MAX:
        raise OperatorError(f"the operator name is longer than {NAME_MAX} characters")
    if not _no_controls(name):
        raise OperatorError("the operator name must not contain control characters")
    if "@" in name:
        # Sign-in takes a name or an email; an "@" in a name would make that ambiguous.
        raise OperatorError("the operator name must not contain '@'")
    return name


def check_email(email: str) -> str:
    norm = email.strip().lower()
    if not norm or len(norm) > EMAIL_MAX or not _no_controls(norm) or not _EMAIL.fullmatch(norm):
        raise OperatorError(f"not an email address: {email!r}")
    return norm


def check_role(role: str) -> Role:
    try:
        return Role(role.strip().lower())
    except ValueError:
        raise OperatorError(f"the role must be viewer, operator or admin, got {role!r}") from None


def check_password(password: str) -> str:
    if len(password) < PASSWORD_MIN:
        raise OperatorError(f"the password must be at least {PASSWORD_MIN} characters")
    if len(password) > PASSWORD_MAX:
        raise OperatorError(f"the password must be at most {PASSWORD_MAX} characters")
    return password


# -- passwords ------------------------------------------------------------------------------

_hasher = PasswordHasher()
# Verified against when no operator matches, so that an unknown name costs as much time as
# a wrong password and the answer's timing does not tell which names exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(check_password(password))


def _verify(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# -- operators ------------------------------------------------------------------------------


def _operator(row: Any) -> Operator:
    return Operator(
        id=int(row["id"]),
        name=row["name"],
        email=row["email"],
        role=Role(row["role"]),
        disabled=bool(row["disabled"]),
        has_password=row["password_hash"] is not None,
        created_at=row["created_at"],
        disabled_at=row["disabled_at"],
    )


def add_operator(
    conn: Connection,
    name: str,
    email: str,
    role: str,
    *,
    now: datetime,
    password: str | None = None,
) -> Operator:
    name, email, the_role = check_name(name), check_email(email), check_role(role)
    hashed = hash_password(password) if password is not None else None
    clash = conn.execute(
        select(operators.c.name, operators.c.email).where(
            (func.lower(operators.c.name) == name.lower()) | (operators.c.email == email)
        )
    ).first()
    if clash is not None:
        what = f"name {name!r}" if clash[0].lower() == name.lower() else f"email {email!r}"
        raise DuplicateOperator(f"an operator with the {what} already exists")
    scope = conn.begin_nested()
    try:
        new_id = conn.execute(
            operators.insert()
            .values(
                name=name,
                email=email,
                role=the_role.value,
                password_hash=hashed,
                disabled=False,
                created_at=now,
            )
            .returning(operators.c.id)
        ).scalar_one()
    except IntegrityError:
        scope.rollback()
        raise DuplicateOperator(f"an operator named {name!r} or with {email!r} exists") from None
    scope.commit()
    found = get_operator(conn, int(new_id))
    assert found is not None
    return found


def get_operator(conn: Connection, operator_id: int) -> Operator | None:
    row = conn.execute(select(operators).where(operators.c.id == operator_id)).mappings().first()
    return _operator(row) if row else None


def find_operator(conn: Connection, login: str) -> Operator | None:
    """By name (case-insensitive) or, when it holds an "@", by email."""
    return _operator(row) if (row := _find_row(conn, login)) else None


def _find_row(conn: Connection, login: str) -> Any:
    login = login.strip()
    if not login or len(login) > EMAIL_MAX:
        return None
    where = (
        operators.c.email == login.lower()
        if "@" in login
        else func.lower(operators.c.name) == login.lower()
    )
    return conn.execute(select(operators).where(where)).mappings().first()


def list_operators(conn: Connection) -> list[Operator]:
    rows = conn.execute(select(operators).order_by(operators.c.name)).mappings()
    return [_operator(r) for r in rows]


def disable_operator(conn: Connection, name: str, *, now: datetime) -> tuple[Operator, bool]:
    """(the operator, whether it changed).  Ends every session of theirs at once."""
    row = (
        conn.execute(select(operators).where(func.lower(operators.c.name) == name.strip().lower()))
        .mappings()
        .first()
    )
    if row is None:
        raise NoSuchOperator(f"no operator named {name!r}")
    changed = not row["disabled"]
    if changed:
        conn.execute(
            update(operators)
            .where(operators.c.id == row["id"])
            .values(disabled=True, disabled_at=now)
        )
    conn.execute(delete(sessions).where(sessions.c.operator_id == row["id"]))
    op = get_operator(conn, int(row["id"]))
    assert op is not None
    return op, changed


def set_password(conn: Connection, name: str, password: str) -> Operator:
    """A new password; every session of the operator ends (whoever held one must sign in
    again with the new password)."""
    hashed = hash_password(password)
    row = _find_row(conn, name)
    if row is None or "@" in name:
        raise NoSuchOperator(f"no operator named {name!r}")
    conn.execute(update(operators).where(operators.c.id == row["id"]).values(password_hash=hashed))
    conn.execute(delete(sessions).where(sessions.c.operator_id == row["id"]))
    op = get_operator(conn, int(row["id"]))
    assert op is not None
    return op


def authenticate(conn: Connection, login: str, password: str) -> Operator | None:
    """The operator whose password this is, or None (unknown, disabled, wrong, no password)."""
    row = _find_row(conn, login)
    stored = row["password_hash"] if row is not None and not row["disabled"] else None
    if len(password) > PASSWORD_MAX:
        return None
    return _operator(row) if _verify(stored, password) else None


# -- sign-in attempts -----------------------------------------------------------------------


def _login_key(login: str) -> str:
    return login.strip().lower()[:EMAIL_MAX]


def recent_failures(
    conn: Connection, login: str, address: str, *, since: datetime
) -> tuple[int, int]:
    """(failures for this login, failures from this address) since ``since``."""
    failed = (login_attempts.c.ok.is_(False), login_attempts.c.at >= since)
    by_login = conn.execute(
        select(func.count())
        .select_from(login_attempts)
        .where(login_attempts.c.login == _login_key(login), *failed)
    ).scalar_one()
    by_address = conn.execute(
        select(func.count())
        .select_from(login_attempts)
        .where(login_attempts.c.address == address[:64], *failed)
    ).scalar_one()
    return int(by_login), int(by_address)


def begin_attempt(
    conn: Connection,
    login: str,
    address: str,
    *,
    now: datetime,
    window: timedelta,
    max_per_login: int,
    max_per_address: int,
) -> datetime | None:
    """Let a sign-in attempt go ahead, or say until when it may not (the rate limit).

    An attempt that goes ahead is written down as a failure *before* the password is
    checked, so that many guesses sent at once all count; :func:`forgive` removes it when
    the password was right.  Returns None when the attempt may go ahead.
    """
    since = now - window
    # Old rows only ever answer "how many since", so they go as new ones arrive.
    conn.execute(delete(login_attempts).where(login_attempts.c.at < since))
    by_login, by_address = recent_failures(conn, login, address, since=since)
    if by_login >= max_per_login or by_address >= max_per_address:
        key = _login_key(login)
        rows = conn.execute(
            select(login_attempts.c.login, login_attempts.c.address, login_attempts.c.at)
            .where(login_attempts.c.ok.is_(False), login_attempts.c.at >= since)
            .where((login_attempts.c.login == key) | (login_attempts.c.address == address[:64]))
            .order_by(desc(login_attempts.c.at))
        ).all()
        # Allowed again once enough of the failures behind the block have aged out.
        mine = [at for lg, _, at in rows if lg == key]
        theirs = [at for _, ad, at in rows if ad == address[:64]]
        until = now
        if len(mine) >= max_per_login:
            until = max(until, mine[max_per_login - 1] + window)
        if len(theirs) >= max_per_address:
            until = max(until, theirs[max_per_address - 1] + window)
        return until
    conn.execute(
        login_attempts.insert().values(
            login=_login_key(login), address=address[:64], ok=False, at=now
        )
    )
    return None


def forgive(conn: Connection, login: str, address: str, *, now: datetime) -> None:
    """The password was right: the login's failures are forgiven, not the address's (one
    account an attacker holds must not reset the count for guessing everyone else's),
    except the attempt that just succeeded."""
    key = _login_key(login)
    conn.execute(
        delete(login_attempts).where(login_attempts.c.login == key, login_attempts.c.ok.is_(False))
    )
    conn.execute(login_attempts.insert().values(login=key, address=address[:64], ok=True, at=now))


# -- sessions -------------------------------------------------------------------------------


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_session(
    conn: Connection, operator: Operator, *, via: str, address: str | None, now: datetime
) -> str:
    """A new session; returns the token for the cookie (only its hash is stored)."""
    token = secrets.token_urlsafe(32)
    conn.execute(
        sessions.insert().values(
            token_hash=_token_hash(token),
            operator_id=operator.id,
            # Hex: nothing in it can look like a card number to the page filter.
            csrf=secrets.token_hex(32),
            via=via,
            address=(address or "")[:64] or None,
            created_at=now,
            last_seen_at=now,
        )
    )
    return token


def prune_sessions(conn: Connection, *, now: datetime, idle: timedelta, lifetime: timedelta) -> int:
    """Delete sessions that can no longer be used (they would be refused anyway)."""
    return conn.execute(
        delete(sessions).where(
            (sessions.c.last_seen_at <= now - idle) | (sessions.c.created_at <= now - lifetime)
        )
    ).rowcount


def load_session(
    conn: Connection,
    token: str,
    *,
    now: datetime,
    idle: timedelta,
    lifetime: timedelta,
    touch_after: timedelta = timedelta(seconds=30),
) -> Session | None:
    """The live session for ``token``, its last-seen time moved on; None when it is unknown,
    idle too long, too old, or its operator is disabled (the row is then deleted)."""
    key = _token_hash(token)
    row = (
        conn.execute(
            select(
                operators,
                sessions.c.csrf,
                sessions.c.via,
                sessions.c.created_at.label("session_created_at"),
                sessions.c.last_seen_at,
            )
            .join(sessions, operators.c.id == sessions.c.operator_id)
            .where(sessions.c.token_hash == key)
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    started = row["session_created_at"]
    if row["disabled"] or now - row["last_seen_at"] >= idle or now - started >= lifetime:
        conn.execute(delete(sessions).where(sessions.c.token_hash == key))
        return None
    seen = row["last_seen_at"]
    # Writing on every page view would make every read a write; a coarse stamp is enough
    # for an idle timeout measured in minutes.
    if now - seen >= touch_after:
        conn.execute(update(sessions).where(sessions.c.token_hash == key).values(last_seen_at=now))
        seen = now
    return Session(key, _operator(row), row["csrf"], row["via"], started, seen)


def end_session(conn: Connection, token: str) -> None:
    conn.execute(delete(sessions).where(sessions.c.token_hash == _token_hash(token)))


def end_sessions_of(conn: Connection, operator_id: int) -> int:
    return conn.execute(delete(sessions).where(sessions.c.operator_id == operator_id)).rowcount
