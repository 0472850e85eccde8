"""Rows sent to PostgreSQL as one JSON document keep their values, and refuse a timestamp
without a time zone as the timestamp columns do."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from reconcile.pgsets import recordset, rows_json


def test_rows_become_one_json_object_each_with_every_value_kept() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    doc = rows_json({"id": [1, 2], "name": ['é "x"', None], "at": [when, None]})
    assert json.loads(doc) == [
        {"id": 1, "name": 'é "x"', "at": "2026-01-02T03:04:05.678901+00:00"},
        {"id": 2, "name": None, "at": None},
    ]


def test_a_timestamp_without_a_time_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        rows_json({"at": [datetime(2026, 1, 1)]})  # noqa: DTZ001


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        rows_json({"a": [1, 2], "b": [1]})


def test_the_recordset_names_each_column_with_its_type() -> None:
    assert recordset([("id", "int"), ("at", "timestamptz")]) == (
        "json_to_recordset(%(rows)s::json) AS u(id int, at timestamptz)"
    )
