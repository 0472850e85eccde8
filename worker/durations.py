"""Durations as people write them: ``0s``, ``90s``, ``10m``, ``2h``, ``3d`` (and ``1h30m``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_PART = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# Longer than any window this service reasons about (Stripe keeps events 30 days, the
# oldest payments are years old), short enough that ``now - duration`` stays a date.
MAX_DURATION = timedelta(days=100 * 366)


class BadDuration(ValueError):
    pass


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    if isinstance(text, timedelta):
        return text
    if isinstance(text, int | float) and not isinstance(text, bool):
        if not abs(text) <= MAX_DURATION.total_seconds():  # also refuses NaN
            raise BadDuration(f"{text!r} seconds is out of range")
        return timedelta(seconds=text)
    raw = str(text).strip().lower()
    if not raw or not re.fullmatch(r"(\d+[smhdw])+", raw):
        raise BadDuration(f"not a duration: {text!r} (write it like 0s, 90s, 10m, 2h, 3d or 1h30m)")
    seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(raw))
    if seconds > MAX_DURATION.total_seconds():
        raise BadDuration(f"{raw[:40]} is longer than {MAX_DURATION.days:,} days")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    secs = int(delta.total_seconds())
    if secs == 0:
        return "0s"
    sign = "-" if secs < 0 else ""
    secs = abs(secs)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, secs = divmod(secs, size)
        if n:
            out.append(f"{n}{unit}")
    return sign + "".join(out)


def parse_when(text: str, now: datetime) -> datetime:
    """An ISO 8601 time, or a duration meaning that long before ``now``."""
    raw = text.strip()
    try:
        return now - parse_duration(raw)
    except BadDuration:
        pass
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadDuration(
            f"not a time: {text!r} (ISO 8601 like 2026-11-22T03:00:00Z, or a duration like 2h)"
        ) from exc
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError as exc:  # 9999-12-31T23:59-14:00 has no UTC date
        raise BadDuration(f"not a time: {text!r} (out of range)") from exc
