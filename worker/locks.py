"""Job locks: at most one run of a periodic job at a time, across every worker and host.

A lock is a (name, holder token, expiry).  It expires on its own when its holder dies, so
a killed worker never blocks a job for good; while the job runs, a heartbeat thread keeps
pushing the expiry forward, so a long run keeps its lock without needing a TTL longer
than the longest run.  Release only deletes the lock when the token is still ours: a
holder that stalled past its expiry must not free a lock that another run now holds.

Backends: Redis (``RECON_REDIS_URL`` set; ``SET NX PX`` with token-checked Lua for
refresh and release) or the ``recon_locks`` table (insert; take over an expired row with a
conditional UPDATE; delete only our own row).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from reconcile.tables import locks as locks_table
from worker.logs import get_logger

log = get_logger(__name__)

DEFAULT_TTL = timedelta(seconds=60)


class LockBackend(Protocol):
    def acquire(self, name: str, token: str, ttl: timedelta) -> bool: ...

    def refresh(self, name: str, token: str, ttl: timedelta) -> bool: ...

    def release(self, name: str, token: str) -> bool: ...

    def holder(self, name: str) -> str | None: ...


_REFRESH = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class RedisLocks:
    def __init__(self, client: Any, *, prefix: str = "recon:lock:") -> None:
        self.client = client
        self.prefix = prefix
        self._refresh = client.register_script(_REFRESH)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "recon:lock:") -> RedisLocks:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5)
        return cls(client, prefix=prefix)

    def acquire(self, name: str, token: str, ttl: timedelta) -> bool:
        ms = max(1, int(ttl.total_seconds() * 1000))
        return bool(self.client.set(self.prefix + name, token, nx=True, px=ms))

    def refresh(self, name: str, token: str, ttl: timedelta) -> bool:
        ms = max(1, int(ttl.total_seconds() * 1000))
        return bool(self._refresh(keys=[self.prefix + name], args=[token, ms]))

    def release(self, name: str, token: str) -> bool:
        return bool(self._release(keys=[self.prefix + name], args=[token]))

    def holder(self, name: str) -> str | None:
        value = self.client.get(self.prefix + name)
        return value.decode() if isinstance(value, bytes) else value


class DbLocks:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def acquire(self, name: str, token: str, ttl: timedelta) -> bool:
        now = datetime.now(UTC)
        values = {"name": name, "holder": token, "expires_at": now + ttl}
        dialect = self.engine.dialect.name
        with self.engine.begin() as conn:
            if dialect in ("postgresql", "sqlite"):
                ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(locks_table)
                stmt = ins.on_conflict_do_nothing(index_elements=[locks_table.c.name])
                got = conn.execute(stmt.returning(locks_table.c.name), values).first()
                if got is not None:
                    return True
            # The row exists: take it over only if its holder let it expire.  One UPDATE
            # with the expiry in its WHERE clause, so two contenders cannot both win.
            result = conn.execute(
                update(locks_table)
                .where(locks_table.c.name == name, locks_table.c.expires_at < now)
                .values(holder=token, expires_at=now + ttl)
            )
            return bool(result.rowcount)

    def refresh(self, name: str, token: str, ttl: timedelta) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(locks_table)
                .where(locks_table.c.name == name, locks_table.c.holder == token)
                .values(expires_at=datetime.now(UTC) + ttl)
            )
            return bool(result.rowcount)

    def release(self, name: str, token: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(locks_table).where(locks_table.c.name == name, locks_table.c.holder == token)
            )
            return bool(result.rowcount)

    def holder(self, name: str) -> str | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(locks_table.c.holder).where(
                    locks_table.c.name == name, locks_table.c.expires_at >= datetime.now(UTC)
                )
            ).scalar()
            return str(value) if value is not None else None


def default_backend(*, redis_url: str | None, engine: Engine | None) -> LockBackend:
    if redis_url:
        return RedisLocks.from_url(redis_url)
    if engine is None:
        raise ValueError("job locks need RECON_REDIS_URL or a database engine")
    return DbLocks(engine)


def new_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class _Heartbeat(threading.Thread):
    def __init__(self, backend: LockBackend, name: str, token: str, ttl: timedelta) -> None:
        super().__init__(name=f"lock-heartbeat-{name}", daemon=True)
        self.backend, self.lock_name, self.token, self.ttl = backend, name, token, ttl
        self.stop = threading.Event()
        self.lost = False

    def run(self) -> None:
        interval = max(0.05, self.ttl.total_seconds() / 3)
        while not self.stop.wait(interval):
            try:
                if not self.backend.refresh(self.lock_name, self.token, self.ttl):
                    # Expired while we stalled and someone else may hold it now: say so,
                    # the run in progress cannot be undone from here.
                    self.lost = True
                    log.warning("job lock lost", lock=self.lock_name)
                    return
            except Exception as exc:
                log.warning(
                    "job lock refresh failed", lock=self.lock_name, error=type(exc).__name__
                )


def _take_over(
    backend: LockBackend, name: str, token: str, ttl: timedelta, dead: Callable[[str], bool]
) -> bool:
    """Acquire ``name`` from a holder that ``dead`` says is gone (its lock has not expired
    yet: a SIGKILLed worker's heartbeat stopped, not its lock's TTL).  The release is
    token-checked, so a lock that changed hands meanwhile is never taken."""
    current = backend.holder(name)
    if current is None:
        return backend.acquire(name, token, ttl)
    if not dead(current):
        return False
    backend.release(name, current)
    if backend.acquire(name, token, ttl):
        log.warning("job lock taken over from a dead holder", lock=name, dead_holder=current)
        return True
    return False


@contextmanager
def job_lock(
    backend: LockBackend,
    name: str,
    *,
    ttl: timedelta = DEFAULT_TTL,
    heartbeat: bool = True,
    dead: Callable[[str], bool] | None = None,
) -> Iterator[bool]:
    """Yields True when this caller holds ``name`` for the block, False when another does.

    ``dead(holder_token)`` lets a caller take over a lock whose holder died before it
    expired.  Usage: ``with job_lock(backend, "recon.sweep") as held: if not held: return``."""
    token = new_token()
    if not backend.acquire(name, token, ttl) and (
        dead is None or not _take_over(backend, name, token, ttl, dead)
    ):
        yield False
        return
    beat = _Heartbeat(backend, name, token, ttl) if heartbeat else None
    if beat is not None:
        beat.start()
    try:
        yield True
    finally:
        if beat is not None:
            beat.stop.set()
            beat.join(timeout=5)
        try:
            backend.release(name, token)
        except Exception as exc:
            # It expires on its own; failing the job over a release would hide its result.
            log.warning("job lock release failed", lock=name, error=type(exc).__name__)
