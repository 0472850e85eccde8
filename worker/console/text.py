"""What the console does to every value before it reaches a page (after which Jinja escapes
it): secrets and card numbers hidden, control and bidirectional-override characters made
visible, times and durations in one format.  Applied to every ``{{ ... }}`` through the
template environment's ``finalize``, so no template can forget it."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

from markupsafe import Markup

from reconcile.redact import redact
from worker.durations import format_duration

# 13-19 digits, optionally grouped by spaces or dashes, as card numbers are written.
_PAN = re.compile(r"(?<![\w])(?:\d[ -]?){12,18}\d(?![\w])")
CARD_HIDDEN = "[card number hidden]"


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _mask_pan(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return CARD_HIDDEN if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)


def _visible(ch: str) -> str:
    if ch in "\n\t":
        return ch
    cat = unicodedata.category(ch)
    # Cc: C0/C1 controls (terminal escapes); Cf: format characters such as U+202E, which
    # reverse how the rest of a line reads; Zl/Zp: line and paragraph separators.
    if cat in ("Cc", "Cf", "Zl", "Zp"):
        return f"\\u{ord(ch):04x}"
    return ch


def clean(text: str) -> str:
    text = redact(text)
    text = _PAN.sub(_mask_pan, text)
    return "".join(_visible(c) for c in text)


def when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def duration(value: timedelta) -> str:
    """Coarse enough to read at a glance: 3d4h, 2h5m, 7m, 30s."""
    secs = max(int(value.total_seconds()), 0)
    if secs >= 86400:
        secs -= secs % 3600
    elif secs >= 60:
        secs -= secs % 60
    return format_duration(timedelta(seconds=secs))


def finalize(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, Markup):
        return value
    if isinstance(value, datetime):
        return when(value)
    if isinstance(value, timedelta):
        return duration(value)
    if isinstance(value, bool | int | float):
        return value
    return clean(str(value))


def safe_url(value: Any) -> str | None:
    """The URL when it is plain http(s), else None: a ``javascript:`` link from data would
    run in the operator's session."""
    if not isinstance(value, str):
        return None
    url = value.strip()
    if not url.lower().startswith(("https://", "http://")) or any(c.isspace() for c in url):
        return None
    return url
