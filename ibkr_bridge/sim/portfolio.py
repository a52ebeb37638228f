"""The portfolio model shared by the simulators (TWS socket and Client Portal).

A :class:`Portfolio` holds accounts, instruments, positions, underlying prices and
volatilities. Option prices and Greeks come from plain Black-Scholes (no dividends;
futures options use the same formula on the futures price) so that a test can
recompute every number the simulators send with :func:`black_scholes`.

Underlyings move by a geometric Brownian random walk driven by ``random.Random(seed)``
and by the ``dt`` the caller passes to :meth:`Portfolio.step`: given the seed and the
clock, a session is reproducible.

Conventions follow IBKR: Greeks are per share (per unit of the underlying), vega per
one volatility point, theta per calendar day; ``avg_cost`` is per share for stock and
per contract (price x multiplier) for options and futures; short positions are negative.
"""

from __future__ import annotations

import json
import math
import random
import tomllib
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, cast
from zoneinfo import ZoneInfo

import attrs
from attrs import field, frozen

SecType = Literal["STK", "OPT", "FOP", "FUT"]
Right = Literal["C", "P"]

SEC_TYPES: Final = ("STK", "OPT", "FOP", "FUT")
OPTION_SEC_TYPES: Final = frozenset({"OPT", "FOP"})
SECONDS_PER_YEAR: Final = 365.0 * 86400.0
NEW_YORK: Final = ZoneInfo("America/New_York")
# US equity and CME equity-index options stop trading at the 16:00 ET close.
EXPIRY_CLOCK_TIME: Final = time(16, 0)
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


@frozen(kw_only=True)
class OptionGreeks:
    """Per-share model values as IBKR's tickOptionComputation carries them."""

    delta: float
    gamma: float
    vega: float  # per 1 volatility point (0.01)
    theta: float  # per calendar day
    option_price: float
    implied_vol: float
    underlying_price: float


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


def _norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _norm_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def black_scholes(
    spot: float, strike: float, t_years: float, vol: float, rate: float, right: str
) -> OptionGreeks:
    """Black-Scholes price and Greeks per share (no dividends).

    Vega is per volatility point and theta per calendar day, as IBKR reports them. At or
    after expiry (``t_years <= 0``) or with zero volatility the option is worth its
    intrinsic value and only delta is non-zero.
    """
    if spot <= 0 or strike <= 0:
        raise ValueError(f"spot and strike must be positive, got {spot}, {strike}")
    if vol < 0:
        raise ValueError(f"volatility must not be negative, got {vol}")
    if right not in ("C", "P"):
        raise ValueError(f"right must be 'C' or 'P', got {right!r}")
    call = right == "C"
    if t_years <= 0 or vol == 0:
        intrinsic = max(spot - strike, 0.0) if call else max(strike - spot, 0.0)
        in_the_money = spot > strike if call else spot < strike
        delta = (1.0 if call else -1.0) if in_the_money else 0.0
        return OptionGreeks(
            delta=delta,
            gamma=0.0,
            vega=0.0,
            theta=0.0,
            option_price=intrinsic,
            implied_vol=vol,
            underlying_price=spot,
        )
    sqrt_t = math.sqrt(t_years)
    d1 = (math.log(spot / strike) + (rate + 0.5 * vol * vol) * t_years) / (vol * sqrt_t)
    d2 = d1 - vol * sqrt_t
    discount = math.exp(-rate * t_years)
    pdf_d1 = _norm_pdf(d1)
    decay = -spot * pdf_d1 * vol / (2.0 * sqrt_t)
    if call:
        price = spot * _norm_cdf(d1) - strike * discount * _norm_cdf(d2)
        delta = _norm_cdf(d1)
        theta_year = decay - rate * strike * discount * _norm_cdf(d2)
    else:
        price = strike * discount * _norm_cdf(-d2) - spot * _norm_cdf(-d1)
        delta = _norm_cdf(d1) - 1.0
        theta_year = decay + rate * strike * discount * _norm_cdf(-d2)
    return OptionGreeks(
        delta=delta,
        gamma=pdf_d1 / (spot * vol * sqrt_t),
        vega=spot * pdf_d1 * sqrt_t / 100.0,
        theta=theta_year / 365.0,
        option_price=price,
        implied_vol=vol,
        underlying_price=spot,
    )


