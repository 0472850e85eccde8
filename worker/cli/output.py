"""How the CLI talks to people: Rich tables on a terminal, JSON on request, one-line errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)

EXIT_OK = 0
EXIT_ATTENTION = 1  # done, but discrepancies or errors remain
EXIT_USAGE = 2  # bad usage or bad input


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return str(value)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=_default, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    # Text, not markup: a message quoting Blnk or Stripe ("... [transaction has already
    # been voided]") is data, printed as it is, control characters removed.
    err_console.print(
        Text.assemble(("error:", "bold red"), " ", Text(message)), highlight=False, soft_wrap=True
    )
    raise typer.Exit(code)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title, show_lines=False, header_style="bold")
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        # Text, not str: a value holding "[bold]" is data and is printed as typed.
        t.add_row(*(Text("" if v is None else str(v)) for v in row))
    console.print(t)


def kv(title: str, pairs: Sequence[tuple[str, Any]]) -> None:
    t = Table(title=title, show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in pairs:
        t.add_row(Text(k), Text("" if v is None else str(v)))
    console.print(t)
