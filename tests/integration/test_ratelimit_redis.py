"""RedisRateLimiter against a real Redis: several limiters, one budget."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from reconcile.ratelimit import RedisRateLimiter

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("RECON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
RATE = 50.0


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"integration tests need Redis at RECON_TEST_REDIS_URL ({REDIS_URL})")
    yield client
    client.close()


@pytest.fixture
def key(client: redis.Redis) -> Iterator[str]:
    key = f"recon:test:rate:{uuid.uuid4().hex}"
    yield key
    client.delete(key)


def max_in_any_window(stamps: list[float], width: float = 1.0) -> int:
    stamps = sorted(stamps)
    best, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


def assert_within_budget(stamps: list[float], burst: int) -> None:
    stamps = sorted(stamps)
    elapsed = stamps[-1] - stamps[0]
    rate = (len(stamps) - burst) / elapsed
    assert rate <= RATE * 1.05, f"aggregate {rate:.1f}/s over a budget of {RATE}/s"
    assert rate >= RATE * 0.7, f"aggregate {rate:.1f}/s: the budget is not being used"
    # Scheduling jitter may let one extra request into a window.
    assert max_in_any_window(stamps) <= RATE + burst + 1


def test_two_limiters_in_two_threads_share_one_budget(key):
    per_thread = 60
    burst = 2
    stamps: list[list[float]] = [[], []]
    start = threading.Barrier(2)

    def worker(out: list[float]) -> None:
        own = redis.Redis.from_url(REDIS_URL)  # a connection of its own, like a process
        limiter = RedisRateLimiter(own, key=key, rate_per_second=RATE, burst=burst)
        start.wait()
        for _ in range(per_thread):
            limiter.acquire()
            out.append(time.monotonic())
        own.close()

    threads = [threading.Thread(target=worker, args=(out,)) for out in stamps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert [len(out) for out in stamps] == [per_thread, per_thread]
    assert_within_budget(stamps[0] + stamps[1], burst)


def _acquire_in_process(url: str, key: str, count: int, burst: int, go_at: float) -> list[float]:
    limiter = RedisRateLimiter(
        redis.Redis.from_url(url), key=key, rate_per_second=RATE, burst=burst
    )
    time.sleep(max(0.0, go_at - time.time()))
    stamps = []
    for _ in range(count):
        limiter.acquire()
        stamps.append(time.time())  # wall clock: comparable across processes on one host
    return stamps


def test_two_processes_share_one_budget(key):
    burst = 2
    go_at = time.time() + 1.5  # both processes start together, once spawned
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        results = [
            pool.apply_async(_acquire_in_process, (REDIS_URL, key, 50, burst, go_at))
            for _ in range(2)
        ]
        stamps = [r.get(timeout=30) for r in results]

    assert [len(s) for s in stamps] == [50, 50]
    assert_within_budget(stamps[0] + stamps[1], burst)


def test_a_fresh_key_allows_the_burst_at_once_then_asks_to_wait_one_interval(client, key):
    limiter = RedisRateLimiter(client, key=key, rate_per_second=10, burst=4)

    immediate = [limiter.try_acquire() for _ in range(4)]
    wait = limiter.try_acquire()

    assert immediate == [0.0] * 4
    assert 0.05 < wait <= 0.1


def test_a_refused_caller_holds_no_reservation(client, key):
    limiter = RedisRateLimiter(client, key=key, rate_per_second=10, burst=1)
    assert limiter.try_acquire() == 0.0

    waits = [limiter.try_acquire() for _ in range(5)]

    # five refusals later the next slot is still one interval away, not six
    assert all(0 < w <= 0.1 for w in waits)


def test_the_key_expires_once_the_bucket_would_be_full_again(client, key):
    limiter = RedisRateLimiter(client, key=key, rate_per_second=10, burst=1)

    limiter.acquire()

    assert 0 < client.pttl(key) <= 1100 + 100


def test_a_lost_key_after_a_redis_restart_only_restarts_the_bucket(client, key):
    limiter = RedisRateLimiter(client, key=key, rate_per_second=10, burst=2)
    limiter.acquire()
    limiter.acquire()
    client.delete(key)  # what a Redis restart without persistence leaves

    assert limiter.try_acquire() == 0.0
    assert not limiter.degraded
