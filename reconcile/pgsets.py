"""Many rows in one PostgreSQL statement: the rows travel as one JSON document
(``json_to_recordset``) that the server turns back into typed columns.

Binding one array per column makes psycopg escape every element in Python, which cost more
than the SQLAlchemy executemany it replaced; orjson writes the whole batch in C.  Values are
checked as the column types would: a timestamp must be timezone-aware (as ``UtcDateTime``
demands), since an offset-less one would be read in the session's time zone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

__all__ = ["recordset", "rows_json"]


def recordset(columns: Sequence[tuple[str, str]], param: str = "rows") -> str:
    """The FROM item that reads the rows of ``rows_json`` back as columns named ``u.<name>``."""
    cols = ", ".join(f"{name} {pgtype}" for name, pgtype in columns)
    return f"json_to_recordset(%({param})s::json) AS u({cols})"


def rows_json(columns: Mapping[str, Sequence[Any]]) -> str:
    """One JSON array of row objects from equal-length columns."""
    names = list(columns)
    for name, values in columns.items():
        for v in values:
            if isinstance(v, datetime) and v.tzinfo is None:
                raise ValueError(f"naive datetime in {name}: pass an aware (UTC) time")
    rows = [dict(zip(names, r, strict=True)) for r in zip(*columns.values(), strict=True)]
    return orjson.dumps(rows).decode()
