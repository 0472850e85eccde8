"""How json/jsonb columns are read back from PostgreSQL (worker/db.py ``_json_loads``)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.db import _json_loads


def test_an_integer_beyond_64_bits_reads_back_exactly_not_as_a_float() -> None:
    value = _json_loads(b'{"amount": 123456789012345678901234567890}')
    assert value == {"amount": 123456789012345678901234567890}
    assert isinstance(value["amount"], int)


def test_text_and_memoryview_read_the_same_as_bytes() -> None:
    raw = '{"name": "Zoë", "n": [1, 2.5, null, true]}'
    expected = {"name": "Zoë", "n": [1, 2.5, None, True]}
    assert _json_loads(raw) == expected
    assert _json_loads(memoryview(raw.encode())) == expected


def test_a_document_that_is_not_json_is_an_error_not_a_guess() -> None:
    with pytest.raises(json.JSONDecodeError):
        _json_loads(b"{not json")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_json)
def test_every_document_reads_back_as_the_standard_parser_reads_it(value: object) -> None:
    raw = json.dumps(value).encode()
    assert _json_loads(raw) == json.loads(raw)
