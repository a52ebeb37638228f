"""The model's immutable records: instruments (contracts), positions, position changes, snapshots.

Conventions follow IBKR: ``avg_cost`` is per share for stock and per contract (price x
multiplier) for options and futures; short positions are negative.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal

import attrs
from attrs import field, frozen

from ibkr_bridge.sim.portfolio._calendar import EXPIRY_CLOCK_TIME, NEW_YORK

SecType = Literal["STK", "OPT", "FOP", "FUT"]
Right = Literal["C", "P"]

SEC_TYPES: Final = ("STK", "OPT", "FOP", "FUT")
OPTION_SEC_TYPES: Final = frozenset({"OPT", "FOP"})
DEFAULT_ACCOUNT: Final = "DU1234567"

_MONTH_CODES: Final = "FGHJKMNQUVXZ"


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _default_local_symbol(inst: Instrument) -> str:
    # Runs before validation: fall back to the symbol when the fields are unusable.
    expiry = inst.expiry
    if inst.sec_type == "STK" or expiry is None or not expiry.isdigit() or len(expiry) != 8:
        return inst.symbol
    month = _MONTH_CODES[(int(expiry[4:6]) - 1) % 12]
    future = f"{inst.symbol}{month}{expiry[3]}"
    if inst.sec_type == "FUT":
        return future
    if inst.strike is None or inst.right is None:
        return inst.symbol
    if inst.sec_type == "OPT":
        # OCC symbology: root padded to 6, YYMMDD, right, strike x 1000 in 8 digits.
        return f"{inst.symbol:<6}{expiry[2:]}{inst.right}{round(inst.strike * 1000):08d}"
    return f"{future} {inst.right}{_fmt_number(inst.strike)}"


def _default_trading_class(inst: Instrument) -> str:
    return inst.symbol


def _check_expiry(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    if len(value) != 8 or not value.isdigit():
        raise ValueError(f"{attribute.name} must be 'YYYYMMDD', got {value!r}")
    datetime.strptime(value, "%Y%m%d")


@frozen
class Instrument:
    """A contract the simulators know. ``symbol`` is the underlying symbol for derivatives."""

    conid: int
    symbol: str
    sec_type: SecType = field(validator=attrs.validators.in_(SEC_TYPES))
    currency: str = "USD"
    exchange: str = "SMART"
    primary_exchange: str = ""
    expiry: str | None = field(default=None, validator=_check_expiry)
    strike: float | None = None
    right: Right | None = field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(("C", "P")))
    )
    multiplier: float = 1.0
    underlying_conid: int | None = None
    local_symbol: str = field(default=attrs.Factory(_default_local_symbol, takes_self=True))
    trading_class: str = field(default=attrs.Factory(_default_trading_class, takes_self=True))

    def __attrs_post_init__(self) -> None:
        if self.conid <= 0:
            raise ValueError(f"conid must be positive, got {self.conid}")
        if self.multiplier <= 0:
            raise ValueError(f"multiplier must be positive, got {self.multiplier}")
        if self.sec_type in OPTION_SEC_TYPES:
            if self.expiry is None or self.strike is None or self.right is None:
                raise ValueError(f"{self.sec_type} {self.conid} needs expiry, strike and right")
            if self.strike <= 0:
                raise ValueError(f"strike must be positive, got {self.strike}")
            if self.underlying_conid is None:
                raise ValueError(f"{self.sec_type} {self.conid} needs underlying_conid")
        if self.sec_type == "FUT" and self.expiry is None:
            raise ValueError(f"FUT {self.conid} needs an expiry")

    @property
    def is_option(self) -> bool:
        return self.sec_type in OPTION_SEC_TYPES

    @property
    def wire_multiplier(self) -> str:
        """The multiplier as IBKR sends it: empty for stock, else e.g. ``"100"``."""
        return "" if self.sec_type == "STK" else _fmt_number(self.multiplier)

    def expires_at(self) -> datetime | None:
        """The expiry instant (16:00 New York on the expiry date), in UTC."""
        if self.expiry is None:
            return None
        day = datetime.strptime(self.expiry, "%Y%m%d").date()
        return datetime.combine(day, EXPIRY_CLOCK_TIME, tzinfo=NEW_YORK).astimezone(UTC)


@frozen
class Position:
    """A holding: ``quantity`` is negative for shorts; ``avg_cost`` per share / per contract."""

    account: str
    instrument: Instrument
    quantity: float
    avg_cost: float

    @property
    def conid(self) -> int:
        return self.instrument.conid


@frozen
class PositionChange:
    """What :meth:`Portfolio.subscribe` listeners receive; ``after`` is None when closed."""

    account: str
    conid: int
    before: Position | None
    after: Position | None


@frozen(kw_only=True)
class PortfolioSnapshot:
    """An immutable copy of a :class:`Portfolio` at one moment."""

    accounts: tuple[str, ...]
    positions: tuple[Position, ...]
    instruments: Mapping[int, Instrument]
    spots: Mapping[int, float]
    volatilities: Mapping[int, float]
    cash: Mapping[str, float]
    rate: float
    as_of: datetime


Listener = Callable[[PositionChange], None]


def cost_multiplier(inst: Instrument) -> float:
    """What one unit of ``quantity`` x price is worth: 1 for stock, the multiplier otherwise."""
    return 1.0 if inst.sec_type == "STK" else inst.multiplier


def check_underlyings(instruments: Iterable[Instrument], spots: Mapping[int, float]) -> None:
    """Refuse an option whose underlying has no spot price (nothing could value it)."""
    for inst in instruments:
        if inst.is_option and inst.underlying_conid not in spots:
            raise ValueError(
                f"{inst.local_symbol} ({inst.conid}): underlying {inst.underlying_conid} "
                "has no spot price"
            )


def select_instruments(
    instruments: Iterable[Instrument],
    *,
    symbol: str | None = None,
    sec_type: str | None = None,
    expiry: str | None = None,
    strike: float | None = None,
    right: str | None = None,
    currency: str | None = None,
    multiplier: float | None = None,
    local_symbol: str | None = None,
    trading_class: str | None = None,
) -> list[Instrument]:
    """The instruments matching every given (non-empty) field, in their order.

    ``expiry`` matches by prefix; ``right`` accepts ``CALL``/``PUT`` too, as IBKR does; the
    multiplier is ignored for stock (IBKR sends it empty).
    """
    if right:
        right = right[0].upper()
    found = []
    for inst in instruments:
        if symbol and inst.symbol != symbol:
            continue
        if sec_type and inst.sec_type != sec_type:
            continue
        if expiry and not (inst.expiry or "").startswith(expiry):
            continue
        if strike and inst.strike != strike:
            continue
        if right and inst.right != right:
            continue
        if currency and inst.currency != currency:
            continue
        if multiplier and inst.sec_type != "STK" and inst.multiplier != multiplier:
            continue
        if local_symbol and inst.local_symbol != local_symbol:
            continue
        if trading_class and inst.trading_class != trading_class:
            continue
        found.append(inst)
    return found


@frozen(kw_only=True)
class Quote:
    """A quote a simulator sent for one contract, at the prices it sent (after rounding).

    Kept so that a test can recompute what a client derived from the quote (an option's
    mid, the volatility implied from it) from what was on the wire, not from the model.
    """

    conid: int
    at: datetime
    bid: float
    ask: float
    last: float

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2
