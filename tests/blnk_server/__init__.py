"""A local Blnk-compatible server (transactions, inflight commit/void, filter, balances).

In-process::

    with run_server() as blnk:
        wallet = blnk.state.create_balance("USD").balance_id
        BlnkClient(blnk.url, blnk.api_key)  # what BlnkLedger talks to
        blnk.requests("PUT", "/transactions/inflight/")  # the request log

Standalone: ``python -m tests.blnk_server --port 5001``; other processes read the request log
and change faults through ``/_test/``.
"""

from .app import MASTER_KEY, FakeBlnk, LoggedRequest, ServerConfig, create_app
from .runner import RECON_KEY, RECON_SCOPES, RunningBlnk, run_server, start_server
from .state import GENERAL_LEDGER_ID, BlnkError, BlnkState

__all__ = [
    "GENERAL_LEDGER_ID",
    "MASTER_KEY",
    "RECON_KEY",
    "RECON_SCOPES",
    "BlnkError",
    "BlnkState",
    "FakeBlnk",
    "LoggedRequest",
    "RunningBlnk",
    "ServerConfig",
    "create_app",
    "run_server",
    "start_server",
]
