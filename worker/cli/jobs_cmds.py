"""`recon sweep|catch-up|scan|payment|replay|runs|rerun`: on-call runs any job by hand.

Every job records its run (trigger "cli" or "rerun", actor = the operator).  A live run
that could touch more than a handful of payments asks first; without a terminal it refuses
unless --yes is given, so a script never changes the ledger by accident.
"""

from __future__ import annotations

import getpass
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NoReturn

import typer

from reconcile.engine import to_entry
from reconcile.ports import Services
from reconcile.runs import RunResult
from reconcile.stripe_gateway import (
    InvalidStripeId,
    StripeGateway,
    StripeGatewayError,
    check_id,
)
from reconcile.tickets import entry_state, payment_state
from reconcile.usecases import (
    BadRequest,
    NotFound,
    plan_rerun,
    reconcile_payment,
    replay_event,
    rerun,
    run_catch_up,
    run_scan,
    run_sweep,
    split_sweep,
)
from reconcile.views import list_runs, run_with_audit
from worker.cli.context import app_state
from worker.cli.output import (
    COUNT_LEGEND,
    EXIT_ATTENTION,
    EXIT_USAGE,
    MAX_ID,
    counts_line,
    counts_table,
    err_console,
    fail,
    kv,
    money,
    print_json,
    safe,
    say,
    short_age,
    styled,
    table,
    when,
)
from worker.durations import BadDuration, parse_duration, parse_when

HANDFUL = 5  # a live run touching more payments than this asks first

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show the plan; change nothing (the run is recorded).")
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
ByOpt = Annotated[str | None, typer.Option("--by", help="Operator name (default: your login).")]

RunIdArg = Annotated[int, typer.Argument(min=1, max=MAX_ID, help="Run id.")]

runs_app = typer.Typer(help="Recorded job runs.", invoke_without_command=True)


# -- plumbing -------------------------------------------------------------------------------


def _operator(by: str | None) -> str:
    name = (by or getpass.getuser() or "unknown").strip()
    # It goes into every audit row this command writes: a name, not a paragraph.
    if not name or len(name) > 100 or safe(name) != name:
        fail("--by must be a name of at most 100 printable characters")
    return name


def stripe_failed(exc: StripeGatewayError, prefix: str = "Stripe: ") -> NoReturn:
    """A Stripe error as one line: an id that is no Stripe id is bad input (exit 2, nothing
    was sent); anything else is Stripe's answer (exit 1)."""
    if isinstance(exc, InvalidStripeId):
        fail(str(exc))
    fail(f"{prefix}{exc}", EXIT_ATTENTION)


def stripe_id(value: str, prefix: str, what: str) -> str:
    """``value`` when it has the shape of a Stripe id (checked before the database or
    Stripe sees it: path characters, NUL, a length past Stripe's); else exit 2."""
    try:
        return check_id(value, prefix, what)
    except InvalidStripeId as exc:
        fail(str(exc))


def _services() -> tuple[Services, StripeGateway]:
    from worker.wiring import ConfigError, build_services

    try:
        svc = build_services(app_state.settings)
        # Built now, not inside the job, so a missing key is a one-line error rather than a
        # run left "running".
        return svc, svc.new_gateway()
    except ConfigError as exc:
        fail(str(exc))
    except StripeGatewayError as exc:
        fail(str(exc))


def _when(text: str, what: str, now: datetime) -> datetime:
    """A time option (``2h`` ago or ISO 8601); refused when it lies in the future."""
    try:
        value = parse_when(text, now)
    except BadDuration as exc:
        fail(f"{what}: {exc}")
    if value > now + timedelta(seconds=1):
        fail(f"{what} {when(value)} is in the future (now is {when(now)})")
    return value


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"{question}: pass --yes to go ahead, or --dry-run to see the plan first", EXIT_USAGE)
    if not typer.confirm(question, default=False):
        fail("aborted; nothing was changed", EXIT_USAGE)


@contextmanager
def _progress(label: str, unit: str) -> Iterator[Callable[[int], None]]:
    """Rich progress on a terminal; off one (logs, cron) a plain line every few seconds
    with the count so far and the rate, and a last line with the total when it ends."""
    if err_console.is_terminal:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
            console=err_console, transient=True,
        ) as bar:  # fmt: skip
            task = bar.add_task(label, total=None)
            yield lambda n: bar.update(task, description=f"{label}: {n:,} {unit}")
        return
    started = time.monotonic()
    last = [started, 0]

    def line(n: int) -> None:
        last[1] = n
        if time.monotonic() - last[0] >= 2.0:
            last[0] = time.monotonic()
            took = max(time.monotonic() - started, 1e-9)
            say(f"{label}: {n:,} {unit} so far ({n / took:,.0f}/s)", err=True)

    yield line
    if last[1]:
        say(f"{label}: {last[1]:,} {unit} in {time.monotonic() - started:.1f}s", err=True)


