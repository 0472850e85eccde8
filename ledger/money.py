"""Money as integer minor units plus an ISO 4217 currency code.

Floats never carry an amount: a float cannot hold 0.1 exactly, and one cent lost per
million top-ups is still a discrepancy CX has to explain.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from ledger.errors import InvalidAmount, UnknownCurrency

# Active ISO 4217 codes.  A typo such as "USDD" or "EUR " must be refused at the edge,
# before it creates a balance nobody can reconcile.
ISO_CURRENCIES = frozenset(
    [
        "AED",
        "AFN",
        "ALL",
        "AMD",
        "ANG",
        "AOA",
        "ARS",
        "AUD",
        "AWG",
        "AZN",
        "BAM",
        "BBD",
        "BDT",
        "BGN",
        "BHD",
        "BIF",
        "BMD",
        "BND",
        "BOB",
        "BRL",
        "BSD",
        "BTN",
        "BWP",
        "BYN",
        "BZD",
        "CAD",
        "CDF",
        "CHF",
        "CLP",
        "CNY",
        "COP",
        "CRC",
        "CUP",
        "CVE",
        "CZK",
        "DJF",
        "DKK",
        "DOP",
        "DZD",
        "EGP",
        "ERN",
        "ETB",
        "EUR",
        "FJD",
        "FKP",
        "GBP",
        "GEL",
        "GHS",
        "GIP",
        "GMD",
        "GNF",
        "GTQ",
        "GYD",
        "HKD",
        "HNL",
        "HTG",
        "HUF",
        "IDR",
        "ILS",
        "INR",
        "IQD",
        "IRR",
        "ISK",
        "JMD",
        "JOD",
        "JPY",
        "KES",
        "KGS",
        "KHR",
        "KMF",
        "KPW",
        "KRW",
        "KWD",
        "KYD",
        "KZT",
        "LAK",
        "LBP",
        "LKR",
        "LRD",
        "LSL",
        "LYD",
        "MAD",
        "MDL",
        "MGA",
        "MKD",
        "MMK",
        "MNT",
        "MOP",
        "MRU",
        "MUR",
        "MVR",
        "MWK",
        "MXN",
        "MYR",
        "MZN",
        "NAD",
        "NGN",
        "NIO",
        "NOK",
        "NPR",
        "NZD",
        "OMR",
        "PAB",
        "PEN",
        "PGK",
        "PHP",
        "PKR",
        "PLN",
        "PYG",
        "QAR",
        "RON",
        "RSD",
        "RUB",
        "RWF",
        "SAR",
        "SBD",
        "SCR",
        "SDG",
        "SEK",
        "SGD",
        "SHP",
        "SLE",
        "SOS",
        "SRD",
        "SSP",
        "STN",
        "SVC",
        "SYP",
        "SZL",
        "THB",
        "TJS",
        "TMT",
        "TND",
        "TOP",
        "TRY",
        "TTD",
        "TWD",
        "TZS",
        "UAH",
        "UGX",
        "USD",
        "UYU",
        "UZS",
        "VED",
        "VES",
        "VND",
        "VUV",
        "WST",
        "XAF",
        "XCD",
        "XCG",
        "XOF",
        "XPF",
        "YER",
        "ZAR",
        "ZMW",
        "ZWG",
        "ZWL",
    ]
)

# Stripe's zero-decimal currencies: an amount of 500 JPY is five hundred yen, not five.
ZERO_DECIMAL = frozenset(
    [
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    ]
)
THREE_DECIMAL = frozenset(["BHD", "JOD", "KWD", "OMR", "TND"])


def normalize_currency(code: str) -> str:
    """Upper-case ISO code, or UnknownCurrency.  Stripe sends lower case; ledgers upper."""
    if not isinstance(code, str):
        raise UnknownCurrency(repr(code))
    norm = code.strip().upper()
    # ASCII first: Python upper-cases "u\u017fd" (long s) to "USD", "\u0131nr" to "INR".
    if not code.isascii() or norm not in ISO_CURRENCIES:
        raise UnknownCurrency(code)
    return norm


def exponent(currency: str) -> int:
    cur = normalize_currency(currency)
    if cur in ZERO_DECIMAL:
        return 0
    if cur in THREE_DECIMAL:
        return 3
    return 2


@dataclass(frozen=True, order=True)
class Money:
    amount: int
    currency: str

    def __post_init__(self) -> None:
        # bool is an int subclass; True cents is a bug, not an amount.
        if not isinstance(self.amount, int) or isinstance(self.amount, bool):
            raise InvalidAmount(f"amount must be an integer number of minor units: {self.amount!r}")
        object.__setattr__(self, "currency", normalize_currency(self.currency))

    @classmethod
    def parse(cls, value: str, currency: str) -> Money:
        """Parse a major-unit decimal string ("12.34") exactly, refusing sub-minor digits."""
        exp = exponent(currency)
        try:
            dec = Decimal(value.strip())
        except (InvalidOperation, AttributeError) as exc:
            raise InvalidAmount(f"not a decimal amount: {value!r}") from exc
        if not dec.is_finite():
            raise InvalidAmount(f"not a finite amount: {value!r}")
        minor = dec.scaleb(exp)
        if minor != minor.to_integral_value():
            raise InvalidAmount(
                f"{value} has more decimals than {normalize_currency(currency)} allows ({exp})"
            )
        return cls(int(minor), currency)

    def format(self) -> str:
        exp = exponent(self.currency)
        sign = "-" if self.amount < 0 else ""
        whole, frac = divmod(abs(self.amount), 10**exp) if exp else (abs(self.amount), 0)
        text = f"{whole:,}"
        if exp:
            text += f".{frac:0{exp}d}"
        return f"{sign}{text} {self.currency}"

    def __str__(self) -> str:
        return self.format()

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise InvalidAmount(f"cannot combine {self.currency} and {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount - other.amount, self.currency)
