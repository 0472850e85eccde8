"""Run the fake in a background thread on a free port, for tests, the demo and benchmarks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from .app import FakeStripe, ServerConfig
from .state import StripeState

DEFAULT_API_KEY = "sk_test_stripe_server_local"


class RunningServer:
    """A started server. `url` is the base address to give the Stripe client."""

    def __init__(
        self,
        fake: FakeStripe,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = DEFAULT_API_KEY,
        startup_timeout: float = 10.0,
    ) -> None:
        self.fake = fake
        self.api_key = api_key
        # Binding here rather than in uvicorn gives us the real port of port=0 before start.
        # proto must be IPPROTO_TCP, not the default 0: asyncio only sets TCP_NODELAY on
        # accepted sockets whose proto says TCP, and without it Nagle + delayed ACK add 40 ms
        # to every response (uvicorn writes headers and body separately).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        config = uvicorn.Config(
            fake.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"stripe-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"test Stripe server did not start on {self.url}")
            time.sleep(0.005)

    @property
    def state(self) -> StripeState:
        return self.fake.state

    @property
    def config(self) -> ServerConfig:
        return self.fake.config

    def stats(self) -> dict[str, Any]:
        return self.fake.stats.snapshot()

    def calls(self, endpoint: str | None = None, outcome: str | None = None) -> int:
        """Number of /v1 calls, e.g. calls("payment_intents.retrieve", "200")."""
        return self.fake.stats.count(endpoint, outcome)

    def calls_per_second(
        self, endpoint: str | None = None, outcome: str | None = None, *, admitted_only=False
    ) -> dict[int, int]:
        """Calls by the Unix second they arrived in (all endpoints, or one)."""
        return self.fake.stats.per_second(endpoint, outcome, admitted_only=admitted_only)

    def peak_calls(
        self,
        endpoint: str | None = None,
        *,
        window: float = 1.0,
        admitted_only: bool = False,
    ) -> int:
        """The most calls that arrived within any sliding `window` seconds: a client that
        shares Stripe's budget of N per second must keep this <= N (429s included unless
        `admitted_only`)."""
        return self.fake.stats.peak(endpoint, window=window, admitted_only=admitted_only)

    def configure(self, **changes: Any) -> ServerConfig:
        return self.fake.configure(**changes)

    def reset(self, *, state: bool = True, stats: bool = True, config: bool = True) -> None:
        self.fake.reset(state=state, stats=stats, config=config)

    def client(self, api_key: str | None = None, **kwargs: Any) -> Any:
        """A stripe.StripeClient aimed at this server (no retries unless asked). It sends the
        stripe library's pinned version as Stripe-Version unless `stripe_version=` says
        otherwise [V2]."""
        import stripe

        kwargs.setdefault("max_network_retries", 0)
        return stripe.StripeClient(
            api_key or self.api_key, base_addresses={"api": self.url}, **kwargs
        )

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    *,
    state: StripeState | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str = DEFAULT_API_KEY,
    **config: Any,
) -> RunningServer:
    """Start and return; call `.stop()` when done. `config` takes ServerConfig's fields and
    the account settings of StripeState (api_version, omit_fields, companion_events...)."""
    return RunningServer(FakeStripe(state, **config), host=host, port=port, api_key=api_key)


@contextmanager
def run_server(
    *,
    state: StripeState | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str = DEFAULT_API_KEY,
    **config: Any,
) -> Iterator[RunningServer]:
    """`with run_server(rate_limit=25) as srv:` then `srv.client()`, `srv.state`..."""
    server = start_server(state=state, host=host, port=port, api_key=api_key, **config)
    try:
        yield server
    finally:
        server.stop()
