"""Many rows in one PostgreSQL statement: the rows travel as one JSON document
(``jsonb_array_elements``, a row an array) that the server turns back into typed columns.

jsonb, not json: the document is parsed once, and each ``->>`` is then a lookup.  On json
every ``->>`` parsed its row's text again, which made reading 500 audit rows of eleven
columns 17 ms of server time (EXPLAIN ANALYZE) against under 3 ms as jsonb.

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
    """The FROM item that reads the rows of ``rows_json`` (given these columns, in this
    order) back as typed columns named ``u.<name>``."""
    cols = ", ".join(f"(e->>{i})::{pgtype} AS {name}" for i, (name, pgtype) in enumerate(columns))
    return f"(SELECT {cols} FROM jsonb_array_elements(%({param})s::jsonb) AS e) AS u"


def rows_json(spec: Sequence[tuple[str, str]], columns: Mapping[str, Sequence[Any]]) -> str:
    """One JSON array of rows (each an array) from equal-length columns, which must be those
    of ``spec`` (the recordset's), in its order: a row is read back by position."""
    if list(columns) != [name for name, _ in spec]:
        raise ValueError(f"columns {list(columns)} are not those of the recordset {spec}")
    for name, pgtype in spec:
        if pgtype.startswith("timestamp"):
            for v in columns[name]:
                if isinstance(v, datetime) and v.tzinfo is None:
                    raise ValueError(f"naive datetime in {name}: pass an aware (UTC) time")
    return orjson.dumps(list(zip(*columns.values(), strict=True))).decode()
