"""`make demo`: the whole pipeline on the embedded defaults, in under a minute.

SQLite (``recon.db`` in the current directory), tasks in-process, and the local
Stripe-compatible server from tests/stripe_server.  It seeds a realistic day of top-ups,
delivers some as signed webhooks to the running intake (a few twice, some out of order),
lets sweep, catch-up and the missing-record scan find the rest, and prints the report and
the open tickets.

It also seeds Praise (praise@example.com), who asks why his wallet has not updated: a
$2,000 top-up stuck in flight, one paid but never recorded, and one that failed minutes
ago, so that `recon customer praise@example.com` has something to answer.

``--blnk`` (``make demo BLNK=1``): the books are in Blnk instead (the Blnk-compatible
stand-in from tests/blnk_server, ``RECON_LEDGER=blnk``): the application's holds and
wallets are created there, and every commit, void and create goes through Blnk's API.

``--serve`` (``make demo-serve``) keeps the local Stripe server answering on a fixed port
after the demo, so every `recon` command can be tried on the demo data; it prints the
environment to use and waits for Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

WEBHOOK_SECRET = "whsec_demo_only_not_a_real_secret"
DB_FILE = Path(os.environ.get("RECON_DEMO_DB", "recon.db"))


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVE_PORT = int(os.environ.get("RECON_DEMO_STRIPE_PORT", "12111"))
PRAISE = "praise@example.com"


def seed_praise(state: Any, record: Any, wallet: Any, now: datetime) -> None:
    """Praise's three top-ups: stuck in flight, paid but unrecorded, failed just now."""
    from tests.support import epoch

    who = {"customer": "cus_praise", "receipt_email": PRAISE}
    meta = {"customer_email": PRAISE, "customer_name": "Praise Okafor"}
    stuck_at = now - timedelta(hours=8)  # past the demo's 6h SLA: a stuck_payment ticket
    state.create_payment_intent(
        id="pi_praise_stuck", amount=200_000, currency="usd", status="requires_payment_method",
        created=epoch(stuck_at), **who,
    )  # fmt: skip
    state.update_payment_intent("pi_praise_stuck", status="processing", at=epoch(stuck_at) + 30)
    record("pi_praise_stuck", 200_000, created=stuck_at,
           destination=wallet("praise"), metadata=meta)  # fmt: skip
    state.create_payment_intent(
        id="pi_praise_unrecorded", amount=2_500, currency="usd", status="succeeded",
        created=epoch(now - timedelta(hours=4)), metadata={"ledger_destination": wallet("praise")},
        **who,
    )  # fmt: skip
    failed_at = now - timedelta(minutes=25)  # within the 1h grace: the customer may retry
    state.create_payment_intent(
        id="pi_praise_failed", amount=7_500, currency="usd", status="requires_payment_method",
        created=epoch(failed_at), **who,
    )  # fmt: skip
    state.update_payment_intent(
        "pi_praise_failed", last_payment_error="card_declined", at=epoch(failed_at) + 20
    )
    record("pi_praise_failed", 7_500, created=failed_at,
           destination=wallet("praise"), metadata=meta)  # fmt: skip


