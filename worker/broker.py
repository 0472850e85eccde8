"""Celery's Redis transport and prefork pool, hardened against broker restarts.

A worker must survive a Redis restart.  Two ways it did not, both in the code Celery and
kombu run while the consumer reconnects, both ending in "Unrecoverable error" and the
worker process exiting:

- ``AttributeError: 'NoneType' object has no attribute 'hostname'`` from kombu's Redis
  transport (issue 14; the same frames as celery/kombu#582 and #970).  When Celery drops a
  broken connection, kombu's ``Connection`` detaches its transport (``Transport.client =
  None``, kombu/connection.py ``_do_close_transport``) and ``Channel.close`` disconnects the
  channel's pools.  A channel of that connection used afterwards, to restore or ack a
  message it delivered before the restart, rebuilds its pool from
  ``self.connection.client.hostname`` (kombu/transport/redis.py ``_connparams``).  The
  AttributeError is not one of the transport's ``connection_errors``, so Celery's
  ``ignore_errors`` / ``ack_log_error`` / ``maybe_restore_messages`` let it through.
  :class:`RedisTransport` makes that use raise a Redis ``ConnectionError`` instead: Celery
  handles it as the connection loss it is (the message stays in the unacked index and is
  restored after ``visibility_timeout``; every task here is idempotent).
- ``ValueError: file descriptor is None`` from the prefork pool (celery
  ``asynpool.AsynPool._track_child_process``): a child that died (SIGKILL, OOM) has its
  sentinel untracked (``_sentinel_poll = None``) and stays in the pool until
  ``maintain_pool`` replaces it; if the consumer reconnects in between, the pool is
  registered with the event loop again and ``hub.add_reader(None)`` raises.  Reproduced
  here once in 26 Redis restarts with children being killed.  :class:`TaskPool` skips a
  child that is already untracked; ``maintain_pool`` replaces it as before.

The app selects both for a ``redis://`` broker (worker/celery_app.py).  Deployments start
workers ``--without-gossip --without-mingle --without-heartbeat``: those steps only add
broadcast channels to tear down and rebuild on every reconnect, and nothing here uses them
(the liveness probe's ``inspect ping`` uses remote control, which stays on).
"""

from __future__ import annotations

from typing import Any

from celery.concurrency import asynpool, prefork
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["AsynPool", "RedisTransport", "TaskPool"]


class _Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        transport = self.connection
        if transport is None or transport.client is None:
            raise RedisConnectionError(
                "the broker connection of this channel was closed (the broker went away)"
            )
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport whose channels fail as a lost connection, not with an
    AttributeError, once their connection was closed."""

    Channel = _Channel


class AsynPool(asynpool.AsynPool):  # type: ignore[misc]
    def _track_child_process(self, proc: Any, hub: Any) -> None:
        if getattr(proc, "_sentinel_poll", 0) is None:
            # Exited and untracked already: maintain_pool replaces it.
            return
        super()._track_child_process(proc, hub)


class TaskPool(prefork.TaskPool):  # type: ignore[misc]
    """Celery's prefork pool with :class:`AsynPool`."""

    Pool = AsynPool