def _plan_rows(plan: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    rows = []
    for p in plan:
        t = p.get("ticket")
        ticket = f"{t['kind']} ({t['severity']})" if t else ""
        if t and p.get("ticket_new"):
            ticket += " new" if p.get("ticket_id") is None else f" #{p['ticket_id']} new"
        elif p.get("ticket_id"):
            ticket += f" #{p['ticket_id']}"
        amount = money(p.get("amount"), p.get("currency"))
        if p.get("void_remainder"):
            amount += " (+ rest released)"
        rows.append((p["payment_id"], p["action"], p["reason"], amount, ticket, p.get("error")))
    return rows


def _finish(
    result: RunResult, dry_run: bool, as_json: bool, extra: dict[str, Any] | None = None
) -> None:
    """Print what the run did or would do; exit 1 when a person must look."""
    guard = {"tripped": result.guard is not None, "why": result.guard}
    if as_json:
        print_json(
            {
                "run_id": result.run_id,
                "status": result.status,
                "dry_run": dry_run,
                "counts": result.counts,
                "errors": result.errors,
                "plan": result.plan,
                "guard": guard,
                "cut_short": result.cut_short,
                "notes": result.notes,
                "attention": result.attention,
                **(extra or {}),
            }
        )
    else:
        for note in result.notes:
            say(styled("note: ", "yellow"), note)
        acting = [p for p in result.plan if p["action"] not in ("nothing", "matched", "wait")]
        shown = result.plan if dry_run else acting
        if shown:
            table(
                "plan (dry run: nothing was changed; new tickets get numbers when opened)"
                if dry_run
                else "actions",
                ["payment", "action", "reason", "amount", "ticket", "error"],
                _plan_rows(shown),
                ids={"payment"},
            )
        if result.guard is not None:
            verb = "would stop" if dry_run else "stopped"
            say(
                styled(f"blast-radius guard {verb} this run: ", "bold red"),
                f"it {result.guard}. "
                + ("A live run would change nothing past this point and open an incident."
                   if dry_run else "Nothing past this point was changed; see the incident ticket."),
            )  # fmt: skip
        elif result.cut_short:
            say(styled("cut short: ", "bold red"), result.cut_short)
        dry = " (dry run: nothing was changed)" if dry_run else ""
        counts_table(f"run {result.run_id}: {result.status}{dry}", result.counts)
        for err in result.errors[:20]:
            say(styled("error: ", "red"), err, err=True)
        say(f"run id: {result.run_id}")
    if result.attention:
        raise typer.Exit(EXIT_ATTENTION)


def _run_job(job: Callable[..., RunResult], label: str, unit: str, **kw: Any) -> RunResult:
    try:
        with _progress(label, unit) as progress:
            return job(progress=progress, **kw)
    except NotFound as exc:
        fail(str(exc))
    except StripeGatewayError as exc:
        stripe_failed(exc)
    except (BadRequest, ValueError) as exc:
        fail(str(exc))


# -- the jobs -------------------------------------------------------------------------------


def _confirm_sweep(svc: Services, age: timedelta, limit: int | None, yes: bool) -> None:
    with app_state.begin() as conn:
        waiting = len(svc.ledger_for(conn).list_inflight(svc.clock() - age, HANDFUL + 1))
    if waiting > HANDFUL and (limit is None or limit > HANDFUL):
        _confirm(f"sweep will reconcile more than {HANDFUL} inflight entries", yes)


def sweep(
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="Minimum entry age, e.g. 10m.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, max=10_000_000, help="At most this many entries.")
    ] = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    by: ByOpt = None,
    as_json: JsonOpt = False,
    parts: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Split the backlog into N creation windows of equal size, one sweep task "
            "each, for the Celery workers to share (needs RECON_BROKER_URL).",
        ),
    ] = 1,
) -> None:
    """Reconcile inflight ledger entries older than --older-than (default RECON_SWEEP_MIN_AGE)."""
    try:
        age = parse_duration(older_than) if older_than is not None else None
    except BadDuration as exc:
        fail(f"--older-than: {exc}")
    svc, _ = _services()
    age = age if age is not None else svc.sweep_min_age
    if parts > 1:
        _sweep_parts(svc, age, parts, dry_run, limit, yes, by, as_json)
        return
    if not dry_run:
        _confirm_sweep(svc, age, limit, yes)
    result = _run_job(
        run_sweep,
        "sweep",
        "entries",
        svc=svc,
        trigger="cli",
        actor=_operator(by),
        dry_run=dry_run,
        older_than=age,
        limit=limit,
    )
    _finish(result, dry_run, as_json)


