from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import InvalidAmount, InvalidInput, LedgerError, UnknownCurrency
from ledger.money import ISO_CURRENCIES, Money, exponent, normalize_currency


def test_formats_two_decimal_currencies_with_cents():
    assert Money(123456, "usd").format() == "1,234.56 USD"


def test_formats_zero_decimal_currencies_without_a_decimal_point():
    assert Money(500, "JPY").format() == "500 JPY"
    assert Money(1500000, "krw").format() == "1,500,000 KRW"


def test_formats_three_decimal_currencies_with_three_places():
    assert Money(1234, "KWD").format() == "1.234 KWD"


def test_formats_negative_amounts_with_a_leading_sign():
    assert Money(-5, "EUR").format() == "-0.05 EUR"


def test_normalises_currency_codes_to_upper_case():
    assert Money(1, " eur ").currency == "EUR"


@pytest.mark.parametrize("code", ["USDD", "XYZ", "", "us", "€"])
def test_refuses_unknown_currency_codes(code):
    with pytest.raises(UnknownCurrency):
        Money(1, code)


@pytest.mark.parametrize("bad", [1.5, "100", True, None])
def test_refuses_amounts_that_are_not_integers(bad):
    with pytest.raises(InvalidAmount):
        Money(bad, "USD")  # type: ignore[arg-type]


def test_parses_major_units_exactly():
    assert Money.parse("12.34", "USD") == Money(1234, "USD")
    assert Money.parse("500", "JPY") == Money(500, "JPY")
    assert Money.parse("0.1", "USD").amount == 10


def test_refuses_more_decimals_than_the_currency_has():
    with pytest.raises(InvalidAmount):
        Money.parse("1.5", "JPY")
    with pytest.raises(InvalidAmount):
        Money.parse("1.005", "USD")


@pytest.mark.parametrize("text", ["abc", "NaN", "Infinity", ""])
def test_refuses_text_that_is_not_a_finite_amount(text):
    with pytest.raises(InvalidAmount):
        Money.parse(text, "USD")


def test_refuses_to_add_different_currencies():
    with pytest.raises(InvalidAmount):
        Money(1, "USD") + Money(1, "EUR")


def test_adds_and_subtracts_in_minor_units():
    assert Money(150, "USD") + Money(50, "USD") - Money(25, "USD") == Money(175, "USD")


def test_every_error_is_a_ledger_error_and_bad_input_is_invalid_input():
    assert issubclass(UnknownCurrency, InvalidInput)
    assert issubclass(InvalidAmount, InvalidInput)
    assert issubclass(InvalidInput, LedgerError)


def test_exponents_follow_stripe_zero_decimal_list():
    assert [exponent(c) for c in ("JPY", "KRW", "VND", "USD", "BHD")] == [0, 0, 0, 2, 3]
    assert normalize_currency("jpy") == "JPY"


@given(st.integers(min_value=-(10**15), max_value=10**15), st.sampled_from(sorted(ISO_CURRENCIES)))
def test_format_then_parse_round_trips(amount, currency):
    text = Money(amount, currency).format().rsplit(" ", 1)[0].replace(",", "")
    assert Money.parse(text, currency) == Money(amount, currency)
