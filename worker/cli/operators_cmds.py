"""`recon operators add|disable|password|list`: who may sign in to the CX console."""

from __future__ import annotations

import getpass
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer

from worker import operators as ops
from worker.cli.context import app_state
from worker.cli.output import console, fail, print_json, table

app = typer.Typer(
    help="Operators of the CX console (`recon console`): viewers look, operators and admins "
    "also fix tickets.",
    no_args_is_help=True,
)

PasswordStdinOpt = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read a password for signing in with one: the first line of standard input, "
        "or asked twice without echo on a terminal. "
        f"At least {ops.PASSWORD_MIN} characters. Without it the operator can only sign in "
        "through the authenticating proxy (RECON_CONSOLE_AUTH_HEADER).",
    ),
]


def _read_password() -> str:
    if sys.stdin.isatty():
        # Typed by a person: no echo, and typed twice so a typo does not lock them out.
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            fail("the two passwords differ; nothing was changed")
        if not first:
            fail("no password given")
        return first
    line = sys.stdin.readline()
    password = line[:-1] if line.endswith("\n") else line
    password = password.removesuffix("\r")
    if not password:
        fail("--password-stdin: standard input held no password")
    return password


@app.command()
def add(
    name: Annotated[str, typer.Argument(help=f"Unique name, 1-{ops.NAME_MAX} characters.")],
    email: Annotated[str, typer.Argument(help="Email (what the sign-in proxy sends).")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")],
    password_stdin: PasswordStdinOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the operator as JSON.")] = False,
) -> None:
    """Add an operator."""
    try:
        # Checked before the password is read, so a typo is reported without a prompt.
        ops.check_name(name), ops.check_email(email), ops.check_role(role)
        password = _read_password() if password_stdin else None
        with app_state.begin() as conn:
            op = ops.add_operator(conn, name, email, role, now=datetime.now(UTC), password=password)
    except ops.OperatorError as exc:
        fail(str(exc))
    if as_json:
        print_json(op.as_dict())
        return
    how = "a password" if op.has_password else "the sign-in proxy only"
    console.print(
        f"added {op.role.value} {op.name} <{op.email}>; signs in with {how}", markup=False
    )


@app.command()
def disable(name: Annotated[str, typer.Argument(help="Operator name.")]) -> None:
    """Disable an operator: signed out at once, no further sign-in."""
    try:
        with app_state.begin() as conn:
            op, changed = ops.disable_operator(conn, name, now=datetime.now(UTC))
    except ops.OperatorError as exc:
        fail(str(exc))
    state = "disabled and signed out" if changed else "was already disabled"
    console.print(f"{op.name} {state}", markup=False)


@app.command()
def password(
    name: Annotated[str, typer.Argument(help="Operator name.")],
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Set an operator's password (from standard input); ends their sessions."""
    if not password_stdin:
        fail("pass --password-stdin and the password on standard input")
    try:
        new = _read_password()
        with app_state.begin() as conn:
            op = ops.set_password(conn, name, new)
    except ops.OperatorError as exc:
        fail(str(exc))
    console.print(f"password set for {op.name}; their sessions were ended", markup=False)


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List operators."""
    with app_state.begin() as conn:
        found = ops.list_operators(conn)
    if as_json:
        print_json([o.as_dict() for o in found])
        return
    table(
        f"{len(found)} operator(s)",
        ["name", "email", "role", "state", "sign-in", "created"],
        [
            (
                o.name,
                o.email,
                o.role.value,
                "disabled" if o.disabled else "active",
                "password or proxy" if o.has_password else "proxy only",
                o.created_at.isoformat(timespec="seconds"),
            )
            for o in found
        ],
    )