def years_between(now: datetime, then: datetime) -> float:
    """Calendar years from ``now`` to ``then`` (negative when ``then`` is past)."""
    return (then - now).total_seconds() / SECONDS_PER_YEAR


Listener = Callable[[PositionChange], None]


class Portfolio:
    """The mutable portfolio a simulator owns.

    Option instruments must have a known underlying with a spot price. Listeners added
    with :meth:`subscribe` hear about every position change (the simulators push them to
    connected clients).
    """

    def __init__(
        self,
        accounts: Iterable[str],
        instruments: Iterable[Instrument] = (),
        positions: Iterable[Position] = (),
        spots: Mapping[int, float] | None = None,
        volatilities: Mapping[int, float] | None = None,
        rate: float = 0.04,
        seed: int | None = 0,
        as_of: datetime | None = None,
        cash: Mapping[str, float] | None = None,
        default_volatility: float = 0.2,
    ) -> None:
        self._accounts = tuple(accounts)
        if not self._accounts:
            raise ValueError("a portfolio needs at least one account")
        self._instruments: dict[int, Instrument] = {}
        self._positions: dict[tuple[str, int], Position] = {}
        self._spots: dict[int, float] = {}
        self._vols: dict[int, float] = {}
        self._default_vol = default_volatility
        self.rate = rate
        self._rng = random.Random(seed)
        self._as_of = _aware(as_of) if as_of is not None else datetime.now(UTC)
        self._cash = {acct: 100_000.0 for acct in self._accounts}
        self._cash.update(cash or {})
        self._listeners: list[Listener] = []
        for inst in instruments:
            self._register(inst)
        for pos in positions:
            self._register(pos.instrument)
        for conid, spot in (spots or {}).items():
            self.set_spot(conid, spot)
        for conid, vol in (volatilities or {}).items():
            self.set_volatility(conid, vol)
        for pos in positions:
            self._check_account(pos.account)
            if pos.quantity != 0:
                self._positions[(pos.account, pos.conid)] = pos
        self._check_underlyings()

    # -- registry ---------------------------------------------------------------------

    @property
    def accounts(self) -> tuple[str, ...]:
        return self._accounts

    @property
    def as_of(self) -> datetime:
        """The valuation time used when a method is called without ``now``."""
        return self._as_of

    def set_time(self, now: datetime) -> None:
        self._as_of = _aware(now)

    def _register(self, inst: Instrument) -> None:
        known = self._instruments.get(inst.conid)
        if known is not None and known != inst:
            raise ValueError(f"conid {inst.conid} already names {known}")
        self._instruments[inst.conid] = inst

    def add_instrument(
        self, instrument: Instrument, spot: float | None = None, volatility: float | None = None
    ) -> None:
        """Make an instrument known (an underlying needs a ``spot``)."""
        self._register(instrument)
        if spot is not None:
            self.set_spot(instrument.conid, spot)
        if volatility is not None:
            self.set_volatility(instrument.conid, volatility)
        if instrument.is_option:
            self._check_underlyings()

    def _check_underlyings(self) -> None:
        for inst in self._instruments.values():
            if inst.is_option and inst.underlying_conid not in self._spots:
                raise ValueError(
                    f"{inst.local_symbol} ({inst.conid}): underlying {inst.underlying_conid} "
                    "has no spot price"
                )

    def _check_account(self, account: str) -> None:
        if account not in self._accounts:
            raise ValueError(f"unknown account {account!r}")

    def instruments(self) -> tuple[Instrument, ...]:
        return tuple(self._instruments.values())

    def instrument(self, conid: int) -> Instrument:
        """The instrument with this conid (``KeyError`` if unknown)."""
        return self._instruments[conid]

    def find_instruments(
        self,
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
        """Instruments matching every given (non-empty) field.

        ``expiry`` matches by prefix, so ``"202603"`` finds every March 2026 expiry;
        ``right`` accepts ``CALL``/``PUT`` too, as IBKR does.
        """
        if right:
            right = right[0].upper()
        found = []
        for inst in self._instruments.values():
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

    # -- positions --------------------------------------------------------------------

    def positions(self, account: str | None = None) -> tuple[Position, ...]:
        return tuple(p for p in self._positions.values() if account is None or p.account == account)

    def position(self, account: str, conid: int) -> Position | None:
        return self._positions.get((account, conid))

    def set_position(
        self,
        account: str,
        instrument: Instrument | int,
        quantity: float,
        avg_cost: float | None = None,
    ) -> Position | None:
        """Open, change or (with ``quantity == 0``) close a position; listeners are told.

        Without ``avg_cost`` an existing position keeps its cost and a new one costs the
        current price (x multiplier for derivatives).
        """
        self._check_account(account)
        if isinstance(instrument, Instrument):
            self.add_instrument(instrument)
            inst = instrument
        else:
            inst = self.instrument(instrument)
        key = (account, inst.conid)
        before = self._positions.get(key)
        after: Position | None = None
        if quantity == 0:
            self._positions.pop(key, None)
        else:
            if avg_cost is None:
                avg_cost = (
                    before.avg_cost
                    if before is not None
                    else self.price(inst.conid) * self._cost_multiplier(inst)
                )
            after = Position(account, inst, float(quantity), float(avg_cost))
            self._positions[key] = after
        if before != after:
            self._notify(PositionChange(account, inst.conid, before, after))
        return after

    def remove_position(self, account: str, conid: int) -> Position | None:
        """Close a position; returns what was removed (None if there was none)."""
        before = self._positions.get((account, conid))
        if before is not None:
            self.set_position(account, conid, 0)
        return before

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on every position change; returns the unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, change: PositionChange) -> None:
        for listener in list(self._listeners):
            listener(change)

    def cash(self, account: str) -> float:
        return self._cash.get(account, 0.0)

    # -- market -----------------------------------------------------------------------

    def underlying_conid(self, conid: int) -> int:
        """The conid whose spot drives this instrument (itself for STK/FUT)."""
        inst = self.instrument(conid)
        return inst.underlying_conid if inst.underlying_conid is not None else conid

    def spot(self, conid: int) -> float:
        """The current price of an underlying (``KeyError`` if it has none)."""
        return self._spots[conid]

    def set_spot(self, conid: int, price: float) -> None:
        if conid not in self._instruments:
            raise KeyError(f"unknown conid {conid}")
        if not (price > 0 and math.isfinite(price)):
            raise ValueError(f"spot must be positive and finite, got {price}")
        self._spots[conid] = float(price)

    def volatility(self, conid: int) -> float:
        """Annualised volatility of the underlying that drives ``conid``."""
        return self._vols.get(self.underlying_conid(conid), self._default_vol)

    def set_volatility(self, conid: int, vol: float) -> None:
        if conid not in self._instruments:
            raise KeyError(f"unknown conid {conid}")
        if not (vol >= 0 and math.isfinite(vol)):
            raise ValueError(f"volatility must be >= 0 and finite, got {vol}")
        self._vols[conid] = float(vol)

    def time_to_expiry(self, conid: int, now: datetime | None = None) -> float | None:
        """Years from ``now`` to the instrument's expiry (None when it has none)."""
        expires = self.instrument(conid).expires_at()
        if expires is None:
            return None
        return years_between(self._now(now), expires)

    def greeks(self, conid: int, now: datetime | None = None) -> OptionGreeks | None:
        """Per-share Black-Scholes values for an option; None for anything else."""
        inst = self.instrument(conid)
        if not inst.is_option:
            return None
        assert inst.strike is not None
        assert inst.right is not None
        underlying = self.underlying_conid(conid)
        t = self.time_to_expiry(conid, now)
        assert t is not None
        return black_scholes(
            self._spots[underlying], inst.strike, t, self.volatility(conid), self.rate, inst.right
        )

    def price(self, conid: int, now: datetime | None = None) -> float:
        """Per-share price: spot for an underlying, the model value for an option."""
        greeks = self.greeks(conid, now)
        if greeks is not None:
            return greeks.option_price
        return self._spots[conid]

    @staticmethod
    def _cost_multiplier(inst: Instrument) -> float:
        return 1.0 if inst.sec_type == "STK" else inst.multiplier

    def market_value(self, position: Position, now: datetime | None = None) -> float:
        inst = position.instrument
        return position.quantity * self.price(inst.conid, now) * self._cost_multiplier(inst)

    def unrealized_pnl(self, position: Position, now: datetime | None = None) -> float:
        return self.market_value(position, now) - position.quantity * position.avg_cost

    def step(self, dt_seconds: float, now: datetime | None = None) -> None:
        """Move every underlying by one geometric-Brownian step of ``dt_seconds``.

        Zero drift; the volatility is the underlying's own. ``now`` (or ``as_of + dt``)
        becomes the new valuation time.
        """
        if dt_seconds < 0:
            raise ValueError("dt_seconds must not be negative")
        dt = dt_seconds / SECONDS_PER_YEAR
        # Sorted so that the draws map to the same underlyings on every run.
        for conid in sorted(self._spots):
            vol = self._vols.get(conid, self._default_vol)
            shock = self._rng.gauss(0.0, 1.0)
            if dt > 0 and vol > 0:
                growth = math.exp(-0.5 * vol * vol * dt + vol * math.sqrt(dt) * shock)
                self._spots[conid] *= growth
        self._as_of = (
            _aware(now) if now is not None else self._as_of + timedelta(seconds=dt_seconds)
        )

    def reseed(self, seed: int | None) -> None:
        self._rng = random.Random(seed)

    def _now(self, now: datetime | None) -> datetime:
        return _aware(now) if now is not None else self._as_of

    def snapshot(self) -> PortfolioSnapshot:
        return PortfolioSnapshot(
            accounts=self._accounts,
            positions=self.positions(),
            instruments=MappingProxyType(dict(self._instruments)),
            spots=MappingProxyType(dict(self._spots)),
            volatilities=MappingProxyType(
                {c: self._vols.get(c, self._default_vol) for c in self._spots}
            ),
            cash=MappingProxyType(dict(self._cash)),
            rate=self.rate,
            as_of=self._as_of,
        )


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError(f"datetime must be timezone-aware, got {when!r}")
    return when


