"""Rows sent to PostgreSQL as one JSON document keep their values, and refuse a timestamp
without a time zone as the timestamp columns do."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from ledger.pgsets import recordset, rows_json

SPEC = [("id", "int"), ("name", "text"), ("at", "timestamptz")]


def test_rows_become_one_json_array_each_with_every_value_kept() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    doc = rows_json(SPEC, {"id": [1, 2], "name": ['é "x"', None], "at": [when, None]})
    assert json.loads(doc) == [
        [1, 'é "x"', "2026-01-02T03:04:05.678901+00:00"],
        [2, None, None],
    ]


def test_a_timestamp_without_a_time_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        rows_json([("at", "timestamptz")], {"at": [datetime(2026, 1, 1)]})  # noqa: DTZ001


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        rows_json([("a", "int"), ("b", "int")], {"a": [1, 2], "b": [1]})


def test_the_recordset_names_each_column_with_its_type() -> None:
    assert recordset([("id", "int"), ("at", "timestamptz")]) == (
        "(SELECT (e->>0)::int AS id, (e->>1)::timestamptz AS at"
        " FROM jsonb_array_elements(%(rows)s::jsonb) AS e) AS u"
    )


def test_columns_not_in_the_order_of_the_recordset_are_refused() -> None:
    with pytest.raises(ValueError, match="not those"):
        rows_json([("a", "int"), ("b", "int")], {"b": [1], "a": [2]})
