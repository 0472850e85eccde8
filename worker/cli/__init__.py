"""The `recon` command line."""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

import click
import typer
from sqlalchemy.exc import DBAPIError
from typer.core import TyperGroup

from reconcile.redact import redact
from worker.cli import (
    console_cmds,
    customer_cmds,
    inbox_cmds,
    jobs_cmds,
    ledger_cmds,
    operators_cmds,
    report_cmds,
    tickets_cmds,
)
from worker.cli.context import app_state, database_problem, fail_database
from worker.cli.output import EXIT_ATTENTION, EXIT_USAGE, fail, print_json, say
from worker.logs import configure_logging


def _usage_errors() -> tuple[type[Exception], ...]:
    # Recent typer vendors its own click (typer._click): its usage errors are not click's.
    found: list[type[Exception]] = [click.UsageError]
    try:
        from typer._click.exceptions import UsageError as Vendored  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        pass
    else:
        found.append(Vendored)
    return tuple(found)


_USAGE_ERRORS = _usage_errors()


class _Recon(TyperGroup):
    """Every command: a database that is down or not migrated is one line, never a trace;
    so is bad usage (click's own box would quote the input over several lines)."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except _USAGE_ERRORS as exc:
            _usage(exc)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _USAGE_ERRORS as exc:
            _usage(exc)
        except DBAPIError as exc:
            # A value PostgreSQL refuses (out of range, NUL...) is bad input, not an outage.
            fail_database(exc)


def _usage(exc: Exception) -> NoReturn:
    """A usage error as one line (click's box would quote the input over several)."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        raise exc  # `recon ledger` alone: its help, as asked for
    sub = getattr(exc, "ctx", None)
    where = sub.command_path if sub is not None else "recon"
    fail(f"{exc.format_message()} (see `{where} -h`)", EXIT_USAGE)  # type: ignore[attr-defined]


app = typer.Typer(
    name="recon",
    cls=_Recon,
    help="stripe-recon: keep the ledger honest about Stripe.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(ledger_cmds.app, name="ledger", no_args_is_help=True)
app.add_typer(tickets_cmds.app, name="tickets")
app.add_typer(operators_cmds.app, name="operators")
app.command()(console_cmds.console)
jobs_cmds.register(app)
app.command()(report_cmds.report)
app.command()(customer_cmds.customer)
app.command()(inbox_cmds.inbox)


@app.callback()
def _root() -> None:
    configure_logging()


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="uvicorn worker processes.")] = 1,
) -> None:
    """Run the webhook intake (POST /webhooks/stripe, /healthz, /readyz, /metrics)."""
    from worker.intake import serve as run_intake

    settings = app_state.settings
    if not settings.webhook_secrets:
        fail("STRIPE_WEBHOOK_SECRET is not set: the intake cannot verify any webhook")
    if settings.broker_url is None and workers == 1:
        # Embedded mode: no Celery beat, so this process runs the periodic jobs itself.
        from worker.celery_app import app as celery_app
        from worker.queue import start_in_process_beat

        start_in_process_beat(celery_app)
    # worker.intake.serve binds the socket itself: uvicorn's own multi-worker mode leaves
    # Nagle on and adds ~40 ms to every answer; it also pools metrics across workers.
    run_intake(host=host, port=port, workers=workers, log_level="warning")


@db_app.command()
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations (creates the schema on an empty database; no-op when up to date)."""
    from worker.db import current_revision
    from worker.db import upgrade as do_upgrade

    url = app_state.settings.database_url
    before = current_revision(app_state.engine)
    try:
        do_upgrade(url, revision)
    except DBAPIError as exc:
        fail(f"migration failed: {database_problem(exc)}", EXIT_ATTENTION)
    except Exception as exc:
        fail(f"migration failed: {type(exc).__name__}: {redact(str(exc))}", EXIT_ATTENTION)
    after = current_revision(app_state.engine)
    if before == after:
        say(f"database already at revision {after}; nothing to do")
    else:
        say(f"database upgraded: {before or 'empty'} -> {after}")


@db_app.command()
def current(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the schema revision the database is at."""
    from worker.db import current_revision

    rev = current_revision(app_state.engine)
    if as_json:
        print_json({"revision": rev})
    else:
        say(rev or "empty (run `recon db upgrade`)")


def main() -> None:
    app()