# -- loading ------------------------------------------------------------------------------


def resolve_expiry(text: str, as_of: datetime) -> str:
    """``YYYYMMDD`` as is; ``+Nd`` → the first Friday at least N days after ``as_of``.

    Relative expiries keep example files valid whatever day they are loaded.
    """
    text = text.strip()
    if text.startswith("+") and text.endswith("d"):
        days = int(text[1:-1])
        day: date = as_of.astimezone(NEW_YORK).date() + timedelta(days=days)
        day += timedelta(days=(4 - day.weekday()) % 7)
        return day.strftime("%Y%m%d")
    return text


_INSTRUMENT_KEYS: Final = frozenset(
    {
        "conid",
        "symbol",
        "sec_type",
        "currency",
        "exchange",
        "primary_exchange",
        "expiry",
        "strike",
        "right",
        "multiplier",
        "underlying_conid",
        "local_symbol",
        "trading_class",
    }
)


def _instrument_from_dict(data: Mapping[str, Any], as_of: datetime) -> Instrument:
    unknown = set(data) - _INSTRUMENT_KEYS - {"spot", "volatility", "_comment"}
    if unknown:
        raise ValueError(f"unknown instrument keys {sorted(unknown)} in {dict(data)}")
    kwargs = {k: v for k, v in data.items() if k in _INSTRUMENT_KEYS}
    if kwargs.get("expiry") is not None:
        kwargs["expiry"] = resolve_expiry(str(kwargs["expiry"]), as_of)
    for key in ("strike", "multiplier"):
        if kwargs.get(key) is not None:
            kwargs[key] = float(kwargs[key])
    return Instrument(**kwargs)


