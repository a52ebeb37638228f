"""How the gateway writes values as text: prices, sizes, contract descriptions, market hours."""

from __future__ import annotations

from datetime import datetime, time
from typing import Final

from ibkr_bridge.sim.portfolio import NEW_YORK, Instrument

_MONTHS: Final = (
    "JAN",
    "FEB",
    "MAR",
    "APR",
    "MAY",
    "JUN",
    "JUL",
    "AUG",
    "SEP",
    "OCT",
    "NOV",
    "DEC",
)
_RTH: Final = (time(9, 30), time(16, 0))


def fmt_plain(value: float) -> str:
    """A number without a needless ``.0``: ``"450"``, ``"452.5"``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def format_price(value: float) -> str:
    """A price the way the gateway writes it: two decimals, thousands grouped (``"6,012.25"``)."""
    return f"{value:,.2f}"


def format_size(value: float) -> str:
    """Sizes and volumes: ``"950"``, ``"1,300"``, ``"10.2K"``, ``"3.4M"``, as IBKR shortens them."""
    n = abs(value)
    sign = "-" if value < 0 else ""
    if n < 10_000:
        return f"{sign}{n:,.0f}"
    if n < 1_000_000:
        return f"{sign}{n / 1_000:.1f}K"
    if n < 1_000_000_000:
        return f"{sign}{n / 1_000_000:.1f}M"
    return f"{sign}{n / 1_000_000_000:.1f}B"


def contract_desc(inst: Instrument) -> str:
    """The gateway's ``contractDesc``: ``"SPY"``, ``"ES MAR26"``, or an option's long form."""
    if inst.expiry is None:
        return inst.symbol
    month = _MONTHS[int(inst.expiry[4:6]) - 1]
    if inst.sec_type == "FUT":
        return f"{inst.symbol} {month}{inst.expiry[2:4]}"
    assert inst.strike is not None
    return (
        f"{inst.symbol}    {month}{inst.expiry[:4]} {fmt_plain(inst.strike)} {inst.right} "
        f"[{inst.local_symbol} {fmt_plain(inst.multiplier)}]"
    )


def is_regular_hours(when: datetime) -> bool:
    """Whether ``when`` falls in New York's regular trading hours on a weekday."""
    local = when.astimezone(NEW_YORK)
    return local.weekday() < 5 and _RTH[0] <= local.time() < _RTH[1]
