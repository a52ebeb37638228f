"""The Client Portal snapshot fields the PORTAL feed asks for, and what it makes of them.

Field 7310 is theta and 7311 is vega. A Greek the gateway did not send is missing (None),
never 0; the strings carry no -2 "not computed" sentinel, so "-2.000" is a real value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ibkr_bridge.core.greeks import GreekFields, mid_or_last, parse_portal_number

LAST: Final = "31"
BID: Final = "84"
ASK: Final = "86"
DELTA: Final = "7308"
GAMMA: Final = "7309"
THETA: Final = "7310"
VEGA: Final = "7311"
IMPLIED_VOL: Final = "7633"
AVAILABILITY: Final = "6509"
UNDERLYING_CONID: Final = "6457"
MARK: Final = "7635"
SNAPSHOT_FIELDS: Final = (LAST, BID, ASK, DELTA, GAMMA, THETA, VEGA, IMPLIED_VOL, AVAILABILITY)
_FIELD_SET: Final = frozenset(SNAPSHOT_FIELDS) | {UNDERLYING_CONID, MARK}
_GREEK_FIELDS: Final = frozenset({DELTA, GAMMA, THETA, VEGA})


def snapshot_fields(item: Mapping[str, Any]) -> dict[str, str]:
    """The known fields of one snapshot row, as strings (anything not a plain value is dropped)."""
    return {
        key: str(value)
        for key, value in item.items()
        if key in _FIELD_SET
        and isinstance(value, str | int | float)
        and not isinstance(value, bool)
    }


def has_greeks(fields: Mapping[str, str]) -> bool:
    """Whether a row carries any Greek: such a row is a Greeks "tick" whose age is judged."""
    return not _GREEK_FIELDS.isdisjoint(fields)


def option_greeks(fields: Mapping[str, str]) -> GreekFields:
    """An option's Greeks by :class:`~ibkr_bridge.core.greeks.Leg` field name."""
    return {
        "delta": parse_portal_number(fields.get(DELTA)),
        "gamma": parse_portal_number(fields.get(GAMMA)),
        "theta": parse_portal_number(fields.get(THETA)),
        "vega": parse_portal_number(fields.get(VEGA)),
    }


def implied_vol(fields: Mapping[str, str]) -> float | None:
    """Field 7633, "Implied Vol. %", as a fraction (25.3 or "25.3%" -> 0.253), or None."""
    text = fields.get(IMPLIED_VOL)
    percent = parse_portal_number(text.strip().removesuffix("%") if text is not None else None)
    return percent / 100 if percent is not None and percent > 0 else None


def option_mid(fields: Mapping[str, str]) -> float | None:
    """An option's bid/ask midpoint, else its last trade, for implying a volatility."""
    return mid_or_last(*(parse_portal_number(fields.get(f)) for f in (BID, ASK, LAST)))


def traded_price(fields: Mapping[str, str]) -> float | None:
    """An underlying's price: the last trade, else the bid/ask midpoint, else None."""
    price = parse_portal_number(fields.get(LAST))
    if price is None or price <= 0:
        bid = parse_portal_number(fields.get(BID))
        ask = parse_portal_number(fields.get(ASK))
        price = (bid + ask) / 2 if bid and ask and bid > 0 and ask > 0 else None
    return price if price is not None and price > 0 else None
