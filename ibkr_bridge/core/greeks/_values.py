"""Per-contract numbers made safe: Greek sentinels, Client Portal number text, multipliers."""

from __future__ import annotations

import math
import numbers
import re
import uuid
from decimal import Decimal, localcontext
from typing import Any, Final

import attrs

PORTFOLIO: Final = "PORTFOLIO"

OPTION_SEC_TYPES: Final = frozenset({"OPT", "FOP"})
STOCK_SEC_TYPES: Final = frozenset({"STK", "ETF"})
FUTURE_SEC_TYPES: Final = frozenset({"FUT"})
#: Security types :func:`aggregate` counts; legs of any other type (CASH, BOND, IND, ...)
#: carry no Greek the bridge can express and are skipped.
SEC_TYPES: Final = OPTION_SEC_TYPES | STOCK_SEC_TYPES | FUTURE_SEC_TYPES
#: Legs whose underlying is a stock, so a by-symbol price map may price them. A future's
#: or futures option's underlying is one future (ESZ6, not "ES"; and Eversource's stock is
#: "ES" too): its price is the leg's own, never one looked up by symbol.
BY_SYMBOL_SEC_TYPES: Final = frozenset({"OPT"}) | STOCK_SEC_TYPES

# IB's "unset double" is sys.float_info.max; nothing real is anywhere near 1e300.
_UNSET_FLOOR: Final = 1e300
# IB's "not computed" sentinel for delta, gamma, vega and theta is exactly -2.
_GREEK_SENTINEL: Final = -2.0

_KEY_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "ibkr-bridge/portfolio_greeks")


def _finite_number(value: object) -> float | None:
    """``value`` as a float if it is a real, finite number below IB's unset marker."""
    if type(value) is float:
        # The common case, checked first: the ABC isinstance below costs ~1 us a call,
        # which is 10 ms a tick for a 1,000-leg book.
        return value if math.isfinite(value) and abs(value) < _UNSET_FLOOR else None
    # bool is an int subclass; True as a Greek is a bug upstream, not the number 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number) or abs(number) >= _UNSET_FLOOR:
        return None
    return number


def clean_greek(value: object) -> float | None:
    """A per-share Greek as IB sent it, or ``None`` when it is not data.

    ``None``, bools, non-numbers, NaN, ±inf, IB's unset double (1.797e308, anything with
    magnitude >= 1e300) and IB's sentinel -2 are all missing. For ib_async's fields (SOCKET
    mode) only: Client Portal strings have no -2 sentinel (see :func:`clean_portal_greek`).
    """
    number = _finite_number(value)
    # IB marks "not computed" with exactly -2 for delta, gamma, vega and theta (ib_async
    # 2.1.0 passes vega and theta through unchanged). A real delta lies in [-1, 1] and a
    # real gamma/vega is >= 0, so only theta could genuinely equal -2.0 to the last bit;
    # a coincidence that rare costs one tick of NULL, while summing the sentinel would
    # write a wrong number.
    if number is None or number == _GREEK_SENTINEL:
        return None
    return number


def clean_portal_greek(value: object) -> float | None:
    """A per-share Greek parsed from a Client Portal string, or ``None`` when it is not data.

    Only non-numbers and non-finite values are missing: the Client Portal API marks a Greek
    it has not computed by leaving the field empty or out, so ``-2.0`` here is a real theta.
    """
    return _finite_number(value)


def clean_price(value: object) -> float | None:
    """A price, or ``None`` for IB's sentinels (-1, 0, unset double) and garbage."""
    number = _finite_number(value)
    # IB reports an unknown price as -1 (or 0 before the first tick); no traded
    # underlying has a price <= 0.
    if number is None or number <= 0:
        return None
    return number


def option_right(text: object) -> str | None:
    """``"C"`` or ``"P"`` from IB's spelling of a right (``C``, ``CALL``, ``P``, ``PUT``)."""
    right = str(text or "").strip().upper()[:1]
    return right if right in ("C", "P") else None


def mid_or_last(bid: object, ask: object, last: object) -> float | None:
    """An option's bid/ask midpoint, else its last trade (to imply a volatility from).

    Each price is cleaned as :func:`clean_price` cleans it (sentinels and garbage: None).
    """
    b, a = clean_price(bid), clean_price(ask)
    if b is not None and a is not None and a >= b:
        return (b + a) / 2
    return clean_price(last)


_PORTAL_NUMBER: Final = re.compile(
    r"""
    [CH]?                       # C = previous close, H = halted: a marker, not part of the value
    (?P<number>
        [+-]?
        (?:\d{1,3}(?:,\d{3})+|\d+)?    # strictly grouped thousands ("1,5" is not 15)
        (?:\.\d*)?
        (?:[eE][+-]?\d+)?
    )
    (?P<suffix>[KMB]?)
    """,
    re.VERBOSE,
)
_SUFFIX_SCALE: Final = {"": 1, "K": 1_000, "M": 1_000_000, "B": 1_000_000_000}


def parse_portal_number(text: str | float | int | None) -> float | None:
    """A Client Portal snapshot value as a float, or ``None``; never raises.

    Accepts ``"2.61"``, ``"-0.282"``, ``"C2.61"`` / ``"H2.61"`` (prefix stripped),
    ``"1,300"``, ``"10.2K"``, ``"1.5M"``, ``"2B"``, exponent notation and plain numbers.
    Empty, ``"N/A"``, ``"-"``, non-finite values and anything else give ``None``. A number is
    always data here: ``"-2.000"`` is -2.0 (the -2 sentinel is ib_async's, not this API's).
    """
    if isinstance(text, bool):
        return None
    if not isinstance(text, str):
        if not isinstance(text, numbers.Real):
            return None
        try:
            number = float(text)
        except (TypeError, ValueError, OverflowError):
            return None
        return number if math.isfinite(number) else None
    match = _PORTAL_NUMBER.fullmatch(text.strip())
    if match is None:
        return None
    digits = match["number"].replace(",", "")
    mantissa = digits.split("e")[0].split("E")[0]
    if not any(ch.isdigit() for ch in mantissa):
        return None
    scale = _SUFFIX_SCALE[match["suffix"]]
    try:
        if scale == 1:
            # float() of the text itself: exact round trip of repr/str output.
            number = float(digits)
        else:
            # Decimal so "1.1K" is 1100, not 1100.0000000000002.
            with localcontext() as ctx:
                ctx.prec = 60
                number = float(Decimal(digits) * scale)
    except (ArithmeticError, ValueError):
        return None
    return number if math.isfinite(number) else None


def multiplier_from(value: str | float | None) -> float:
    """A contract multiplier as a float; ``None``, ``""`` and 0 mean 1.

    ib_async's ``contract.multiplier`` is a string, empty for stocks; Client Portal gives
    0.0 for stocks. Raises ValueError for text that is not a number and for negative or
    non-finite values: a guessed multiplier would be wrong by a factor of 100.
    """
    if type(value) is float and 0.0 < value < _UNSET_FLOOR:
        return value  # already a valid multiplier (the per-tick path)
    if value is None or (isinstance(value, str) and not value.strip()):
        return 1.0
    number = parse_portal_number(value)
    if number is None or number < 0 or abs(number) >= _UNSET_FLOOR:
        raise ValueError(f"not a contract multiplier: {value!r}")
    return number if number > 0 else 1.0


def _check_multiplier(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a number or None; use multiplier_from()")
    multiplier_from(value)


def _check_finite(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be finite, got {value!r}")


def _sec_type(value: str) -> str:
    return value.strip().upper()
