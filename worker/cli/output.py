"""How the CLI talks to people: Rich tables on a terminal, JSON on request, one-line errors.

Every string that came from Stripe, the ledger or a person is data: both consoles have Rich
markup off (``[red]`` in a customer's name prints as typed) and :func:`safe` shows control
characters as escapes instead of sending them to the terminal.  Our own emphasis goes
through :func:`styled`, never through markup.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ledger.money import Money
from worker.printable import printable

if TYPE_CHECKING:
    from reconcile.usecases.fixes import Resolution

console = Console(markup=False, highlight=False, emoji=False)
err_console = Console(stderr=True, markup=False, highlight=False, emoji=False)

EXIT_OK = 0
EXIT_ATTENTION = 1  # done, but discrepancies or errors remain
EXIT_USAGE = 2  # bad usage or bad input

# Row ids are PostgreSQL bigints: a larger number is bad input, not a database outage.
MAX_ID = 2**63 - 1


def safe(value: Any) -> str:
    """``value`` as text with control characters shown (``\\x1b``), never executed."""
    return printable(value)


def check_text(value: str, what: str, max_len: int) -> str:
    """``value`` when the database can store it: no NUL (PostgreSQL text cannot hold one)
    and at most ``max_len`` characters; else a one-line error, exit 2.  Other control
    characters are data: stored as typed, shown escaped (:func:`safe`)."""
    if "\x00" in value:
        fail(f"{what} contains a NUL character, which cannot be stored")
    if len(value) > max_len:
        fail(f"{what} is longer than {max_len:,} characters")
    return value


def styled(text: str, style: str) -> Text:
    return Text(safe(text), style=style)


def say(*parts: str | Text, err: bool = False) -> None:
    """Print a line made of literal text and styled pieces."""
    line = Text()
    for part in parts:
        line.append(part if isinstance(part, Text) else Text(safe(part)))
    (err_console if err else console).print(line, soft_wrap=True)


def money(amount: int | None, currency: str | None) -> str:
    """``2,000.00 USD``; empty when unknown; the raw value when the currency is not ISO."""
    if amount is None or not currency:
        return ""
    try:
        return Money(int(amount), str(currency)).format()
    except (ValueError, TypeError):
        return f"{amount} {currency}"


def when(value: datetime | None) -> str:
    """One time format everywhere: ISO 8601 to the second, UTC."""
    return value.isoformat(timespec="seconds") if value else ""


def age(now: datetime, then: datetime | None) -> str:
    if then is None:
        return ""
    return short_age(now - then)


def short_age(delta: timedelta | None) -> str:
    """A duration to two units (``3h12m``, ``2d4h``, ``45s``): enough to read at a glance."""
    if delta is None:
        return ""
    secs = max(0, int(delta.total_seconds()))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, secs = divmod(secs, size)
        if n or (parts and len(parts) < 2):
            parts.append(f"{n}{unit}")
        if len(parts) == 2:
            break
    return "".join(p for p in parts if not p.startswith("0")) or "0s"


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return int(value.total_seconds())
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return str(value)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=_default, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """One line on stderr, then exit ``code`` (2: bad input, 1: done but not clean)."""
    first = safe(" ".join(message.split()))
    err_console.print(Text("error: ", style="bold red") + Text(first), soft_wrap=True)
    raise typer.Exit(code)


def table(
    title: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    ids: Collection[str] = (),
) -> None:
    """A table; the columns named in ``ids`` never wrap: other columns give way first."""
    materialised = [["" if v is None else safe(v) for v in row] for row in rows]
    t = Table(
        title=safe(title) if title else None,
        show_lines=False,
        header_style="bold",
        box=box.SIMPLE_HEAD,  # no vertical rules: their width goes to the cells
    )
    for i, col in enumerate(columns):
        if col in ids:
            widest = max([len(col), *(len(r[i]) for r in materialised)])
            t.add_column(col, no_wrap=True, min_width=widest, overflow="ignore")
        else:
            t.add_column(col, overflow="fold")
    for row in materialised:
        t.add_row(*(Text(v) for v in row))
    console.print(t)


def kv(title: str, pairs: Sequence[tuple[str, Any]]) -> None:
    t = Table(title=safe(title), show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for k, v in pairs:
        t.add_row(Text(safe(k)), Text("" if v is None else safe(v)))
    console.print(t)


# What each count of a run means (``recon runs``, ``recon runs show``, every job's summary).
COUNT_LEGEND: dict[str, str] = {
    "examined": "ledger entries or payments looked at",
    "commit": "holds committed (wallet credited)",
    "void": "holds voided (released)",
    "create": "missing records created",
    "wait": "left waiting (still in progress on Stripe)",
    "matched": "already agreeing with Stripe",
    "ticket": "needing a person (ticket opened or bumped)",
    "nothing": "nothing to do",
    "ticket_opened": "new tickets opened",
    "ticket_bumped": "open tickets seen again",
    "ticket_resolved": "tickets closed because the payment is reconciled",
    "incident": "incident tickets (the blast-radius guard stopped the run)",
    "errors": "payments or events that failed (see errors)",
    "events_listed": "events read from Stripe's Events API",
    "events_new": "events not in the inbox before",
    "events_processed": "events processed",
    "events_ignored": "events that name no PaymentIntent",
    "events_already": "events processed before",
    "events_failed": "events that failed (see recon inbox)",
    "events_missing": "events missing from the inbox",
    "payments_listed": "PaymentIntents listed on Stripe",
    "customer_updates": "customer.update messages queued",
}


def counts_table(title: str, counts: Mapping[str, int]) -> None:
    """Counts with what each one means, so nobody has to guess what ``nothing=3`` is."""
    table(
        title,
        ["count", "n", "meaning"],
        [(k, f"{v:,}", COUNT_LEGEND.get(k, "")) for k, v in sorted(counts.items())],
    )


def counts_line(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if v)


def print_resolution(res: Resolution, as_json: bool) -> None:
    """What a person's fix did (and what to tell the customer), or why it was refused: then
    exit 1, since the discrepancy remains."""
    if as_json:
        print_json(res.as_dict())
    elif res.done:
        say(res.message)
        if res.customer_message:
            say("tell the customer: ", res.customer_message)
    if not res.done:
        if not as_json:
            say(styled(res.message, "bold red"), err=True)
        raise typer.Exit(EXIT_ATTENTION)
