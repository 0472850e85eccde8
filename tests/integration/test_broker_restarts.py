"""A Redis restart must not cost a worker (issue 14).

Two crashes of Celery's reconnect path, each shown on the pieces involved, and a real worker
process (as deployed: prefork, ``--without-gossip --without-mingle --without-heartbeat``)
kept busy across several SIGKILL-and-restart cycles of a Redis server of its own, answering
``inspect ping`` (the Kubernetes liveness probe) after each one.
"""

from __future__ import annotations

import types
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery.concurrency import asynpool
from kombu import Connection, Exchange, Queue
from kombu.asynchronous import Hub
from kombu.transport import redis as kombu_redis
from sqlalchemy import Engine, select

from ledger.sql import transactions
from reconcile import inbox
from reconcile.tables import inbox as inbox_table
from tests import procs
from tests.stripe_server import run_server
from tests.support import ago, epoch, seed_entry
from worker import broker
from worker.celery_app import make_app
from worker.settings import Settings

pytestmark = [pytest.mark.integration]


@pytest.fixture
def redis_server(tmp_path: Path) -> Any:
    server = procs.RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def _channel_left_by_a_lost_connection(transport: Any, redis_server: Any) -> Any:
    """A message delivered and not acked, then the broker restarts and the connection is
    dropped as Celery drops it (``collect`` while the broker is away, then ``close``): the
    transport is detached (``client = None``).  The channel's pools are disconnected, as
    ``Channel.close`` does first."""
    name = f"q-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name), name)
    with Connection(redis_server.url) as producer_conn:
        producer_conn.Producer().publish(
            {"n": 1}, exchange=queue.exchange, routing_key=name, declare=[queue]
        )
    conn = Connection(redis_server.url, transport=transport)
    got: list[Any] = []
    consumer = conn.Consumer(queue, callbacks=[lambda body, msg: got.append(msg)], accept=["json"])
    consumer.qos(prefetch_count=1)
    consumer.consume()
    conn.drain_events(timeout=5)
    assert len(got) == 1
    redis_server.kill()
    try:
        conn.collect(socket_timeout=1)
    finally:
        conn.close()
        redis_server.start()
    channel = got[0].channel
    channel._disconnect_pools()
    assert channel.connection is not None and channel.connection.client is None
    return got[0]


def test_kombus_redis_channel_of_a_closed_connection_fails_with_the_issues_attribute_error(
    redis_server: Any,
) -> None:
    message = _channel_left_by_a_lost_connection(kombu_redis.Transport, redis_server)
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'hostname'"):
        message.reject(requeue=True)  # restores the unacked message


def test_our_redis_channel_of_a_closed_connection_fails_as_a_lost_connection(
    redis_server: Any,
) -> None:
    message = _channel_left_by_a_lost_connection(broker.RedisTransport, redis_server)
    with pytest.raises(broker.RedisTransport.connection_errors):
        message.reject(requeue=True)
    # What Celery does with a message of a lost connection: logged, not fatal.
    import logging

    message.ack_log_error(logging.getLogger("test"), broker.RedisTransport.connection_errors)


def test_a_prefork_child_that_died_while_the_consumer_reconnects_is_skipped_not_fatal() -> None:
    hub = Hub()
    dead_child = types.SimpleNamespace(_sentinel_poll=None)  # exited, untracked
    pool = types.SimpleNamespace(_event_process_exit=lambda *a: None)
    try:
        with pytest.raises(ValueError, match="file descriptor is None"):
            asynpool.AsynPool._track_child_process(pool, dead_child, hub)
        broker.AsynPool._track_child_process(pool, dead_child, hub)
        assert hub.readers == {}
    finally:
        hub.close()


def test_the_app_uses_the_hardened_transport_and_pool_for_a_redis_broker() -> None:
    app = make_app(Settings(broker_url="redis://127.0.0.1:1/0"), set_as_current=False)
    assert app.conf.broker_transport == "worker.broker:RedisTransport"
    assert app.conf.worker_pool == "worker.broker:TaskPool"
    assert isinstance(app.connection_for_read().transport, broker.RedisTransport)


