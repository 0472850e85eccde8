"""Pacing of Stripe API requests, in one process or shared by every worker through Redis.

Stripe limits requests per account, not per process, at two levels that both apply: a
global budget (100 requests per second in live mode, 25 in test mode) and a budget per
endpoint (25 per second by default, e.g. PaymentIntent retrieve; each named operation is
its own endpoint) — tests/stripe_server/FACTS.md [L1][L2].  Every worker process and thread
therefore draws from one global budget and one budget per endpoint, by default at 80% of
Stripe's (so that a dashboard user or a deploy script on the same account does not push us
into 429s).

Both limiters implement GCRA (the generic cell rate algorithm): a single "theoretical
arrival time" per bucket, which is equivalent to a token bucket of ``burst`` tokens
refilled at ``rate_per_second`` but needs one number of state instead of two.

The default burst is a tenth of a second's worth of requests (at least 1): any one-second
window then holds at most ``rate + burst`` requests, 22 at the default rate, still below
Stripe's 25.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis

__all__ = [
    "DEFAULT_ENDPOINT_RATE",
    "DEFAULT_RATE",
    "EndpointLimiters",
    "LocalRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "default_burst",
    "make_rate_limiter",
]

DEFAULT_RATE = 20.0  # 80% of test mode's 25/s; live mode's 100/s allows 80
DEFAULT_ENDPOINT_RATE = 20.0  # 80% of Stripe's default 25/s per endpoint
DEFAULT_KEY = "recon:stripe:rate"

logger = logging.getLogger(__name__)


class RateLimiter(Protocol):
    def acquire(self) -> None:
        """Block until one more request may be sent."""


def default_burst(rate_per_second: float) -> int:
    return max(1, round(rate_per_second / 10))


def _check(rate_per_second: float, burst: int | None) -> int:
    if not (rate_per_second > 0 and math.isfinite(rate_per_second)):
        raise ValueError(f"rate_per_second must be a positive number, got {rate_per_second!r}")
    if burst is None:
        return default_burst(rate_per_second)
    if burst < 1:
        raise ValueError(f"burst must be at least 1, got {burst!r}")
    return burst


class LocalRateLimiter:
    """A thread-safe GCRA limiter for one process.

    Each caller reserves its slot under the lock and then sleeps outside it, so a waiting
    thread never holds up the others and callers are served in arrival order with a single
    sleep each (no polling).
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.burst = _check(rate_per_second, burst)
        self.rate_per_second = rate_per_second
        self._interval = 1.0 / rate_per_second
        self._tolerance = (self.burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tat: float | None = None

    def reserve(self) -> float:
        """Take the next slot and return how many seconds to wait before using it."""
        with self._lock:
            now = self._clock()
            tat = now if self._tat is None else max(self._tat, now)
            self._tat = tat + self._interval
            wait = tat - self._tolerance - now
            # below a microsecond it is float rounding of sums of intervals, not a wait
            return wait if wait > 1e-6 else 0.0

    def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)

    def __repr__(self) -> str:
        return f"LocalRateLimiter(rate_per_second={self.rate_per_second}, burst={self.burst})"


# Times are integer microseconds from the Redis server's own clock (TIME), so the clocks of
# the worker hosts never enter the computation.  Lua numbers are doubles: microseconds since
# the epoch (~1.7e15) are exact below 2^53.  The script only reads the state when it has to
# refuse, and writes it when it admits; a refused caller holds no reservation, so a worker
# killed while it sleeps costs the others nothing.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  tat = math.max(tonumber(stored), now)
end
local wait = tat - tolerance - now
if wait > 0 then
  return math.ceil(wait)
