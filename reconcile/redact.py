"""Secret redaction: the one function every path that stores, logs or shows text goes through.

Logs, inbox errors, Stripe error messages and ticket-sink errors all quote text that may
carry a credential: an exception that echoes a URL with its password, Stripe's 401 body that
quotes the masked key (``sk_test_****1234``), a webhook secret pasted into the wrong place.
One pattern, so that a credential shape learnt for one path is learnt for all of them.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MASK", "describe", "redact"]

MASK: Final = "***"

_SECRET_TEXT: Final = re.compile(
    # Stripe secret, restricted and publishable keys, in full or in the masked form Stripe
    # quotes back in errors (``sk_test_****1234``).
    r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9*]+"
    # Webhook signing secrets.
    r"|\bwhsec_[A-Za-z0-9+/=]+"
    # user:password@ in URLs (database, broker, Redis, a sink URL with credentials).
    r"|(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"
)


def redact(text: str) -> str:
    """``text`` with every credential-shaped substring replaced by ``***``."""
    return _SECRET_TEXT.sub(MASK, text)


_DESCRIBE_MAX: Final = 300


def describe(exc: BaseException) -> str:
    """An error as it may be kept and shown: its class and the first line of its message,
    redacted and short.  Never a whole SQL statement with its bound parameters (which
    SQLAlchemy appends to its messages, payloads included): a driver error wrapped by
    SQLAlchemy is named by both classes and the driver's own first line."""
    cause = getattr(exc, "orig", None)
    shown = cause if isinstance(cause, BaseException) else exc
    lines = str(shown).strip().splitlines()
    message = lines[0] if lines else ""
    message = message.split("[SQL:", 1)[0].strip()
    names = type(exc).__name__
    if shown is not exc:
        names += f" ({type(shown).__name__})"
    text = redact(f"{names}: {message}" if message else names)
    return text if len(text) <= _DESCRIBE_MAX else text[: _DESCRIBE_MAX - 3] + "..."