# --------------------------------------------------------------------------- a real worker

RESTARTS = 4
PAYMENTS = 24


def _pings(app: Any, node: str) -> bool:
    try:
        return bool(app.control.ping(destination=[node], timeout=1))
    except Exception:  # our own client's connection was reset by the restart: ask again
        return False


def _send(app: Any, name: str, **kw: Any) -> None:
    procs.wait_until(lambda: _try_send(app, name, **kw), timeout=30, what=f"sending {name}")


def _try_send(app: Any, name: str, **kw: Any) -> bool:
    try:
        app.send_task(name, **kw)
    except Exception:
        return False
    return True


def _processed(engine: Engine) -> int:
    with engine.connect() as conn:
        rows = conn.execute(select(inbox_table.c.status)).scalars().all()
    return sum(1 for s in rows if s == "processed")


def test_a_real_worker_survives_redis_restarts_and_keeps_working(
    pg_engine: Engine, pg_schema: str, redis_server: Any, tmp_path: Path
) -> None:
    with run_server(latency_ms=150) as stripe:
        event_ids = []
        for n in range(PAYMENTS):
            pid = f"pi_restart_{n:03}"
            created = ago(minutes=30)
            seed_entry(pg_engine, pid, 1000, created=created)
            change = stripe.state.create_payment_intent(
                id=pid, amount=1000, currency="usd", status="processing", created=epoch(created)
            )
            with pg_engine.begin() as conn:
                for event in change.events:
                    inbox.store_event(conn, event, source="webhook", now=ago(seconds=0))
                    event_ids.append(event["id"])
        env = {
            "RECON_DATABASE_URL": pg_schema,
            "RECON_BROKER_URL": redis_server.url,
            "STRIPE_API_KEY": stripe.api_key,
            "RECON_STRIPE_API_BASE": stripe.url,
            "RECON_STRIPE_RATE_LIMIT": "1000",
            "RECON_STRIPE_ENDPOINT_RATE_LIMIT": "1000",
            "RECON_REDRIVE_AGE": "0s",
        }
        worker = procs.celery_worker(env, tmp_path / "logs").start()
        app = make_app(Settings(broker_url=redis_server.url), set_as_current=False)
        node = f"worker@{__import__('socket').gethostname()}"
        try:
            procs.wait_until(
                lambda: _pings(app, node),
                timeout=60,
                what="the worker answering ping",
            )
            for cycle in range(RESTARTS):
                # Work in flight (each task waits on Stripe) when the broker goes away.
                for event_id in event_ids:
                    _send(app, "stripe.process_event", args=[event_id])
                procs.wait_until(lambda: _processed(pg_engine) > 0 or cycle > 0, timeout=30)
                redis_server.restart(down_for=1.0 + cycle)
                assert worker.alive(), f"worker died at restart {cycle + 1}:\n{worker.tail()}"
                procs.wait_until(
                    lambda: _pings(app, node),
                    timeout=60,
                    what=f"ping after restart {cycle + 1}",
                )
            # Messages the restarts lost are re-sent by redrive, as beat would every minute.
            _send(app, "inbox.redrive", kwargs={"older_than_seconds": 0})
            procs.wait_until(
                lambda: _processed(pg_engine) == len(event_ids),
                timeout=90,
                what="every event processed",
            )
            assert worker.alive()
            log = worker.log_text()
            assert "Unrecoverable error" not in log
            assert log.count("Connection to broker lost") >= RESTARTS
        finally:
            app.close()
            worker.terminate()
    with pg_engine.connect() as conn:
        statuses = conn.execute(select(transactions.c.status)).scalars().all()
    assert set(statuses) == {"INFLIGHT"}  # processing payments wait, as the table says