def portfolio_from_dict(
    data: Mapping[str, Any], *, as_of: datetime | None = None, seed: int | None = None
) -> Portfolio:
    """Build a portfolio from the documented mapping (see ``examples/portfolio.json``)."""
    when = _aware(as_of) if as_of is not None else datetime.now(UTC)
    accounts = [str(a) for a in data.get("accounts", [DEFAULT_ACCOUNT])]
    instruments = [_instrument_from_dict(d, when) for d in data.get("instruments", [])]
    by_conid = {i.conid: i for i in instruments}
    spots = {int(d["conid"]): float(d["spot"]) for d in data.get("instruments", []) if "spot" in d}
    vols = {
        int(d["conid"]): float(d["volatility"])
        for d in data.get("instruments", [])
        if "volatility" in d
    }
    positions = []
    for entry in data.get("positions", []):
        conid = int(entry["conid"])
        if conid not in by_conid:
            raise ValueError(f"position names unknown conid {conid}")
        account = str(entry.get("account", accounts[0]))
        positions.append(
            Position(account, by_conid[conid], float(entry["quantity"]), float(entry["avg_cost"]))
        )
    cash = {str(k): float(v) for k, v in cast(Mapping[str, Any], data.get("cash", {})).items()}
    return Portfolio(
        accounts,
        instruments,
        positions,
        spots=spots,
        volatilities=vols,
        rate=float(data.get("rate", 0.04)),
        seed=seed if seed is not None else data.get("seed", 0),
        as_of=when,
        cash=cash,
    )