end
local new_tat = tat + interval
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return 0
"""


class RedisRateLimiter:
    """GCRA in Redis, shared by every process that uses the same key.

    When Redis cannot be reached the limiter falls back to a per-process limiter at the
    same rate rather than failing the Stripe call: with several processes the aggregate
    may then exceed the budget for a while, which costs some 429s that the gateway retries,
    whereas failing closed would stop reconciliation for as long as Redis is down.
    """

    def __init__(
        self,
        redis: redis.Redis,
        key: str = DEFAULT_KEY,
        rate_per_second: float = DEFAULT_RATE,
        burst: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        fallback: RateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
        recheck_after: float = 5.0,
    ) -> None:
        self.burst = _check(rate_per_second, burst)
        self.rate_per_second = rate_per_second
        self.key = key
        self._clock = clock
        self._recheck_after = recheck_after
        self._degraded_since: float | None = None
        self._interval_us = max(1, round(1_000_000 / rate_per_second))
        self._tolerance_us = (self.burst - 1) * self._interval_us
        self._sleep = sleep
        self._script = redis.register_script(_GCRA_LUA)
        self._fallback = fallback or LocalRateLimiter(
            rate_per_second, self.burst, clock=clock, sleep=sleep
        )

    def try_acquire(self) -> float:
        """Take a slot if one is free now (returns 0.0), else return the seconds to wait."""
        wait_us = int(self._script(keys=[self.key], args=[self._interval_us, self._tolerance_us]))
        return wait_us / 1_000_000

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and this process paces itself alone."""
        return self._degraded_since is not None

    def acquire(self) -> None:
        since = self._degraded_since
        # While Redis is down, asking it on every request would add a connection timeout
        # to each Stripe call; it is asked again only every ``recheck_after`` seconds.
        if since is not None and self._clock() - since < self._recheck_after:
            self._fallback.acquire()
            return
        while True:
            try:
                wait = self.try_acquire()
            except redis.RedisError as exc:
                self._degrade(exc)
                self._fallback.acquire()
                return
            if self._degraded_since is not None:
                self._degraded_since = None
                logger.warning("shared Stripe rate limiter reachable again: back on Redis")
            if wait <= 0:
                return
            self._sleep(wait)

    def _degrade(self, exc: redis.RedisError) -> None:
        # Logged once per outage; only the exception's class, because redis error messages
        # can carry the connection URL (and so its password).
        if self._degraded_since is None:
            logger.warning(
                "shared Stripe rate limiter unreachable (%s): pacing this process alone",
                type(exc).__name__,
            )
        self._degraded_since = self._clock()

    def __repr__(self) -> str:
        return (
            f"RedisRateLimiter(key={self.key!r}, rate_per_second={self.rate_per_second}, "
            f"burst={self.burst})"
        )


def _client(redis_url: str) -> redis.Redis:
    # Short timeouts: a hung Redis must turn into the local fallback quickly, not into a
    # worker blocked forever before its Stripe call.
    return redis.Redis.from_url(redis_url, socket_connect_timeout=2.0, socket_timeout=2.0)


def make_rate_limiter(
    redis_url: str | None,
    rate: float = DEFAULT_RATE,
    key: str = DEFAULT_KEY,
    *,
    burst: int | None = None,
) -> RateLimiter:
    """The shared Redis limiter when a Redis URL is configured, else a per-process one."""
    if not redis_url:
        return LocalRateLimiter(rate, burst)
    return RedisRateLimiter(_client(redis_url), key=key, rate_per_second=rate, burst=burst)


class EndpointLimiters:
    """One budget per Stripe endpoint (``payment_intents.retrieve``...), made on first use,
    in Redis (key ``<key>:<endpoint>``) when a Redis URL is configured."""

    def __init__(
        self,
        redis_url: str | None,
        rate: float = DEFAULT_ENDPOINT_RATE,
        key: str = DEFAULT_KEY,
        *,
        burst: int | None = None,
    ) -> None:
        _check(rate, burst)
        self.rate = rate
        self.burst = burst
        self.key = key
        self._redis = _client(redis_url) if redis_url else None
        self._limiters: dict[str, RateLimiter] = {}
        self._lock = threading.Lock()

    def __call__(self, endpoint: str) -> RateLimiter:
        with self._lock:
            limiter = self._limiters.get(endpoint)
            if limiter is None:
                if self._redis is None:
                    limiter = LocalRateLimiter(self.rate, self.burst)
                else:
                    limiter = RedisRateLimiter(
                        self._redis,
                        key=f"{self.key}:{endpoint}",
                        rate_per_second=self.rate,
                        burst=self.burst,
                    )
                self._limiters[endpoint] = limiter
            return limiter
