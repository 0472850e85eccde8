"""`recon operators add|disable|password|list` and `recon console`'s start-up checks, on a
migrated database (SQLite and PostgreSQL): what an admin types, and one-line errors with
exit 2 for bad input."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

import worker.db
import worker.settings
import worker.wiring
from worker import operators as ops
from worker.cli import app
from worker.cli.context import app_state

pytestmark = pytest.mark.integration

Invoke = Callable[..., Result]
PASSWORD = "correct horse battery staple"
PW_STDIN = "--password-stdin"


def _fresh_state() -> None:
    app_state.__dict__.pop("settings", None)
    app_state.__dict__.pop("engine", None)
    worker.settings.get_settings.cache_clear()
    worker.wiring.reset()


@pytest.fixture(params=["sqlite", "postgresql"])
def cli(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[tuple[str, Invoke]]:
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_schema")
    else:
        url = f"sqlite:///{tmp_path / 'ops.db'}"
    worker.db.upgrade(url)

    def invoke(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Result:
        _fresh_state()
        return CliRunner().invoke(
            app, list(args), input=stdin, env={"RECON_DATABASE_URL": url, **(env or {})}
        )

    yield url, invoke
    _fresh_state()
    worker.db.engine_for(url).dispose()
    worker.db.engine_for.cache_clear()


def _one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_an_admin_adds_lists_and_disables_operators(cli):
    url, invoke = cli
    added = invoke("operators", "add", "alice", "Alice@Example.com", "--role", "operator")
    assert added.exit_code == 0, added.output
    assert "proxy only" in added.stdout or "sign-in proxy only" in added.stdout
    with_pw = invoke(
        "operators", "add", "bob", "bob@example.com", "--role", "viewer", "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert with_pw.exit_code == 0, with_pw.output

    listed = json.loads(invoke("operators", "list", "--json").stdout)
    assert [(o["name"], o["email"], o["role"], o["password"], o["disabled"]) for o in listed] == [
        ("alice", "alice@example.com", "operator", False, False),
        ("bob", "bob@example.com", "viewer", True, False),
    ]
    assert "password_hash" not in json.dumps(listed) and "argon2" not in json.dumps(listed)
    table = invoke("operators", "list")
    assert table.exit_code == 0 and "alice" in table.stdout and "proxy only" in table.stdout

    engine = worker.db.engine_for(url)
    with engine.connect() as conn:
        stored = conn.execute(
            select(ops.operators.c.password_hash).where(ops.operators.c.name == "bob")
        ).scalar_one()
        assert stored.startswith("$argon2id$") and PASSWORD not in stored
        assert ops.authenticate(conn, "bob", PASSWORD) is not None

    assert invoke("operators", "disable", "bob").exit_code == 0
    again = invoke("operators", "disable", "bob")
    assert again.exit_code == 0 and "already disabled" in again.stdout
    with engine.connect() as conn:
        assert ops.authenticate(conn, "bob", PASSWORD) is None
    assert json.loads(invoke("operators", "list", "--json").stdout)[1]["disabled"] is True


def test_a_new_password_replaces_the_old_one_and_ends_sessions(cli):
    url, invoke = cli
    assert (
        invoke("operators", "add", "carol", "carol@example.com", "--role", "admin").exit_code == 0
    )
    done = invoke("operators", "password", "carol", "--password-stdin", stdin=PASSWORD + "\n")
    assert done.exit_code == 0, done.output
    with worker.db.engine_for(url).connect() as conn:
        assert ops.authenticate(conn, "carol", PASSWORD) is not None
    _one_line_error(invoke("operators", "password", "carol"))
    _one_line_error(invoke("operators", "password", "nobody", "--password-stdin", stdin=PASSWORD))


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (("add", "", "a@example.com", "--role", "viewer"), None, "blank"),
        (("add", "  alice", "a@example.com", "--role", "viewer"), None, "spaces"),
        (("add", "a" * 65, "a@example.com", "--role", "viewer"), None, "longer than 64"),
        (("add", "al\x1bice", "a@example.com", "--role", "viewer"), None, "control"),
        (("add", "al@ice", "a@example.com", "--role", "viewer"), None, "'@'"),
        (("add", "alice", "not-an-email", "--role", "viewer"), None, "not an email"),
        (("add", "alice", "a@b", "--role", "viewer"), None, "not an email"),
        (("add", "alice", "a@example.com", "--role", "root"), None, "viewer, operator or admin"),
        (("add", "alice", "a@example.com", "--role", "viewer", PW_STDIN), "short\n", "at least 12"),
        (("add", "alice", "a@example.com", "--role", "viewer", PW_STDIN), "", "no password"),
        (("disable", "nobody"), None, "no operator named 'nobody'"),
    ],
)  # fmt: skip
def test_bad_operator_input_is_one_line_and_exit_2(cli, args, stdin, says):
    _, invoke = cli
    line = _one_line_error(invoke("operators", *args, stdin=stdin))
    assert says in line
    assert json.loads(invoke("operators", "list", "--json").stdout) == []


def test_a_duplicate_name_or_email_is_refused_whatever_its_case(cli):
    _, invoke = cli
    assert (
        invoke("operators", "add", "alice", "alice@example.com", "--role", "viewer").exit_code == 0
    )
    assert "already exists" in _one_line_error(
        invoke("operators", "add", "ALICE", "other@example.com", "--role", "viewer")
    )
    assert "already exists" in _one_line_error(
        invoke("operators", "add", "alice2", "ALICE@example.com", "--role", "viewer")
    )
    assert len(json.loads(invoke("operators", "list", "--json").stdout)) == 1


def test_the_console_refuses_to_start_without_a_secret(cli):
    _, invoke = cli
    result = invoke("console", "--port", "1")
    assert "RECON_CONSOLE_SECRET" in _one_line_error(result)


def test_the_console_refuses_to_start_on_a_database_without_its_tables(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    _fresh_state()
    result = CliRunner().invoke(
        app,
        ["console", "--port", "1"],
        env={"RECON_DATABASE_URL": url, "RECON_CONSOLE_SECRET": "s" * 40},
    )
    _fresh_state()
    worker.db.engine_for.cache_clear()
    assert "recon db upgrade" in _one_line_error(result)