def load_portfolio(
    path: str | Path, *, as_of: datetime | None = None, seed: int | None = None
) -> Portfolio:
    """Read a portfolio from a ``.json`` or ``.toml`` file."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix.lower() == ".toml":
        data: Any = tomllib.loads(raw.decode("utf-8"))
    else:
        data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object at the top level")
    return portfolio_from_dict(data, as_of=as_of, seed=seed)


# -- demo portfolios ----------------------------------------------------------------------

SPY_CONID: Final = 756733
ES_CONID: Final = 637533641


def _spy_part(as_of: datetime) -> tuple[list[Instrument], list[Position]]:
    spy = Instrument(SPY_CONID, "SPY", "STK", primary_exchange="ARCA")
    near = resolve_expiry("+30d", as_of)
    far = resolve_expiry("+60d", as_of)

    def option(conid: int, expiry: str, strike: float, right: Right) -> Instrument:
        return Instrument(
            conid,
            "SPY",
            "OPT",
            expiry=expiry,
            strike=strike,
            right=right,
            multiplier=100.0,
            underlying_conid=SPY_CONID,
        )

    call_near = option(800000101, near, 600.0, "C")
    put_near = option(800000102, near, 580.0, "P")
    call_far = option(800000103, far, 620.0, "C")
    positions = [
        Position(DEFAULT_ACCOUNT, spy, 100.0, 585.25),
        Position(DEFAULT_ACCOUNT, call_near, 2.0, 1210.0),
        Position(DEFAULT_ACCOUNT, put_near, -3.0, 905.5),
        Position(DEFAULT_ACCOUNT, call_far, 1.0, 640.0),
    ]
    return [spy, call_near, put_near, call_far], positions


def single_underlying_portfolio(as_of: datetime | None = None, seed: int | None = 0) -> Portfolio:
    """SPY only: 100 shares, two long calls and three short puts (expiries relative to as_of)."""
    when = _aware(as_of) if as_of is not None else datetime.now(UTC)
    instruments, positions = _spy_part(when)
    return Portfolio(
        [DEFAULT_ACCOUNT],
        instruments,
        positions,
        spots={SPY_CONID: 600.0},
        volatilities={SPY_CONID: 0.18},
        seed=seed,
        as_of=when,
    )


def default_portfolio(as_of: datetime | None = None, seed: int | None = 0) -> Portfolio:
    """The demo: the SPY book plus ES futures options (multiplier 50) on one account."""
    when = _aware(as_of) if as_of is not None else datetime.now(UTC)
    instruments, positions = _spy_part(when)
    es = Instrument(
        ES_CONID,
        "ES",
        "FUT",
        exchange="CME",
        expiry=resolve_expiry("+110d", when),
        multiplier=50.0,
    )
    fop_expiry = resolve_expiry("+45d", when)

    def fop(conid: int, strike: float, right: Right) -> Instrument:
        return Instrument(
            conid,
            "ES",
            "FOP",
            exchange="CME",
            expiry=fop_expiry,
            strike=strike,
            right=right,
            multiplier=50.0,
            underlying_conid=ES_CONID,
        )

    es_call = fop(800000201, 6100.0, "C")
    es_put = fop(800000202, 5800.0, "P")
    instruments += [es, es_call, es_put]
    positions += [
        Position(DEFAULT_ACCOUNT, es_call, -1.0, 5250.0),
        Position(DEFAULT_ACCOUNT, es_put, 2.0, 2600.0),
    ]
    return Portfolio(
        [DEFAULT_ACCOUNT],
        instruments,
        positions,
        spots={SPY_CONID: 600.0, ES_CONID: 6000.0},
        volatilities={SPY_CONID: 0.18, ES_CONID: 0.16},
        seed=seed,
        as_of=when,
    )
