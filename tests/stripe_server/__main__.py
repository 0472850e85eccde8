"""`python -m tests.stripe_server --port 12111`: serve the fake until interrupted."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import uvicorn

from .app import FakeStripe
from .state import StripeState, random_payment_intents
from .templates import load_templates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.stripe_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--rate-limit", type=float, help="requests per second on /v1")
    parser.add_argument("--rate-burst", type=float)
    parser.add_argument(
        "--endpoint-rate-limit", type=float, help="requests per second per endpoint (Stripe: 25)"
    )
    parser.add_argument("--api-version", help="the account's default Stripe API version")
    parser.add_argument(
        "--omit-field",
        action="append",
        dest="omit_fields",
        default=[],
        help="drop a field from everything served, e.g. payment_intent.amount_received",
    )
    parser.add_argument(
        "--companion-events", action="store_true", help="charge.* beside payment_intent.*"
    )
    parser.add_argument("--thin-events", action="store_true", help="record v1.* thin twins")
    parser.add_argument("--error-rate", type=float, default=0.0, help="probability of a 5xx")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument(
        "--api-key", action="append", dest="api_keys", help="accept only these keys (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed N random PaymentIntents")
    parser.add_argument("--seed-events", action="store_true", help="record events for the seed")
    parser.add_argument("--seed-window", default="1d", help="spread the seed over 1d, 6h, 30m")
    parser.add_argument("--fixtures", type=Path, help="path to fixtures3.json")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    state = StripeState(
        load_templates(args.fixtures),
        api_version=args.api_version,
        omit_fields=args.omit_fields,
        companion_events=args.companion_events,
        thin_events=args.thin_events,
    )
    if args.seed:
        now = int(time.time())
        specs = random_payment_intents(
            args.seed, created_from=now - _seconds(args.seed_window), created_to=now
        )
        state.seed_payment_intents(specs, record_events=args.seed_events)
    config = {
        "rate_limit": args.rate_limit,
        "rate_burst": args.rate_burst,
        "endpoint_rate_limit": args.endpoint_rate_limit,
        "error_rate": args.error_rate,
        "latency_ms": args.latency_ms,
        "valid_keys": args.api_keys,
    }
    fake = FakeStripe(state, **config)
    print(
        f"test Stripe server on http://{args.host}:{args.port} "
        f"({state.count_payment_intents()} payment intents, API version {state.api_version}, "
        f"fixtures: {state.templates.source})",
        flush=True,
    )
    uvicorn.run(fake.app, host=args.host, port=args.port, log_level=args.log_level)


def _seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    if not text or text[-1] not in units or not text[:-1].isdigit():
        raise SystemExit(f"bad duration {text!r}: write 90s, 10m, 2h or 3d")
    return int(text[:-1]) * units[text[-1]]


if __name__ == "__main__":
    main()
