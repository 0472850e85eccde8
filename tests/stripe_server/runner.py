"""Run the fake in a background thread on a free port, for tests, the demo and benchmarks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.threaded_server import ThreadedServer

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
        self._server = ThreadedServer(
            fake.app, host=host, port=port, name="stripe-server", startup_timeout=startup_timeout
        )
        self.host, self.port, self.url = self._server.host, self._server.port, self._server.url

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
        self._server.stop()

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
