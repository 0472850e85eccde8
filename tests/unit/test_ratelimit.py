"""Rate limiters with a fake clock (no real waiting) and a fake Redis script."""

from __future__ import annotations

import logging
import threading

import pytest
import redis

from reconcile.ratelimit import (
    LocalRateLimiter,
    RedisRateLimiter,
    default_burst,
    make_rate_limiter,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_full_bucket_lets_a_burst_through_then_paces_at_the_rate():
    clock = FakeClock()
    limiter = LocalRateLimiter(10, burst=3, clock=clock, sleep=clock.sleep)

    for _ in range(6):
        limiter.acquire()

    assert clock.sleeps == pytest.approx([0.1, 0.1, 0.1])
    assert clock.now == pytest.approx(1000.3)


def test_n_acquisitions_take_at_least_n_minus_burst_intervals():
    clock = FakeClock()
    limiter = LocalRateLimiter(20, burst=2, clock=clock, sleep=clock.sleep)

    for _ in range(102):
        limiter.acquire()

    assert clock.now - 1000.0 == pytest.approx(100 / 20)


def test_an_idle_limiter_refills_up_to_its_burst_and_no_further():
    clock = FakeClock()
    limiter = LocalRateLimiter(10, burst=3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        limiter.acquire()
    clock.now += 3600  # an hour idle must not bank an hour of requests

    for _ in range(4):
        limiter.acquire()

    assert clock.sleeps == pytest.approx([0.1])


def test_requests_spaced_wider_than_the_rate_never_wait():
    clock = FakeClock()
    limiter = LocalRateLimiter(10, burst=1, clock=clock, sleep=clock.sleep)

    for _ in range(5):
        limiter.acquire()
        clock.now += 0.1

    assert clock.sleeps == []


def test_concurrent_callers_get_distinct_slots_one_interval_apart():
    clock = FakeClock()  # frozen: every slot after the first must be reserved ahead
    limiter = LocalRateLimiter(100, burst=1, clock=clock, sleep=lambda s: None)
    waits: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        for _ in range(50):
            wait = limiter.reserve()
            with lock:
                waits.append(wait)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(waits) == pytest.approx([i * 0.01 for i in range(400)])


def test_the_default_burst_keeps_any_second_under_the_budget_plus_a_tenth():
    assert default_burst(20) == 2
    assert default_burst(100) == 10
    assert default_burst(0.5) == 1
    assert LocalRateLimiter(20).burst == 2


@pytest.mark.parametrize("rate", [0, -1, float("inf"), float("nan")])
def test_a_rate_that_is_not_a_positive_number_is_refused(rate):
    with pytest.raises(ValueError):
        LocalRateLimiter(rate)


def test_a_burst_below_one_is_refused():
    with pytest.raises(ValueError):
        LocalRateLimiter(10, burst=0)


# --------------------------------------------------------------------------- Redis limiter


class FakeRedis:
    """Stands in for ``redis.Redis``: the script answers from a list of waits (microseconds)
    or raises what it is given."""

    def __init__(self, answers: list[int | Exception]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], list[int]]] = []

    def register_script(self, source: str):
        assert "TIME" in source  # the server's clock, never the workers'

        def script(keys: list[str], args: list[int]) -> int:
            self.calls.append((keys, args))
            answer = self.answers.pop(0) if self.answers else 0
            if isinstance(answer, Exception):
                raise answer
            return answer

        return script


def test_the_redis_limiter_sleeps_what_the_script_says_and_asks_again():
    fake = FakeRedis([40_000, 10_000, 0])
    clock = FakeClock()
    limiter = RedisRateLimiter(fake, key="k", rate_per_second=25, burst=3, sleep=clock.sleep)

    limiter.acquire()

    assert clock.sleeps == pytest.approx([0.04, 0.01])
    assert fake.calls == [(["k"], [40_000, 80_000])] * 3  # interval and tolerance in µs


def test_when_redis_is_down_the_process_paces_itself_and_logs_once(caplog):
    down = redis.ConnectionError("Error 111 connecting to redis://:hunter2@cache:6379")
    fake = FakeRedis([down, down, down])
    clock = FakeClock()
    limiter = RedisRateLimiter(
        fake, rate_per_second=10, burst=1, sleep=clock.sleep, clock=clock, recheck_after=5
    )

    with caplog.at_level(logging.WARNING, logger="reconcile.ratelimit"):
        for _ in range(4):
            limiter.acquire()

    assert limiter.degraded
    assert clock.sleeps == pytest.approx([0.1, 0.1, 0.1])  # the local fallback paced them
    assert len(fake.calls) == 1  # Redis is not asked on every request while it is down
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "hunter2" not in caplog.text


def test_the_redis_limiter_goes_back_to_redis_once_it_answers_again(caplog):
    fake = FakeRedis([redis.ConnectionError("down")])
    clock = FakeClock()
    limiter = RedisRateLimiter(fake, rate_per_second=10, sleep=clock.sleep, clock=clock)
    limiter.acquire()
    clock.now += 6

    limiter.acquire()

    assert not limiter.degraded
    assert len(fake.calls) == 2


def test_make_rate_limiter_shares_through_redis_only_when_a_url_is_given():
    local = make_rate_limiter(None, 20)
    shared = make_rate_limiter("redis://:secret@127.0.0.1:1/15", 20)  # no connection yet

    assert isinstance(local, LocalRateLimiter) and local.rate_per_second == 20
    assert isinstance(shared, RedisRateLimiter) and shared.key == "recon:stripe:rate"
    assert "secret" not in repr(shared)
