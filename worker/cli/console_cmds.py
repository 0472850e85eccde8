"""`recon console`: serve the CX console (a separate app and port from the webhook intake)."""

from __future__ import annotations

from typing import Annotated

import typer

from worker.cli.context import app_state
from worker.cli.output import console as out
from worker.cli.output import err_console, fail


def console(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind.")] = 8001,
) -> None:
    """Run the CX console (ticket queue, tickets and their fixes, search) for operators.

    Needs RECON_CONSOLE_SECRET (32+ random characters) and operators (`recon operators add`).
    Put it behind TLS outside localhost: its cookies are Secure there.
    """
    from worker.console import ConsoleConfigError, check_database, create_app, serve

    settings = app_state.settings
    try:
        app = create_app(settings)
        active = check_database(app)
    except ConsoleConfigError as exc:
        fail(str(exc))
    if not active:
        err_console.print(
            "warning: no active operators, so nobody can sign in; add one with "
            "`recon operators add NAME EMAIL --role operator --password-stdin`",
            markup=False,
            highlight=False,
        )
    header = settings.console_auth_header
    how = f"a password, or the {header} header from the trusted proxy" if header else "a password"
    out.print(
        f"CX console on http://{host}:{port}/ (sign in with {how}; Ctrl-C stops it)",
        markup=False,
        highlight=False,
    )
    serve(app, host=host, port=port)
