"""`python -m tests.blnk_server --port 5001`: serve the Blnk stand-in until interrupted."""

from __future__ import annotations

import argparse

import uvicorn

from .app import MASTER_KEY, FakeBlnk
from .runner import RECON_KEY, RECON_SCOPES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.blnk_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--master-key", default=MASTER_KEY)
    parser.add_argument("--error-rate", type=float, default=0.0, help="probability of a 5xx")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    fake = FakeBlnk(
        master_key=args.master_key,
        api_keys={RECON_KEY: RECON_SCOPES},
        error_rate=args.error_rate,
        latency_ms=args.latency_ms,
    )
    print(
        f"Blnk stand-in on http://{args.host}:{args.port} "
        f"(scoped key {RECON_KEY}: {', '.join(RECON_SCOPES)})",
        flush=True,
    )
    uvicorn.run(fake.app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
