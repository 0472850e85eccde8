"""Text from Stripe, the ledger or a person, made safe to show on a terminal or in a log.

Control characters are shown as escapes (``\\x1b``, ``\\n``, ``\\u202e``), never executed:
an ANSI or OSC sequence in a note cannot clear the operator's screen or plant a link, a CR
or newline cannot forge another line, a bidirectional override cannot reorder what is read.
The data itself is stored as it came; only what is shown is escaped.
"""

from __future__ import annotations

import re
from typing import Any

# C0 controls (but tab), DEL, C1 controls, and the Unicode line/paragraph separators and
# bidirectional overrides that can reorder or hide what a terminal shows.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(value: Any) -> str:
    """``value`` as text with control characters shown (``\\x1b``), never executed."""
    text = "" if value is None else str(value)
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
