"""`recon console`: serve the CX console (a separate app and port from the webhook intake)."""

from __future__ import annotations

from typing import Annotated

import typer

from worker.cli.context import app_state
from worker.cli.output import console as out
from worker.cli.output import fail


def console(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind.")] = 8001,
) -> None:
    """Run the CX console (ticket queue, tickets and their fixes, search) for operators.

    Needs RECON_CONSOLE_SECRET (32+ characters) and operators (`recon operators add`).
    """
    from worker.console import ConsoleConfigError, create_app, serve

    try:
        app = create_app(app_state.settings)
    except ConsoleConfigError as exc:
        fail(str(exc))
    out.print(f"CX console on http://{host}:{port}/ (Ctrl-C stops it)", markup=False)
    serve(app, host=host, port=port)
