"""Run the Blnk stand-in in a background thread on a free port (tests, the demo)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.threaded_server import ThreadedServer

from .app import MASTER_KEY, FakeBlnk, LoggedRequest, ServerConfig
from .state import BlnkState

# A key with exactly the scopes stripe-recon needs (README, "Using stripe-recon with Blnk"):
# the filter endpoint is a POST, so reading transactions that way takes transactions:write.
RECON_KEY = "blnk_recon_scoped_key"
RECON_SCOPES = ("transactions:read", "transactions:write", "balances:read")


class RunningBlnk:
    """A started stand-in. ``url`` and ``api_key`` are what BLNK_URL / BLNK_API_KEY take."""

    def __init__(
        self, fake: FakeBlnk, *, host: str = "127.0.0.1", port: int = 0, api_key: str = RECON_KEY
    ) -> None:
        self.fake = fake
        self.api_key = api_key
        self._server = ThreadedServer(fake.app, host=host, port=port, name="blnk-server")
        self.host, self.port, self.url = self._server.host, self._server.port, self._server.url

    @property
    def state(self) -> BlnkState:
        return self.fake.state

    @property
    def config(self) -> ServerConfig:
        return self.fake.config

    def configure(self, **changes: Any) -> ServerConfig:
        return self.fake.configure(**changes)

    def requests(self, method: str | None = None, path: str | None = None) -> list[LoggedRequest]:
        """The requests served so far (method and path prefix optional)."""
        return self.fake.log(method, path)

    def reset(self, *, state: bool = True, log: bool = True, config: bool = True) -> None:
        self.fake.reset(state=state, log=log, config=config)

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> RunningBlnk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    *,
    state: BlnkState | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str = RECON_KEY,
    **config: Any,
) -> RunningBlnk:
    """Start and return; call ``.stop()`` when done.  ``config`` takes ServerConfig's
    fields; the scoped ``api_key`` is added to ``api_keys`` unless it is the master key."""
    keys = dict(config.pop("api_keys", {}) or {})
    if api_key != config.get("master_key", MASTER_KEY):
        keys.setdefault(api_key, RECON_SCOPES)
    fake = FakeBlnk(state, api_keys=keys, **config)
    return RunningBlnk(fake, host=host, port=port, api_key=api_key)


@contextmanager
def run_server(**kwargs: Any) -> Iterator[RunningBlnk]:
    """``with run_server(error_rate=0.33) as blnk:`` then ``blnk.url``, ``blnk.requests()``."""
    server = start_server(**kwargs)
    try:
        yield server
    finally:
        server.stop()