def _sweep_parts(
    svc: Services,
    age: timedelta,
    parts: int,
    dry_run: bool,
    limit: int | None,
    yes: bool,
    by: str | None,
    as_json: bool,
) -> None:
    from worker.celery_app import app
    from worker.queue import enqueue_sweep_parts

    if dry_run or limit is not None:
        fail("--parts sends the whole backlog to the workers: drop --dry-run and --limit")
    _confirm_sweep(svc, age, None, yes)
    windows = split_sweep(svc, parts=parts, older_than=age)
    try:
        ids = enqueue_sweep_parts(
            windows, app=app, older_than_seconds=age.total_seconds(), actor=_operator(by)
        )
    except RuntimeError as exc:
        fail(str(exc))
    rows = [
        {
            "task_id": task_id,
            "newer_than": lo.isoformat() if lo else None,
            "created_before": hi.isoformat() if hi else None,
        }
        for task_id, (lo, hi) in zip(ids, windows, strict=True)
    ]
    if as_json:
        print_json({"parts": rows})
        return
    for row in rows:
        say(
            f"part {row['newer_than'] or '(oldest)'} .. {row['created_before'] or '(cutoff)'}: "
            f"task {row['task_id']}"
        )
    say(f"{len(rows)} sweep part(s) sent to the workers; follow them with `recon runs`")