def seed_more_kinds(state: Any, record: Any, wallet: Any, now: datetime) -> list[str]:
    """A paid payment whose hold was voided and a credited one that was then canceled, so
    that every fix (credit, reverse) has a ticket to try it on."""
    from tests.support import epoch

    created = now - timedelta(hours=5)
    state.create_payment_intent(
        id="pi_demo_paid_voided", amount=3_000, currency="usd", status="succeeded",
        created=epoch(created), customer="cus_demo_pv",
    )  # fmt: skip
    record("pi_demo_paid_voided", 3_000, created=created,
           destination=wallet("cus_demo_pv"), status="VOID")  # fmt: skip
    state.create_payment_intent(
        id="pi_demo_credited_failed", amount=4_000, currency="usd", status="processing",
        created=epoch(created), customer="cus_demo_cf",
    )  # fmt: skip
    record("pi_demo_credited_failed", 4_000, created=created,
           destination=wallet("cus_demo_cf"), status="APPLIED")  # fmt: skip
    # Canceled after the wallet was credited: only the Events API tells the service.
    state.update_payment_intent("pi_demo_credited_failed", status="canceled")
    return ["pi_demo_paid_voided", "pi_demo_credited_failed"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.demo", description=__doc__)
    parser.add_argument(
        "--blnk",
        action="store_true",
        help="keep the books in the Blnk stand-in (RECON_LEDGER=blnk)",
    )
    parser.add_argument(
        "--serve", action="store_true", help="keep the local Stripe server answering afterwards"
    )
    args = parser.parse_args(argv)
    serve = args.serve
    started = time.monotonic()
    from tests.stripe_server import run_server, signed_webhook

    stripe_srv = run_server(port=SERVE_PORT) if serve else run_server()
    srv = stripe_srv.__enter__()
    blnk = None
    if args.blnk:
        from tests.blnk_server import start_server as start_blnk

        blnk = start_blnk()
    for name in ("RECON_BROKER_URL", "RECON_REDIS_URL"):
        os.environ.pop(name, None)  # the embedded defaults: in-process tasks
    DB_FILE.unlink(missing_ok=True)
    env = {
        "RECON_DATABASE_URL": f"sqlite:///{DB_FILE}",
        "STRIPE_API_KEY": srv.api_key,
        "RECON_STRIPE_API_BASE": srv.url,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RECON_PROCESSING_SLA": "6h",
        "RECON_FAILED_GRACE": "1h",
        "RECON_SWEEP_MIN_AGE": "10m",
    }
    if blnk is not None:
        env |= {"RECON_LEDGER": "blnk", "BLNK_URL": blnk.url, "BLNK_API_KEY": blnk.api_key}
    else:
        os.environ.pop("RECON_LEDGER", None)
    os.environ.update(env)

    import logging

    import httpx
    import uvicorn

    from worker.logs import configure_logging

    # The demo narrates; the service's own JSON log lines would drown it out.
    configure_logging(json=False, level=logging.WARNING)

    from reconcile.usecases import run_catch_up, run_scan, run_sweep
    from tests.support import epoch, seed_blnk_entry, seed_entry
    from worker import queue
    from worker.db import engine_for, upgrade
    from worker.intake import create_app
    from worker.settings import get_settings
    from worker.wiring import services

    say(f"database {DB_FILE} (SQLite), Stripe-compatible server at {srv.url}")
    upgrade(env["RECON_DATABASE_URL"])
    settings = get_settings()
    engine = engine_for(settings.database_url)

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    intake = f"http://127.0.0.1:{port}/webhooks/stripe"
    say(f"webhook intake listening on {intake}")
    if blnk is not None:
        say(f"the books are in Blnk: the Blnk-compatible server at {blnk.url}")

    wallets: dict[str, str] = {}

    def wallet(name: str, currency: str = "USD") -> str:
        """The application's wallet: on Blnk a balance it created, named by its id."""
        if blnk is None:
            return f"wallet:{name}"
        if name not in wallets:
            wallets[name] = blnk.state.create_balance(currency).balance_id
        return wallets[name]

    def record(pid: str, amount: int, currency: str = "USD", **kw: Any) -> None:
        """The application records the top-up as an inflight hold."""
        if blnk is None:
            seed_entry(engine, pid, amount, currency, **kw)
        else:
            seed_blnk_entry(blnk.state, pid, amount, currency, **kw)

    # -- a day of top-ups ---------------------------------------------------------------
    rng = random.Random(7)
    now = datetime.now(UTC).replace(microsecond=0)
    state = srv.state
    plan: list[tuple[str, str]] = []
    kinds = (
        ["succeeded"] * 14
        + ["failed_then_retried"] * 3
        + ["failed"] * 3
        + ["canceled"] * 3
        + ["processing"] * 2
        + ["processing_stuck"] * 1
        + ["partial_capture"] * 1
        + ["three_ds_abandoned"] * 1
    )
    for n, kind in enumerate(kinds):
        pid = f"pi_demo{n:03d}"
        created = now - timedelta(hours=rng.uniform(0.5, 20))
        if kind == "processing_stuck":
            created = now - timedelta(hours=9)
        amount = rng.choice([1000, 2500, 5000, 10000])
        customer = f"cus_demo{n % 9}"
        state.create_payment_intent(
            id=pid,
            amount=amount,
            currency="usd",
            status="requires_payment_method",
            created=epoch(created),
            customer=customer,
            metadata={"ledger_destination": wallet(customer)},
        )
        record(pid, amount, "USD", created=created, destination=wallet(customer))
        plan.append((pid, kind))
    # One paid but never recorded, one JPY top-up, one recorded but unknown to Stripe.
    state.create_payment_intent(
        id="pi_demo_unrecorded",
        amount=4200,
        currency="usd",
        status="succeeded",
        created=epoch(now - timedelta(hours=3)),
        customer="cus_demo_lost",
        metadata={"ledger_destination": wallet("cus_demo_lost")},
    )
    state.create_payment_intent(
        id="pi_demo_yen",
        amount=1500,
        currency="jpy",
        status="requires_payment_method",
        created=epoch(now - timedelta(hours=2)),
        customer="cus_demo_jp",
    )
    # @stripe is an indicator balance: one per currency, so the JPY top-up draws on it too.
    record(
        "pi_demo_yen",
        1500,
        "JPY",
        created=now - timedelta(hours=2),
        destination=wallet("jp", "JPY"),
    )
    plan.append(("pi_demo_yen", "succeeded"))
    record(
        "pi_demo_ghost",
        3000,
        created=now - timedelta(hours=5),
        destination=wallet("cus_demo_ghost"),
    )

    webhooks: list[dict[str, Any]] = []
    for pid, kind in plan:
        match kind:
            case "succeeded":
                ch = state.update_payment_intent(pid, status="succeeded")
            case "failed_then_retried":
                state.update_payment_intent(pid, last_payment_error="card_declined")
                ch = state.update_payment_intent(pid, status="succeeded")
            case "failed":
                ch = state.update_payment_intent(pid, last_payment_error="insufficient_funds")
            case "canceled":
                ch = state.update_payment_intent(pid, status="canceled")
            case "processing" | "processing_stuck":
                ch = state.update_payment_intent(pid, status="processing")
            case "partial_capture":
                ch = state.update_payment_intent(
                    pid,
                    status="succeeded",
                    amount_received=state.payment_intent(pid)["amount"] // 2,
                )
            case "three_ds_abandoned":
                ch = state.update_payment_intent(pid, status="requires_action")
        webhooks.extend(ch.events)
    state.update_payment_intent("pi_demo_unrecorded", status="succeeded")
    seed_praise(state, record, wallet, now)
    seed_more_kinds(state, record, wallet, now)

    # -- webhooks: about two thirds delivered, some twice, shuffled ----------------------
    delivered = [e for e in webhooks if rng.random() < 0.65]
    dupes = rng.sample(delivered, k=min(4, len(delivered)))
    batch = delivered + dupes
    rng.shuffle(batch)
    say(
        f"{len(plan) + 2} top-ups seeded; delivering {len(batch)} signed webhooks "
        f"({len(dupes)} duplicates, shuffled out of order; {len(webhooks) - len(delivered)} "
        "never delivered)"
    )
    answers: dict[int, int] = {}
    dup_answers = 0
    with httpx.Client(timeout=10) as client:
        for event in batch:
            body, headers = signed_webhook(event, WEBHOOK_SECRET)
            r = client.post(intake, content=body, headers=headers)
            answers[r.status_code] = answers.get(r.status_code, 0) + 1
            if r.status_code == 200 and r.json().get("duplicate"):
                dup_answers += 1
        bad_body, bad_headers = signed_webhook(batch[0], "whsec_wrong")
        bad = client.post(intake, content=bad_body, headers=bad_headers)
    print(f"intake answers: {answers}  (duplicates recognised: {dup_answers})")
    print(f"a webhook signed with the wrong secret: HTTP {bad.status_code} {bad.json()}")
    queue.shutdown_in_process(wait=True)

    # Later in the day: one credited top-up is refunded, another disputed.  Nobody
    # delivers those webhooks; the catch-up from the Events API has to find them.
    credited = [pid for pid, kind in plan if kind == "succeeded"]
    state.update_payment_intent(
        credited[0], amount_refunded=state.payment_intent(credited[0])["amount"]
    )
    state.update_payment_intent(credited[1], disputed=True)

    # -- the scheduled jobs find the rest ------------------------------------------------
    svc = services(settings)
    for label, fn in (
        ("sweep of stale inflight entries", lambda: run_sweep(svc, trigger="demo", actor="demo")),
        ("catch-up from the Events API", lambda: run_catch_up(svc, trigger="demo", actor="demo")),
        (
            "missing-record scan over the last day",
            lambda: run_scan(
                svc,
                trigger="demo",
                actor="demo",
                since=now - timedelta(days=1),
                until=now + timedelta(minutes=1),
            ),
        ),
    ):
        result = fn()
        counts = {k: v for k, v in sorted(result.counts.items()) if v}
        print(f"{label}: run {result.run_id} {result.status} {counts}")

    with engine.begin() as conn:
        violations = svc.ledger_for(conn).check_invariants()
    print(f"ledger invariants: {violations or 'hold'}")
    if blnk is not None:
        log = blnk.requests()
        by_call: dict[str, int] = {}
        for r in log:
            call = f"{r.method} {r.path.split('/txn_')[0].split('/pi_')[0]}"
            by_call[call] = by_call.get(call, 0) + 1
        floats = [r for r in log if isinstance(r.body, dict) and "amount" in r.body]
        keyed = all(r.header("X-Blnk-Key") == blnk.api_key for r in log)
        print(f"Blnk API calls: {dict(sorted(by_call.items()))}")
        print(
            f"every call carried X-Blnk-Key: {keyed}; float amounts sent: {len(floats)} "
            "(money goes as precise_amount + precision)"
        )

    server.should_exit = True

    cli_env = {**os.environ, **env, "COLUMNS": "160"}
    recon = [sys.executable, "-c", "from worker.cli import main; main()"]
    for title, cmd in (
        ("recon ledger balances", ["ledger", "balances"]),
        ("recon report --since 2d", ["report", "--since", "2d"]),
        ("recon tickets", ["tickets"]),
        ("recon runs", ["runs"]),
        (f"recon customer {PRAISE}", ["customer", PRAISE]),
    ):
        say(title)
        subprocess.run([*recon, *cmd], env=cli_env, check=False)  # noqa: S603
    say(f"demo finished in {time.monotonic() - started:.1f}s")
    print(
        f"The demo database is {DB_FILE}; `.venv/bin/recon tickets show 1`, `recon runs show 1`, "
        "`recon ledger show pi_demo000` and the other read-only commands work on it as is."
    )
    if blnk is not None and not serve:
        blnk.stop()
    if not serve:
        stripe_srv.__exit__(None, None, None)
        print(
            "Commands that read Stripe (recon customer --refresh, tickets resolve, payment, "
            "sweep...) need the local Stripe server: run `make demo-serve` instead, which "
            "keeps it answering and prints the environment to use."
        )
        return 0
    print(
        "\nThe local Stripe server keeps answering until you press Ctrl-C. In another "
        "terminal:\n\n"
        f"  export RECON_DATABASE_URL=sqlite:///{DB_FILE.resolve()}\n"
        f"  export RECON_STRIPE_API_BASE={srv.url} STRIPE_API_KEY={srv.api_key}\n"
        "  export RECON_PROCESSING_SLA=6h RECON_FAILED_GRACE=1h\n"
        f"  .venv/bin/recon customer {PRAISE}\n"
        "  # Stripe settles the stuck top-up; --refresh credits it:\n"
        f"  curl -s -X POST {srv.url}/_test/payment_intents/pi_praise_stuck "
        "-H 'content-type: application/json' -d '{\"status\": \"succeeded\"}' >/dev/null\n"
        f"  .venv/bin/recon customer {PRAISE} --refresh\n"
        "  .venv/bin/recon tickets   # then: recon tickets resolve ID --action ... --note ...\n",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stripe_srv.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