def catch_up(
    since: Annotated[
        str | None,
        typer.Option(help="2h (that long ago) or ISO 8601; default: the stored cursor."),
    ] = None,
    dry_run: DryRunOpt = False,
    by: ByOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Feed Stripe events since --since into the inbox and process the new ones."""
    # Events each name one payment and are processed exactly as webhooks are: no prompt.
    when = _when(since, "--since", datetime.now(UTC)) if since else None
    svc, _ = _services()
    result = _run_job(
        run_catch_up,
        "catch-up",
        "events",
        svc=svc,
        trigger="cli",
        actor=_operator(by),
        dry_run=dry_run,
        since=when,
    )
    _finish(result, dry_run, as_json)


def scan(
    since: Annotated[str, typer.Option(help="3d (that long ago) or ISO 8601.")],
    until: Annotated[str, typer.Option(help="Duration ago or ISO 8601 (default now).")] = "0s",
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    by: ByOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find succeeded Stripe payments created in a window that have no ledger record."""
    now = datetime.now(UTC)
    start, end = _when(since, "--since", now), _when(until, "--until", now)
    svc, _ = _services()
    if not dry_run and end > start:
        # How many payments a window holds is unknown until it is listed: always ask.
        _confirm(f"scan {start.isoformat()} .. {end.isoformat()} and act on what it finds", yes)
    result = _run_job(
        run_scan,
        "scan",
        "payments",
        svc=svc,
        trigger="cli",
        actor=_operator(by),
        dry_run=dry_run,
        since=start,
        until=end,
    )
    _finish(result, dry_run, as_json)


def _payment(payment_id: str, dry_run: bool, actor: str, as_json: bool) -> None:
    svc, gw = _services()
    try:
        with app_state.begin() as conn:
            txn = svc.ledger_for(conn).find_linked(payment_id)
        result, outcome = reconcile_payment(
            svc,
            payment_id,
            actor=actor,
            dry_run=dry_run,
            trigger="cli",
            gateway=gw,
        )
    except NotFound as exc:
        fail(str(exc))
    except StripeGatewayError as exc:
        stripe_failed(exc)
    except ValueError as exc:
        fail(str(exc))
    stripe_view, ledger_view = payment_state(outcome.payment), entry_state(to_entry(txn))
    d = outcome.decision
    decision = {"action": d.action.value, "reason": str(d.reason)}
    if not as_json:
        _state_table("Stripe", stripe_view)
        _state_table("ledger", ledger_view)
        kv("decision", [("action", d.action.value), ("reason", str(d.reason))])
    _finish(
        result,
        dry_run,
        as_json,
        {
            "payment_id": payment_id,
            "stripe": stripe_view,
            "ledger": ledger_view,
            "decision": decision,
        },
    )


_AMOUNTS = ("amount", "amount_received", "amount_refunded", "committed_amount", "voided_amount")


def state_pairs(state: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """A Stripe or ledger state (tickets.payment_state / entry_state) as readable lines:
    amounts in major units with the currency, times in one format with their age."""
    state = state or {"found": False}
    if not state.get("found"):
        return [("found", "no")]
    now = datetime.now(UTC)
    cur = state.get("currency")
    pairs: list[tuple[str, Any]] = []
    for k, v in state.items():
        if k in ("found", "currency") or v in (None, "", False):
            continue
        if k in _AMOUNTS and isinstance(v, int):
            if v or k in ("amount", "amount_received"):
                pairs.append((k.replace("_", " "), money(v, cur)))
        elif k in ("created", "created_at") and isinstance(v, str):
            try:
                at = datetime.fromisoformat(v)
            except ValueError:
                pairs.append((k, v))
            else:
                pairs.append(("created", f"{when(at)} ({short_age(now - at)} ago)"))
        else:
            pairs.append((k.replace("_", " "), v))
    return pairs


def _state_table(title: str, state: dict[str, Any] | None) -> None:
    kv(title, state_pairs(state))


def payment(
    payment_id: Annotated[str, typer.Argument(help="The PaymentIntent id, pi_...")],
    dry_run: DryRunOpt = False,
    by: ByOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one payment on Stripe and in the ledger, the decision, then act on it."""
    _payment(stripe_id(payment_id, "pi_", "a PaymentIntent"), dry_run, _operator(by), as_json)


def _replay(event_id: str, dry_run: bool, actor: str, as_json: bool) -> None:
    svc, gw = _services()
    try:
        res = replay_event(svc, event_id, actor=actor, dry_run=dry_run, gateway=gw)
    except NotFound as exc:
        fail(str(exc))
    except StripeGatewayError as exc:
        stripe_failed(exc)
    if not as_json:
        if res.event_status == "not_stored":
            say(f"dry run: event {event_id} would be stored; its payment {res.payment_id}:")
        elif res.fetched:
            say(f"event {event_id} fetched from Stripe and stored in the inbox")
        if res.event_status not in ("failed", "not_stored"):
            say(f"event {event_id}: {res.event_status} {res.detail} ({res.payment_id or '-'})")
    _finish(res.run, dry_run, as_json, {"event_id": event_id, "event_status": res.event_status})


def replay(
    event_id: Annotated[str, typer.Argument(help="Stripe event id, evt_...")],
    dry_run: DryRunOpt = False,
    by: ByOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-process one event (fetched from Stripe when the inbox does not have it)."""
    _replay(stripe_id(event_id, "evt_", "an event"), dry_run, _operator(by), as_json)


# -- runs -----------------------------------------------------------------------------------


JOBS = ("sweep", "catch_up", "scan_missing", "payment", "replay", "customer_refresh")
RUN_STATUSES = ("running", "succeeded", "partial", "failed")


def _status(r: dict[str, Any]) -> str:
    return f"{r['status']} (dry run)" if r["dry_run"] else str(r["status"])


def _took(r: dict[str, Any]) -> str:
    if r["finished_at"] and r["started_at"]:
        return f"{(r['finished_at'] - r['started_at']).total_seconds():.1f}s"
    return ""


def _legend(counts: list[dict[str, int]]) -> None:
    keys = sorted({k for c in counts for k, v in c.items() if v})
    if keys:
        say("counts: " + "; ".join(f"{k} = {COUNT_LEGEND.get(k, k)}" for k in keys))


@runs_app.callback()
def runs_list(
    ctx: typer.Context,
    job: Annotated[str | None, typer.Option(help=f"One of {', '.join(JOBS)}.")] = None,
    status: Annotated[str | None, typer.Option(help=f"One of {', '.join(RUN_STATUSES)}.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 20,
    as_json: JsonOpt = False,
) -> None:
    """List recent runs, newest first; dry runs are marked and changed nothing."""
    if ctx.invoked_subcommand is not None:
        return
    wanted_job = job.replace("-", "_") if job else None
    if wanted_job is not None and wanted_job not in JOBS:
        fail(f"--job must be one of {', '.join(JOBS)}; got {job!r}")
    if status is not None and status not in RUN_STATUSES:
        fail(f"--status must be one of {', '.join(RUN_STATUSES)}; got {status!r}")
    with app_state.begin() as conn:
        rows = list_runs(conn, job=wanted_job, status=status, limit=limit)
    if as_json:
        print_json(rows)
        return
    table(
        f"{len(rows)} run(s), newest first",
        ["id", "job", "status", "trigger", "actor", "started", "took", "counts"],
        [
            (
                r["id"],
                r["job"] + (f" (rerun of {r['rerun_of']})" if r["rerun_of"] else ""),
                _status(r),
                r["trigger"],
                r["actor"],
                when(r["started_at"]),
                _took(r),
                counts_line(r["counts"] or {}),
            )
            for r in rows
        ],
        ids={"started"},
    )
    _legend([r["counts"] or {} for r in rows])


@runs_app.command("show")
def runs_show(
    run_id: RunIdArg,
    as_json: JsonOpt = False,
) -> None:
    """One run in full: what, when, why it stopped, its counts and its ledger actions."""
    with app_state.begin() as conn:
        found = run_with_audit(conn, run_id)
    if found is None:
        fail(f"no run {run_id}")
    run, rows = found
    if as_json:
        print_json({**run, "audit": rows})
        return
    params = dict(run["params"] or {})
    cut_short, notes = params.pop("cut_short", None), params.pop("notes", [])
    window = ""
    if run["window_start"] or run["window_end"]:
        window = f"{when(run['window_start']) or '(open)'} .. {when(run['window_end']) or 'now'}"
    kv(
        f"run {run_id}: {run['job']}, {_status(run)}",
        [
            ("job", run["job"]),
            ("status", _status(run)),
            ("dry run", "yes: nothing was changed" if run["dry_run"] else "no"),
            ("trigger", f"{run['trigger']}, by {run['actor']}"),
            ("rerun of", f"run {run['rerun_of']}" if run["rerun_of"] else None),
            ("window", window or None),
            ("started", when(run["started_at"])),
            ("finished", when(run["finished_at"]) or "still running (or it crashed)"),
            ("took", _took(run) or None),
            (
                "parameters",
                ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if v is not None) or None,
            ),
            ("cut short", cut_short),
            ("notes", "; ".join(notes) or None),
            (
                "Stripe calls",
                f"{run['stripe_calls']:,} ({run['stripe_rate_limited']:,} rate limited)",
            ),
            (
                "resume from",
                ", ".join(f"{k}={v}" for k, v in (run["resume"] or {}).items()) or None,
            ),
        ],
    )
    if run["counts"]:
        counts_table("counts", run["counts"])
    for err in run["errors"] or []:
        say(styled("error: ", "red"), err)
    table(
        f"{len(rows)} audit row(s)",
        ["at", "payment", "action", "amount", "reason", "actor", "ticket"],
        [
            (
                when(a["created_at"]),
                a["payment_id"],
                a["action"],
                money(a["amount"], a["currency"]),
                a["reason"],
                a["actor"],
                a["ticket_id"],
            )
            for a in rows
        ],
        ids={"payment"},
    )


def rerun_cmd(
    run_id: Annotated[int, typer.Argument(min=1, max=MAX_ID, help="The run to repeat.")],
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    by: ByOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a recorded run's job again with the same window and parameters."""
    svc, _ = _services()
    try:
        spec = plan_rerun(svc, run_id)
    except NotFound as exc:
        fail(str(exc))
    except BadRequest as exc:
        fail(str(exc))
    if not dry_run:
        if spec.job == "sweep":
            _confirm_sweep(svc, spec.older_than or svc.sweep_min_age, spec.limit, yes)
        elif spec.job == "scan_missing":
            _confirm(f"scan the window of run {run_id} again and act on what it finds", yes)
    result = _run_job(
        rerun,
        f"rerun {run_id}",
        "items",
        svc=svc,
        spec=spec,
        actor=_operator(by),
        dry_run=dry_run,
    )
    _finish(result, dry_run, as_json)


def register(app: typer.Typer) -> None:
    app.command()(sweep)
    app.command("catch-up")(catch_up)
    app.command()(scan)
    app.command()(payment)
    app.command()(replay)
    app.command("rerun")(rerun_cmd)
    app.add_typer(runs_app, name="runs")
